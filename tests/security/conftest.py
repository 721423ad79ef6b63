"""Fixtures of the security suite: the four services under uvicorn against the session's real
Kafka and MongoDB, tokens for every role and every kind of bad token, and seeded objects so
that scope checks are reached.

A service whose `services/<name>/app.py` has not landed yet is skipped with that reason.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from shared.auth import Role, issue_token
from shared.settings import Settings
from tests.security.policy import Ids

SERVICE_NAMES: tuple[str, ...] = ("registration", "scoring", "awards", "notifications")
# A valid 18-character national id (ISO 7064 MOD 11-2 check character), used for seeding.
SEED_NATIONAL_ID = "11010519491231002X"

AppFactory = Callable[[Settings], FastAPI]


def app_factory(service: str) -> AppFactory | None:
    try:
        module = importlib.import_module(f"services.{service}.app")
    except ModuleNotFoundError as exc:
        if exc.name in (f"services.{service}.app", f"services.{service}"):
            return None
        raise
    factory: AppFactory = module.create_app
    return factory


def require_factory(service: str) -> AppFactory:
    factory = app_factory(service)
    if factory is None:
        pytest.skip(f"services/{service}/app.py has not landed yet (no create_app to test)")
    return factory


def security_settings(infra: Any, db_prefix: str, **overrides: Any) -> Settings:
    # The JWT secret comes from the environment as it does for `authenticate`
    # (shared.auth reads get_settings()), so tokens issued here verify there.
    return infra.settings(
        mongodb_db_prefix=db_prefix,
        **overrides,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


class ServedApp:
    """An ASGI app served by uvicorn as a task of the running event loop, on a free port."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ServedApp:
        self._task = asyncio.create_task(self.server.serve())

        async def started() -> bool:
            if self._task is not None and self._task.done():
                self._task.result()  # surface a startup failure
                raise AssertionError("uvicorn stopped during startup")
            return bool(self.server.started)

        await wait_until(started, timeout=60)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


class ThreadedServer:
    """uvicorn in a thread with its own event loop, for synchronous clients (schemathesis)."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="security-fuzz-server")

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive():
                raise AssertionError("uvicorn stopped during startup")
            if time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start within 60 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


# --- principals ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """One column of the matrix: who calls, and with what token (None = no token)."""

    name: str
    role: Role | None
    token: str | None
    # "none" | "expired" | "forged" | "home" | "other_union" | "other_event"
    kind: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def principals(settings: Settings, ids: Ids) -> list[Principal]:
    home_scopes = [f"union:{ids.union}", f"event:{ids.event}", f"competition:{ids.competition}"]
    subjects = {
        Role.ADMIN: "sec-admin",
        Role.UNION_OFFICER: "sec-officer",
        Role.JUDGE: ids.judge,
        Role.CHIEF_JUDGE: ids.chief_judge,
        Role.LEADER: ids.leader,
        Role.SERVICE: "sec-service",
    }

    def token(role: Role, scopes: list[str], **kw: Any) -> str:
        return issue_token(settings, subject=subjects[role], role=role, scopes=scopes, **kw)

    forged_settings = settings.model_copy(update={"jwt_secret": "f" * 48})
    found = [
        Principal("no token", None, None, "none"),
        Principal(
            "expired admin",
            Role.ADMIN,
            token(Role.ADMIN, ["*"], ttl=timedelta(seconds=-30)),
            "expired",
        ),
        Principal(
            "forged admin",
            Role.ADMIN,
            issue_token(forged_settings, subject="sec-admin", role=Role.ADMIN, scopes=["*"]),
            "forged",
        ),
    ]
    for role in Role:
        scopes = ["*"] if role in (Role.ADMIN, Role.SERVICE) else home_scopes
        found.append(Principal(role.value, role, token(role, scopes), "home"))
    other_union = [f"union:{ids.other_union}", f"event:{ids.event}"]
    found.append(
        Principal(
            "union_officer of another union",
            Role.UNION_OFFICER,
            token(Role.UNION_OFFICER, [*other_union, f"competition:{ids.competition}"]),
            "other_union",
        )
    )
    other_event = [f"union:{ids.union}", f"event:{ids.other_event}"]
    for role in (Role.JUDGE, Role.CHIEF_JUDGE):
        found.append(
            Principal(
                f"{role.value} of another event",
                role,
                token(role, [*other_event, f"competition:{ids.competition}"]),
                "other_event",
            )
        )
    return found


def admin_headers(settings: Settings, subject: str = "sec-admin") -> dict[str, str]:
    token = issue_token(settings, subject=subject, role=Role.ADMIN, scopes=["*"])
    return {"Authorization": f"Bearer {token}"}


def new_ids() -> Ids:
    tag = uuid.uuid4().hex[:8]
    return Ids(
        competition=f"sc-{tag}",
        event=f"se-{tag}",
        union=f"su-{tag}",
        other_union=f"sou-{tag}",
        other_event=f"soe-{tag}",
        worker=f"sw-{tag}",
        entry=f"sen-{tag}",
        leader=f"sl-{tag}",
        judge=f"sj-{tag}",
        chief_judge=f"scj-{tag}",
        award=f"sa-{tag}",
        mark=f"sm-{tag}",
    )


# --- running services ------------------------------------------------------------------------


@dataclass
class RunningService:
    name: str
    app: FastAPI
    url: str
    settings: Settings
    seed_problems: list[str] = field(default_factory=list)

    def client(self, timeout: float = 15.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=timeout)

    def admin_headers(self) -> dict[str, str]:
        return admin_headers(self.settings)

    def database_name(self) -> str:
        return self.settings.database_name(self.name)


async def seed(service: RunningService, ids: Ids) -> None:
    """Create the objects the matrix points at, so that scope checks are reached.

    Seeding is best effort (a seed refusal is recorded, not raised): the matrix still runs,
    and the recorded problems appear in its failure message.
    """
    calls: list[tuple[str, str, Any]] = []
    if service.name == "registration":
        calls = [
            ("POST", "/unions", {"union_id": ids.union, "name": "安全测试工会"}),
            ("POST", "/unions", {"union_id": ids.other_union, "name": "另一工会"}),
            (
                "POST",
                "/competitions",
                {
                    "competition_id": ids.competition,
                    "name": "安全测试赛",
                    "year": 2026,
                    "level": "district",
                    "registration_opens_at": "2026-01-01T00:00:00Z",
                    "registration_closes_at": "2099-12-30T00:00:00Z",
                },
            ),
            (
                "POST",
                f"/competitions/{ids.competition}/events",
                {
                    "event_id": ids.event,
                    "name": "叉车",
                    "trade": "叉车司机",
                    "format": "individual",
                    "quota_per_union": 50,
                    "minimum_entrants": 1,
                    "starts_at": "2099-12-31T00:00:00Z",
                },
            ),
            (
                "POST",
                f"/unions/{ids.union}/workers",
                {
                    "workers": [
                        {
                            "worker_id": ids.worker,
                            "name": "张三",
                            "employer": "某物流公司",
                            "job": "叉车司机",
                            "front_line": True,
                            "national_id": SEED_NATIONAL_ID,
                        }
                    ]
                },
            ),
            (
                "POST",
                "/entries",
                {
                    "event_id": ids.event,
                    "union_id": ids.union,
                    "worker_ids": [ids.worker],
                    "entry_id": ids.entry,
                },
            ),
        ]
    elif service.name == "scoring":
        calls = [
            (
                "PUT",
                f"/events/{ids.event}/panel",
                {
                    "chief_judge_id": ids.chief_judge,
                    "judges": [
                        {"judge_id": ids.judge, "union_id": ids.other_union},
                        {"judge_id": ids.chief_judge, "union_id": ids.other_union},
                    ],
                },
            )
        ]
    elif service.name == "notifications":
        calls = [
            (
                "PUT",
                f"/subscriptions/{ids.leader}",
                {
                    "name": "王主席",
                    "role": "federation",
                    "channels": {"live_feed": True},
                    "language": "zh",
                },
            )
        ]
    async with service.client() as http:
        for method, path, body in calls:
            answer = await http.request(method, path, json=body, headers=service.admin_headers())
            if answer.status_code >= 300:
                service.seed_problems.append(
                    f"seed {method} {path} -> {answer.status_code} {answer.text[:300]}"
                )


class ServicePool:
    """Services started on first use and kept for the session (startup joins consumer
    groups, which takes seconds); one database prefix for the pool."""

    def __init__(self, infra: Any, ids: Ids) -> None:
        self.infra = infra
        self.ids = ids
        self.db_prefix = "sec" + uuid.uuid4().hex[:8]
        self._running: dict[str, RunningService] = {}
        self._servers: list[ServedApp] = []

    async def get(self, name: str) -> RunningService:
        if name in self._running:
            return self._running[name]
        factory = require_factory(name)
        settings = security_settings(self.infra, self.db_prefix)
        app = factory(settings)
        server = ServedApp(app)
        await server.__aenter__()
        self._servers.append(server)
        running = RunningService(name, app, server.url, settings)
        await seed(running, self.ids)
        self._running[name] = running
        return running

    async def close(self) -> None:
        for server in reversed(self._servers):
            await server.__aexit__(None, None, None)


@pytest.fixture(scope="package")
def ids() -> Ids:
    return new_ids()


@pytest.fixture(scope="package")
async def services(infra: Any, ids: Ids) -> AsyncIterator[ServicePool]:
    pool = ServicePool(infra, ids)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="package")
async def security_mongo(infra: Any) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(params=SERVICE_NAMES)
def service_name(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)
