"""One scoring service for the area's tests, against the session's real Kafka and MongoDB.

The app runs inside its own lifespan; HTTP calls go through httpx's ASGI transport, and the
same app is also served by uvicorn on a free loopback port (lifespan off) for the WebSocket
and server-sent-events tests. Each test builds its own contest with unique ids, publishing
`EventPublished` / `EntryRegistered` to `registration.entries` as registration would.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from jinchui.stack import free_port
from services.scoring.app import create_app
from services.scoring.handlers import ScoringService
from shared import topics
from shared.auth import Role, issue_token
from shared.events import (
    CompetitionLevel,
    CompetitionRef,
    EntryRegistered,
    EntryRegisteredPayload,
    EntryWithdrawn,
    EntryWithdrawnPayload,
    Envelope,
    EventFormat,
    EventPublished,
    EventPublishedPayload,
    EventRef,
    Member,
    ScoringComponent,
    ScoringScheme,
    encode_event,
    new_event,
    utc_now,
)
from shared.settings import get_settings


@dataclass
class ScoringHarness:
    app: FastAPI
    http: httpx.AsyncClient
    base_url: str
    producer: AIOKafkaProducer
    bootstrap: str

    @property
    def service(self) -> ScoringService:
        service: ScoringService = self.app.state.scoring
        return service

    @property
    def ws_base(self) -> str:
        return self.base_url.replace("http://", "ws://", 1)

    def token(self, role: Role, subject: str, scopes: Sequence[str] = ("*",)) -> str:
        return issue_token(get_settings(), subject=subject, role=role, scopes=scopes)

    def auth(self, role: Role, subject: str, scopes: Sequence[str] = ("*",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, subject, scopes)}"}

    async def publish(self, *events: Envelope[Any]) -> None:
        for event in events:
            payload = event.payload
            key = (
                payload.event.event_id
                if hasattr(payload, "event")
                else getattr(payload, "event_id", "")
            )
            await self.producer.send_and_wait(
                topics.REGISTRATION_ENTRIES, encode_event(event), key=key.encode()
            )


@pytest.fixture(scope="session")
async def scoring(infra: Any) -> AsyncIterator[ScoringHarness]:
    settings = infra.settings(
        mongodb_db_prefix="ts" + uuid.uuid4().hex[:8],
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    async with app.router.lifespan_context(app):
        serving = asyncio.create_task(server.serve())
        await producer.start()
        while not server.started:  # noqa: ASYNC110 - uvicorn offers only this flag
            await asyncio.sleep(0.02)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scoring") as http:
            try:
                yield ScoringHarness(
                    app, http, f"http://127.0.0.1:{port}", producer, infra.kafka_bootstrap
                )
            finally:
                await producer.stop()
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await serving


# --- contests -------------------------------------------------------------------------------


@dataclass
class Contest:
    """One competition event with its roster and panel, ids unique to the test."""

    competition_id: str
    event_id: str
    chief: str
    judges: dict[str, str | None]
    entries: dict[str, EntryRegisteredPayload] = field(default_factory=dict)
    published: EventPublishedPayload | None = None

    def entry(self, n: int) -> str:
        return f"{self.event_id}-e{n}"


def member(worker_id: str, front_line: bool = True) -> Member:
    return Member(worker_id=worker_id, name=f"工人{worker_id[-4:]}", front_line=front_line)


def contest_events(
    unions: Sequence[str],
    *,
    tag: str | None = None,
    scheme: ScoringScheme | None = None,
    team_size: int = 1,
) -> tuple[Contest, list[Envelope[Any]]]:
    """EventPublished plus one entry per union given (a union may appear several times)."""
    tag = tag or uuid.uuid4().hex[:8]
    now = utc_now()
    competition = CompetitionRef(
        competition_id=f"c-{tag}", name="劳动技能竞赛", year=2026, level=CompetitionLevel.CITY
    )
    event = EventRef(
        event_id=f"ev-{tag}",
        name="叉车司机",
        trade="forklift",
        format=EventFormat.TEAM if team_size > 1 else EventFormat.INDIVIDUAL,
    )
    published = EventPublishedPayload(
        competition=competition,
        event=event,
        team_size=team_size,
        scheme=scheme or ScoringScheme(),
        minimum_entrants=0,
        registration_opens_at=now - timedelta(days=2),
        registration_closes_at=now - timedelta(days=1),
        starts_at=now,
    )
    contest = Contest(
        competition_id=competition.competition_id,
        event_id=event.event_id,
        chief=f"{event.event_id}-chief",
        judges={
            f"{event.event_id}-j1": "U-other",
            f"{event.event_id}-j2": None,
            f"{event.event_id}-j3": unions[0],
        },
        published=published,
    )
    events: list[Envelope[Any]] = [
        new_event(EventPublished, published, producer="test", correlation_id=f"pub-{tag}")
    ]
    for n, union in enumerate(unions, start=1):
        payload = EntryRegisteredPayload(
            entry_id=contest.entry(n),
            competition=competition,
            event=event,
            union_id=union,
            union_name=f"{union}工会",
            team_name=f"{union}队" if team_size > 1 else "",
            members=tuple(member(f"{contest.entry(n)}-w{i}") for i in range(team_size)),
            registered_at=now,
        )
        contest.entries[payload.entry_id] = payload
        events.append(
            new_event(EntryRegistered, payload, producer="test", correlation_id=f"reg-{tag}-{n}")
        )
    return contest, events


def withdrawal(contest: Contest, entry_id: str) -> Envelope[Any]:
    payload = EntryWithdrawnPayload(
        entry_id=entry_id,
        event_id=contest.event_id,
        union_id=contest.entries[entry_id].union_id,
        reason="injured",
        withdrawn_at=utc_now(),
    )
    return new_event(EntryWithdrawn, payload, producer="test", correlation_id="wd-" + entry_id)


async def wait_for(
    check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def standings_of(harness: ScoringHarness, event_id: str) -> dict[str, Any]:
    response = await harness.http.get(
        f"/events/{event_id}/standings", headers=harness.auth(Role.LEADER, "leader")
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def set_up_contest(
    harness: ScoringHarness,
    unions: Sequence[str] = ("U-a", "U-b", "U-c"),
    **kwargs: Any,
) -> Contest:
    """Publish the event and entries, assign the panel, wait until scoring has the roster."""
    contest, events = contest_events(unions, **kwargs)
    await harness.publish(*events)
    response = await harness.http.put(
        f"/events/{contest.event_id}/panel",
        headers=harness.auth(Role.ADMIN, "admin"),
        json={
            "chief_judge_id": contest.chief,
            "judges": [{"judge_id": j, "union_id": u} for j, u in contest.judges.items()],
        },
    )
    assert response.status_code == 200, response.text

    async def roster_complete() -> bool:
        standings = await standings_of(harness, contest.event_id)
        return len(standings["lines"]) == len(unions) and standings["known"]

    await wait_for(roster_complete)
    return contest


def practical_only_scheme(tolerance: str = "20") -> ScoringScheme:
    return ScoringScheme(
        components=(ScoringComponent(name="practical", weight=Decimal("1")),),
        divergence_tolerance=Decimal(tolerance),
    )
