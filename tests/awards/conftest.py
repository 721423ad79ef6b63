"""One running awards service for the module, a producer for its input topics, and a log of
everything it publishes on `awards.decisions` (read from the moment the module starts).

The service is started once per module on purpose: a fresh consumer group reads the shared input
topics from the beginning, and doing that per test would dominate the folder's run time. Tests
stay independent by using their own competition, event, union and worker ids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from pydantic import TypeAdapter

from services.awards.app import create_app
from services.awards.repository import COMPETITIONS, EVENT_RESULTS
from shared import topics
from shared.auth import Role, issue_token
from shared.events import (
    AwardGranted,
    AwardRevoked,
    CompetitionLevel,
    CompetitionRef,
    DecisionEvent,
    Envelope,
    EventFinalized,
    EventFormat,
    EventPublished,
    EventPublishedPayload,
    EventRef,
    EventResultsAmended,
    EventResultsPayload,
    Member,
    ResultLine,
    encode_event,
    new_event,
    utc_now,
)
from shared.mongo import Database
from shared.settings import Settings

YEAR = 2026
_decision_adapter: TypeAdapter[Any] = TypeAdapter(DecisionEvent)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def competition(
    competition_id: str, level: CompetitionLevel = CompetitionLevel.DISTRICT, year: int = YEAR
) -> CompetitionRef:
    return CompetitionRef(
        competition_id=competition_id, name="区职工技能大赛", year=year, level=level
    )


def event_ref(event_id: str, fmt: EventFormat = EventFormat.INDIVIDUAL) -> EventRef:
    return EventRef(event_id=event_id, name="焊工 " + event_id, trade="焊工", format=fmt)


def person_line(
    entry_id: str,
    rank: int,
    worker_id: str,
    *,
    union_id: str,
    qualified: bool = True,
    front_line: bool = True,
) -> ResultLine:
    return ResultLine(
        entry_id=entry_id,
        rank=rank,
        total=Decimal("90.00") - rank,
        components={"theory": Decimal("80.00"), "practical": Decimal("90.00") - rank},
        qualified=qualified,
        union_id=union_id,
        union_name=f"工会 {union_id}",
        members=(Member(worker_id=worker_id, name=f"工人 {worker_id}", front_line=front_line),),
        mark_ids=(f"mk-{entry_id}-theory", f"mk-{entry_id}-practical"),
    )


def results(
    comp: CompetitionRef,
    event: EventRef,
    lines: list[ResultLine],
    *,
    version: int = 1,
    entrants: int = 12,
) -> EventResultsPayload:
    return EventResultsPayload(
        competition=comp,
        event=event,
        version=version,
        entrants=entrants,
        lines=tuple(lines),
        finalised_by="chief-judge",
        reason="" if version == 1 else "appeal upheld",
        finalised_at=utc_now(),
    )


def finalized(payload: EventResultsPayload) -> Envelope[Any]:
    cls = EventFinalized if payload.version == 1 else EventResultsAmended
    return new_event(cls, payload, producer="test-scoring", correlation_id=unique("corr"))


def published(comp: CompetitionRef, event: EventRef) -> Envelope[Any]:
    now = utc_now()
    payload = EventPublishedPayload(
        competition=comp,
        event=event,
        minimum_entrants=0,
        registration_opens_at=now - timedelta(days=30),
        registration_closes_at=now - timedelta(days=1),
        starts_at=now,
    )
    return new_event(
        EventPublished, payload, producer="test-registration", correlation_id=unique("corr")
    )


@dataclass
class DecisionLog:
    """Every AwardGranted / AwardRevoked seen on awards.decisions, with its arrival time."""

    bootstrap: str
    seen: list[tuple[float, Envelope[Any]]] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            topics.AWARDS_DECISIONS, bootstrap_servers=self.bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        deadline = time.monotonic() + 10.0
        while not consumer.assignment():  # without a group, every partition once metadata is in
            assert time.monotonic() < deadline, "no partitions of awards.decisions assigned"
            await asyncio.sleep(0.05)
        assignment = sorted(consumer.assignment())
        await consumer.seek_to_end(*assignment)
        for tp in assignment:
            await consumer.position(tp)  # pin the start before anything is published
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=50)
            arrived = time.time()
            for records in batch.values():
                for record in records:
                    self.seen.append((arrived, _decision_adapter.validate_json(record.value)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    def of(self, competition_id: str) -> list[Envelope[Any]]:
        return [
            event
            for _, event in self.seen
            if event.payload.competition.competition_id == competition_id
        ]

    def arrivals(self, competition_id: str) -> list[tuple[float, Envelope[Any]]]:
        return [
            (at, event)
            for at, event in self.seen
            if event.payload.competition.competition_id == competition_id
        ]

    async def wait(
        self,
        competition_id: str,
        done: Callable[[list[Envelope[Any]]], bool],
        timeout: float = 10.0,
    ) -> list[Envelope[Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(competition_id)
            if done(found):
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out; decisions so far: {summary(self.of(competition_id))}")


def summary(decisions: list[Envelope[Any]]) -> list[tuple[str, str, str]]:
    return [
        (
            "grant" if isinstance(d, AwardGranted) else "revoke",
            d.payload.award_type.value,
            d.payload.recipient.recipient_id,
        )
        for d in decisions
    ]


def grants(decisions: list[Envelope[Any]]) -> list[AwardGranted]:
    return [d for d in decisions if isinstance(d, AwardGranted)]


def revocations(decisions: list[Envelope[Any]]) -> list[AwardRevoked]:
    return [d for d in decisions if isinstance(d, AwardRevoked)]


@dataclass
class AwardsUnderTest:
    app: FastAPI
    settings: Settings
    http: httpx.AsyncClient
    producer: AIOKafkaProducer
    decisions: DecisionLog

    @property
    def db(self) -> Database:
        return self.app.state.runtime.db  # type: ignore[no-any-return]

    async def publish(self, topic: str, event: Envelope[Any], key: str) -> None:
        await self.producer.send_and_wait(topic, encode_event(event), key=key.encode())

    async def finalise(self, payload: EventResultsPayload) -> Envelope[Any]:
        envelope = finalized(payload)
        await self.publish(topics.SCORING_RESULTS, envelope, payload.event.event_id)
        return envelope

    async def publish_event(self, comp: CompetitionRef, event: EventRef) -> None:
        await self.publish(topics.REGISTRATION_ENTRIES, published(comp, event), event.event_id)

    async def wait_applied(self, event_id: str, version: int = 1, timeout: float = 30.0) -> None:
        """Until the service has applied (at least) this result version of the event."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = await self.db[EVENT_RESULTS].find_one({"_id": event_id})
            if doc is not None and doc["applied_version"] >= version:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"result {event_id} v{version} not applied within {timeout} s")

    def token(self, role: Role, *scopes: str) -> dict[str, str]:
        jwt = issue_token(self.settings, subject=unique(role.value), role=role, scopes=scopes)
        return {"Authorization": f"Bearer {jwt}"}


@pytest.fixture(scope="module")
async def awards(infra: Any) -> AsyncIterator[AwardsUnderTest]:
    settings = infra.settings(
        mongodb_db_prefix="t" + uuid.uuid4().hex[:8],
    )
    app = create_app(settings)
    decisions = DecisionLog(infra.kafka_bootstrap)
    await decisions.start()
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://awards") as http:
                under_test = AwardsUnderTest(app, settings, http, producer, decisions)
                await _wait_until_caught_up(under_test)
                yield under_test
    finally:
        await producer.stop()
        await decisions.stop()


async def _wait_until_caught_up(awards: AwardsUnderTest) -> None:
    """The new consumer groups start at the beginning of shared topics; wait for the present."""
    comp = competition(unique("c-probe"), CompetitionLevel.ENTERPRISE)
    probe = event_ref(unique("ev-probe"))
    await awards.publish_event(comp, probe)
    await awards.finalise(results(comp, probe, [], entrants=0))
    await awards.wait_applied(probe.event_id, timeout=60.0)
    deadline = time.monotonic() + 60.0
    while await awards.db[COMPETITIONS].find_one({"_id": comp.competition_id}) is None:
        assert time.monotonic() < deadline, "registration.entries consumer never caught up"
        await asyncio.sleep(0.05)
