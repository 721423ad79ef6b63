"""Property-based fuzzing of each service's OpenAPI with schemathesis, against the service
running under uvicorn with real MongoDB and Kafka: no input may produce a 5xx.

Run once with an admin token (so generated requests get past authentication into the
handlers) and once without a token. Bounded (MAX_EXAMPLES per operation, no shrinking) and
derandomised, so the run is reproducible and the suite stays within a few minutes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from tests.security.conftest import (
    SERVICE_NAMES,
    ThreadedServer,
    admin_headers,
    require_factory,
    security_settings,
)

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
# Without a token every request stops at authentication, whatever its body: a few suffice.
MAX_EXAMPLES_WITHOUT_TOKEN = 5
# Rendering a chart costs most of a second of CPU; a few renders show it does not fail.
FEWER_EXAMPLES = {"GET /competitions/{competition_id}/report.png": 5}
# Server-sent events never end; a fuzzer would wait for them forever.
ENDLESS = ("/stream", "/feed")


def is_endless(path: str) -> bool:
    return any(path.endswith(suffix) for suffix in ENDLESS)


@pytest.mark.parametrize("auth", ["admin token", "no token"])
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_fuzzed_requests_never_get_a_server_error(name: str, auth: str, infra: Any) -> None:
    factory = require_factory(name)
    app_settings = security_settings(infra, "fz" + uuid.uuid4().hex[:8])
    app = factory(app_settings)
    schema = schemathesis.openapi.from_dict(app.openapi())
    headers = admin_headers(app_settings) if auth == "admin token" else {}
    failures: list[str] = []
    fuzzed: list[str] = []
    with ThreadedServer(app) as server:
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                failures.append(f"{name}: OpenAPI operation schemathesis cannot use: {result!r}")
                continue
            operation = result.ok()
            if is_endless(operation.path):
                continue
            fuzzed.append(operation.label)
            examples = FEWER_EXAMPLES.get(operation.label, MAX_EXAMPLES)
            if not headers:
                examples = min(examples, MAX_EXAMPLES_WITHOUT_TOKEN)

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def fuzz(case: Any) -> None:
                response = case.call(base_url=server.url, headers=headers, timeout=15)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.operation.label}: {response.status_code} {response.text[:300]}\n"
                        f"    reproduce: {case.as_curl_command()}"
                    )
                case.validate_response(response, checks=[not_a_server_error])

            try:
                fuzz()
            except Exception as exc:
                if not failures or operation.label not in failures[-1]:
                    failures.append(f"{operation.label}: {type(exc).__name__}: {exc!s:.500}")
    assert fuzzed, f"{name}: no operation was fuzzed"
    assert not failures, f"{name} ({auth}): server errors:\n" + "\n".join(failures)
