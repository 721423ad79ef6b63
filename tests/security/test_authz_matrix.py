"""The authorisation matrix: every endpoint of every service (from its OpenAPI document) ×
every role, no token, an expired token, a forged token, a token for another union and a token
for another event. The expected answer of each cell follows from the policy table in
tests/security/policy.py; an endpoint absent from the table fails the test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest

from tests.security.conftest import (
    SERVICE_NAMES,
    Principal,
    RunningService,
    ServicePool,
    principals,
)
from tests.security.policy import EXTRA_PUBLIC, POLICY, PUBLIC_OUTSIDE_OPENAPI, Ids, Rule

pytestmark = pytest.mark.integration

Expectation = Literal["allowed", "401", "403", "403 or 404", "403 or no row accepted"]
METHODS = ("get", "post", "put", "patch", "delete")


def expectation(rule: Rule, who: Principal) -> Expectation:
    if rule.roles is None:
        return "allowed"
    if who.kind in ("none", "expired", "forged"):
        return "401"
    assert who.role is not None
    if who.role not in rule.roles:
        return "403"
    out_of_scope = (who.kind == "other_union" and rule.scope == "union") or (
        who.kind == "other_event" and rule.scope == "event"
    )
    if out_of_scope:
        if rule.scope_from == "object":
            return "403 or 404"
        return "403 or no row accepted" if rule.scope_from == "rows" else "403"
    return "allowed"


def meets(expected: Expectation, status: int, text: str = "") -> bool:
    if status >= 500:
        return False
    if expected == "403 or no row accepted":
        return status == 403 or (status == 200 and json.loads(text).get("accepted") == 0)
    if expected == "allowed":
        return status not in (401, 403)
    if expected == "403 or 404":
        return status in (403, 404)
    return status == int(expected)


def path_value(name: str, ids: Ids) -> str:
    by_name = {
        "competition_id": ids.competition,
        "event_id": ids.event,
        "union_id": ids.union,
        "entry_id": ids.entry,
        "leader_id": ids.leader,
        "award_id": ids.award,
        "worker_id": ids.worker,
        "mark_id": ids.mark,
    }
    return by_name.get(name, "x1")


def concrete_path(template: str, ids: Ids) -> str:
    path = template
    while "{" in path:
        start = path.index("{")
        end = path.index("}", start)
        name = path[start + 1 : end]
        path = path[:start] + path_value(name, ids) + path[end + 1 :]
    return path


@dataclass(frozen=True)
class Cell:
    method: str
    path: str
    principal: str
    expected: Expectation
    status: int
    detail: str

    @property
    def ok(self) -> bool:
        return meets(self.expected, self.status, self.detail)

    def describe(self) -> str:
        return (
            f"{self.method} {self.path} as {self.principal}: expected {self.expected}, "
            f"got {self.status} {self.detail[:300]}"
        )


async def call(
    http: httpx.AsyncClient, method: str, path: str, rule: Rule, ids: Ids, who: Principal
) -> tuple[int, str]:
    headers = who.headers()
    kwargs: dict[str, Any] = {"headers": headers}
    if rule.query is not None:
        kwargs["params"] = rule.query(ids)
    if rule.body is not None:
        body = rule.body(ids)
        if isinstance(body, str):
            kwargs["content"] = body.encode()
            headers["Content-Type"] = rule.content_type
        else:
            kwargs["json"] = body
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    if rule.stream:
        async with http.stream(method, path, **kwargs) as response:
            return response.status_code, ""
    response = await http.request(method, path, **kwargs)
    return response.status_code, response.text


def declared_operations(service: RunningService) -> list[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = service.app.openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method in METHODS
    ]


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_every_openapi_endpoint_declares_who_may_call_it(
    name: str, services: ServicePool
) -> None:
    service = await services.get(name)
    operations = set(declared_operations(service))
    table = set(POLICY[name])
    undeclared = sorted(operations - table)
    stale = sorted(table - operations)
    assert not undeclared, f"{name}: endpoints without a policy row in policy.py: {undeclared}"
    assert not stale, f"{name}: policy rows for endpoints the service does not have: {stale}"


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_authorisation_matrix(name: str, services: ServicePool, ids: Ids) -> None:
    service = await services.get(name)
    who_all = principals(service.settings, ids)
    cells: list[Cell] = []
    undeclared: list[str] = []
    async with service.client() as http:
        for method, template in declared_operations(service):
            rule = POLICY[name].get((method, template))
            if rule is None:
                undeclared.append(f"{method} {template}")
                continue
            path = concrete_path(template, ids)
            for who in who_all:
                status, detail = await call(http, method, path, rule, ids, who)
                cells.append(Cell(method, path, who.name, expectation(rule, who), status, detail))
        for path in (*PUBLIC_OUTSIDE_OPENAPI, *EXTRA_PUBLIC.get(name, ())):
            answer = await http.get(path)
            cells.append(Cell("GET", path, "no token", "allowed", answer.status_code, ""))
            if answer.status_code == 404:
                cells[-1] = Cell("GET", path, "no token", "allowed", 404, "(missing page)")
    failures = [c.describe() for c in cells if not c.ok or c.detail == "(missing page)"]
    print(f"{name}: authorisation matrix of {len(cells)} cells")
    assert not undeclared, f"{name}: undeclared endpoints {undeclared}"
    assert not failures, (
        f"{name}: {len(failures)} of {len(cells)} cells wrong"
        + (f" (seed problems: {service.seed_problems})" if service.seed_problems else "")
        + ":\n"
        + "\n".join(failures)
    )
