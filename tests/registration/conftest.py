"""Registration service fixtures: one app per module on real Kafka and MongoDB."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.registration.app import create_app
from services.registration.domain import national_id_check_character
from shared.auth import Role, issue_token
from shared.events import utc_now
from shared.settings import get_settings


def national_id(serial: int) -> str:
    """A valid 18-character resident id (check digit computed), distinct per serial."""
    first = f"110105{19800101 + serial % 28:08d}{serial % 1000:03d}"
    return first + national_id_check_character(first)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin_token() -> str:
    return issue_token(get_settings(), subject="office", role=Role.ADMIN, scopes=["*"])


def officer_token(union_id: str) -> str:
    return issue_token(
        get_settings(),
        subject=f"officer-{union_id}",
        role=Role.UNION_OFFICER,
        scopes=[f"union:{union_id}"],
    )


@dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI

    async def post(
        self, path: str, token: str, body: Any = None, *, key: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        if key:
            headers["Idempotency-Key"] = key
        if body is not None:
            kw["json"] = body
        return await self.client.post(path, headers=headers, **kw)

    async def put(self, path: str, token: str, body: Any) -> httpx.Response:
        return await self.client.put(path, json=body, headers={"Authorization": f"Bearer {token}"})

    async def get(self, path: str, token: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers={"Authorization": f"Bearer {token}"}, **kw)


@dataclass
class World:
    """A competition with an individual and a team event, two unions and their workers."""

    competition_id: str
    individual: str
    team: str
    unions: list[str]
    workers: dict[str, list[str]] = field(default_factory=dict)
    national_ids: dict[str, str] = field(default_factory=dict)


def competition_body(competition_id: str, opens: datetime, closes: datetime) -> dict[str, Any]:
    return {
        "competition_id": competition_id,
        "name": "滨海新区职工职业技能大赛",
        "year": 2026,
        "level": "district",
        "registration_opens_at": opens.isoformat(),
        "registration_closes_at": closes.isoformat(),
    }


def individual_event(event_id: str, *, quota: int = 5, starts: datetime | None = None) -> dict:
    return {
        "event_id": event_id,
        "name": "叉车司机竞赛",
        "trade": "叉车司机",
        "format": "individual",
        "quota_per_union": quota,
        "minimum_entrants": 2,
        "starts_at": (starts or utc_now() + timedelta(days=2)).isoformat(),
    }


def team_event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "name": "焊工团体赛",
        "trade": "焊工",
        "format": "team",
        "team_min_size": 2,
        "team_max_size": 3,
        "quota_per_union": 3,
        "scheme": {
            "components": [
                {"name": "theory", "weight": "0.3", "panel": False},
                {"name": "practical", "weight": "0.7"},
            ],
            "team_marked_as_unit": True,
        },
        "starts_at": (utc_now() + timedelta(days=2)).isoformat(),
    }


async def make_world(
    api: Api, *, workers_per_union: int = 8, quota: int = 5, open_window: bool = True
) -> World:
    admin = admin_token()
    now = utc_now()
    world = World(uid("c"), uid("ind"), uid("team"), [uid("u"), uid("u")])
    opens, closes = (
        (now - timedelta(days=1), now + timedelta(days=1))
        if open_window
        else (now - timedelta(days=3), now - timedelta(days=2))
    )
    r = await api.post(
        "/competitions", admin, competition_body(world.competition_id, opens, closes)
    )
    assert r.status_code == 201, r.text
    for body in (individual_event(world.individual, quota=quota), team_event(world.team)):
        r = await api.post(f"/competitions/{world.competition_id}/events", admin, body)
        assert r.status_code == 201, r.text
    serial = int(uuid.uuid4().int % 10_000_000)
    for union_id in world.unions:
        r = await api.post("/unions", admin, {"union_id": union_id, "name": f"工会 {union_id}"})
        assert r.status_code == 201, r.text
        ids = [f"{union_id}-w{i}" for i in range(workers_per_union)]
        workers = []
        for worker_id in ids:
            serial += 1
            world.national_ids[worker_id] = national_id(serial)
            workers.append(
                {
                    "worker_id": worker_id,
                    "name": f"职工{worker_id[-3:]}",
                    "employer": "天津港",
                    "job": "叉车司机",
                    "front_line": True,
                    "national_id": world.national_ids[worker_id],
                }
            )
        r = await api.post(f"/unions/{union_id}/workers", admin, {"workers": workers})
        assert r.status_code == 201, r.text
        assert r.json() == {"created": workers_per_union}
        world.workers[union_id] = ids
    return world


@pytest.fixture(scope="module")
async def api(infra: Any) -> AsyncIterator[Api]:
    settings = infra.settings(mongodb_db_prefix="treg" + uuid.uuid4().hex[:8])
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://registration", timeout=120
        ) as client:
            yield Api(client, app)
    # Leave no test database behind.
    from pymongo import AsyncMongoClient

    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_url)
    await mongo.drop_database(settings.database_name("registration"))
    await mongo.close()
