"""National ids never appear raw: not at rest (registration's MongoDB), not in the service's
logs (its stderr at DEBUG), not in events (registration.entries), and their keyed hash never
leaves the service's own database.

Registration runs here as a real process (`jinchui serve registration`), so its log output is
exactly what an operator would collect.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from services.registration.domain import (
    hash_national_id,
    mask_national_id,
    national_id_check_character,
)
from shared import topics
from shared.auth import Role, issue_token
from shared.settings import Settings
from tests.security.conftest import free_port
from tests.topic_reader import read_records

pytestmark = pytest.mark.integration


def fresh_national_id(rng: random.Random) -> str:
    first = "110105" + "19" + f"{rng.randint(50, 99)}" + "0612" + f"{rng.randint(0, 999):03d}"
    return first + national_id_check_character(first)


@pytest.fixture
def registration_process(infra: Any, tmp_path: Path) -> Iterator[tuple[str, Settings, Path]]:
    prefix = "pii" + uuid.uuid4().hex[:8]
    port = free_port()
    log_path = tmp_path / "registration.stderr"
    env = {
        **os.environ,
        "JINCHUI_MONGODB_DB_PREFIX": prefix,
        "JINCHUI_LOG_LEVEL": "DEBUG",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "MONGODB_URL": infra.mongodb_url,
        "JINCHUI_KAFKA_IDEMPOTENCE": "true" if infra.kafka_idempotence else "false",
    }
    settings = infra.settings(
        mongodb_db_prefix=prefix,
    )
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "jinchui.cli", "serve", "registration", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text(errors="replace")[-2000:]
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "registration did not become ready"
                time.sleep(0.2)
            yield url, settings, log_path
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_national_ids_are_hashed_at_rest_masked_in_logs_and_events(
    registration_process: tuple[str, Settings, Path],
    infra: Any,
    security_mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    url, settings, log_path = registration_process
    rng = random.Random(uuid.uuid4().int)
    raw_ids = [fresh_national_id(rng) for _ in range(3)]
    lowercase_x = next((r for r in raw_ids if r.endswith("X")), None)
    tag = uuid.uuid4().hex[:8]
    union, competition, event = f"pu-{tag}", f"pc-{tag}", f"pe-{tag}"
    admin = {
        "Authorization": "Bearer "
        + issue_token(settings, subject="sec-admin", role=Role.ADMIN, scopes=["*"])
    }
    workers = [
        {
            "worker_id": f"pw-{tag}-{i}",
            "name": f"工人{i}",
            "employer": "某公司",
            "job": "焊工",
            "front_line": True,
            # One typed with a lowercase x and one in full-width digits: the same person.
            "national_id": raw.lower() if raw == lowercase_x else raw,
        }
        for i, raw in enumerate(raw_ids)
    ]
    wrong_check = raw_ids[0][:17] + ("0" if raw_ids[0][17] != "0" else "1")
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        for method, path, body in (
            ("POST", "/unions", {"union_id": union, "name": "隐私测试工会"}),
            (
                "POST",
                "/competitions",
                {
                    "competition_id": competition,
                    "name": "隐私测试赛",
                    "year": 2026,
                    "level": "district",
                    "registration_opens_at": "2026-01-01T00:00:00Z",
                    "registration_closes_at": "2099-12-30T00:00:00Z",
                },
            ),
            (
                "POST",
                f"/competitions/{competition}/events",
                {
                    "event_id": event,
                    "name": "焊工",
                    "trade": "电焊工",
                    "format": "individual",
                    "quota_per_union": 50,
                    "minimum_entrants": 1,
                    "starts_at": "2099-12-31T00:00:00Z",
                },
            ),
            ("POST", f"/unions/{union}/workers", {"workers": workers}),
            (
                "POST",
                "/entries",
                {"event_id": event, "union_id": union, "worker_ids": [workers[0]["worker_id"]]},
            ),
        ):
            answer = await http.request(method, path, json=body, headers=admin)
            assert answer.status_code < 300, f"{method} {path}: {answer.text}"
        listed = await http.get(f"/unions/{union}/workers", headers=admin)
        refused = await http.post(
            f"/unions/{union}/workers",
            json={
                "workers": [
                    {**workers[0], "worker_id": f"pw-{tag}-bad", "national_id": wrong_check}
                ]
            },
            headers=admin,
        )
    hashes = [hash_national_id(raw, settings.national_id_pepper) for raw in raw_ids]
    secrets = [*raw_ids, *(raw[3:14] for raw in raw_ids), wrong_check]

    shown = listed.text
    assert all(mask_national_id(raw) in shown for raw in raw_ids), shown
    assert not [s for s in secrets if s in shown], "GET workers shows a national id unmasked"
    assert not [h for h in hashes if h in shown], "GET workers shows the national-id hash"
    assert 400 <= refused.status_code < 500
    assert wrong_check not in refused.text, "a refused national id is echoed back in full"

    database = security_mongo[settings.database_name("registration")]
    at_rest: list[str] = []
    found_hashes: set[str] = set()
    for name in await database.list_collection_names():
        async for doc in database[name].find({}):
            text = json.dumps(doc, default=str, ensure_ascii=False)
            at_rest.extend(f"{name}: {s}" for s in secrets if s in text or s.lower() in text)
            found_hashes.update(h for h in hashes if h in text)
    assert not at_rest, f"raw national ids stored in MongoDB: {at_rest}"
    assert found_hashes == set(hashes), "every worker's national id must be stored as its hash"

    published = [
        r.value
        for r in await read_records(
            infra.kafka_bootstrap, topics.REGISTRATION_ENTRIES, 2, key=event, timeout=30
        )
    ]
    assert published, "registration published no event for the test event"
    in_events = [s for s in [*secrets, *hashes] for value in published if s.encode() in value]
    assert not in_events, f"national ids or their hashes in registration.entries: {in_events}"

    await asyncio.sleep(0.5)  # let the process flush its last log lines
    logs = log_path.read_text(errors="replace")
    assert logs.strip(), "the service wrote no logs at DEBUG; the check would prove nothing"
    in_logs = [s for s in [*secrets, *hashes] if s in logs or s.lower() in logs]
    lines = [line[:300] for line in logs.splitlines() if any(s in line for s in in_logs)]
    assert not in_logs, f"national ids or their hashes in the service's logs: {lines[:5]}"
