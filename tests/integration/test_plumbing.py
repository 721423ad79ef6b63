"""The shared plumbing against a real Kafka broker and a real MongoDB replica set:
outbox relay order, exactly-once consumption, dead-lettering, and the HTTP edge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi import APIRouter, Depends
from pydantic import BaseModel, TypeAdapter

from shared import topics
from shared.auth import Principal, Role, issue_token, require
from shared.errors import DomainError
from shared.events import (
    CompetitionLevel,
    CompetitionRef,
    EventFinalized,
    EventFormat,
    EventRef,
    EventResultsPayload,
    ResultsEvent,
    encode_event,
    new_event,
    utc_now,
)
from shared.http import audit, create_http_app
from shared.kafka import RelayPublisher, consumer_options, strict_decoder
from shared.mongo import Session
from shared.outbox import OUTBOX, OutboxRelay, SerializedEvent
from shared.runtime import AUDIT, ServiceRuntime
from tests.topic_reader import read_records

pytestmark = pytest.mark.integration


def results_event(event_id: str, version: int = 1) -> EventFinalized:
    payload = EventResultsPayload(
        competition=CompetitionRef(
            competition_id="c-" + event_id, name="测试赛", year=2026, level=CompetitionLevel.CITY
        ),
        event=EventRef(
            event_id=event_id, name="叉车", trade="叉车司机", format=EventFormat.INDIVIDUAL
        ),
        version=version,
        entrants=0,
        lines=(),
        finalised_by="chief",
        finalised_at=utc_now(),
    )
    event = new_event(EventFinalized, payload, producer="test", correlation_id="corr-" + event_id)
    assert isinstance(event, EventFinalized)
    return event


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> int:
    """Sum over partitions of the group's committed offsets of `topic`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await consumer.start()
    try:
        partitions = await consumer._client.fetch_all_metadata()
        total = 0
        for partition in partitions.partitions_for_topic(topic) or ():
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
    finally:
        await consumer.stop()
    return total


@pytest.fixture
async def runtime(infra: Any, db_prefix: str) -> AsyncIterator[ServiceRuntime]:
    rt = ServiceRuntime("plumbing", infra.settings(mongodb_db_prefix=db_prefix))
    yield rt


async def test_outbox_relay_publishes_committed_events_in_order(
    infra: Any, runtime: ServiceRuntime
) -> None:
    event_id = "ev-" + uuid.uuid4().hex[:8]
    events = [results_event(event_id, version=v) for v in range(1, 31)]
    await runtime.start()
    try:
        for start in range(0, 30, 10):

            async def work(
                session: Session, chunk: list[EventFinalized] = events[start : start + 10]
            ) -> None:
                await runtime.outbox.add_many(
                    session, [(topics.SCORING_RESULTS, event_id, e) for e in chunk]
                )

            await runtime.transact(work)

        async def aborted(session: Session) -> None:
            await runtime.outbox.add(
                session, topics.SCORING_RESULTS, event_id, results_event(event_id, 99)
            )
            raise RuntimeError("rolled back on purpose")

        with pytest.raises(RuntimeError):
            await runtime.transact(aborted)

        records = await read_records(
            infra.kafka_bootstrap, topics.SCORING_RESULTS, 30, key=event_id
        )
        # The relay marks documents published after Kafka acknowledged them, so a reader may
        # see the records a moment before the marks: wait for them.
        remaining = -1
        for _ in range(50):
            remaining = await runtime.db[OUTBOX].count_documents({"published": False})
            if remaining == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await runtime.stop()
    versions = [TypeAdapter(ResultsEvent).validate_json(r.value).payload.version for r in records]
    assert versions == list(range(1, 31)), "relay must publish every committed event, in order"
    assert {r.partition for r in records} == {records[0].partition}
    assert remaining == 0


def serialized(event_id: str, event: EventFinalized) -> SerializedEvent:
    return SerializedEvent.of(topics.SCORING_RESULTS, event_id, event, {"source": "packed"})


async def test_packed_and_single_outbox_documents_publish_in_one_order(
    infra: Any, db_prefix: str
) -> None:
    """Packed documents (many events each) and single ones share the sequence; a relay pass
    is bounded by events, yet always takes one whole document; all end up published."""
    rt = ServiceRuntime("plumbing", infra.settings(mongodb_db_prefix=db_prefix), relay_outbox=False)
    event_id = "ev-" + uuid.uuid4().hex[:8]
    events = [results_event(event_id, version=v) for v in range(1, 32)]
    await rt.start()
    publisher = RelayPublisher(rt.settings, client_id="plumbing-test")
    await publisher.start()
    relay = OutboxRelay(rt.db, publisher, batch_size=12)
    try:

        async def singles(session: Session) -> None:
            await rt.outbox.add_many(
                session, [(topics.SCORING_RESULTS, event_id, e) for e in events[0:3]]
            )

        async def packed(session: Session) -> None:  # versions 4..28: packs of 15 and 10
            sequences = await rt.outbox.add_packed(
                session, [serialized(event_id, e) for e in events[3:28]], max_events=15
            )
            assert len(sequences) == 2

        async def mixed(session: Session) -> None:  # 29 single, then 30..31 packed
            await rt.outbox.add(session, topics.SCORING_RESULTS, event_id, events[28])
            await rt.outbox.add_packed(session, [serialized(event_id, e) for e in events[29:]])

        async def aborted(session: Session) -> None:
            await rt.outbox.add_packed(session, [serialized(event_id, results_event("x", 99))])
            raise RuntimeError("rolled back on purpose")

        for work in (singles, packed, mixed):
            await rt.transact(work)
        with pytest.raises(RuntimeError):
            await rt.transact(aborted)
        assert await rt.outbox.pending_count() == 31
        passes = [await relay.drain() for _ in range(5)]
        records = await read_records(
            infra.kafka_bootstrap, topics.SCORING_RESULTS, 31, key=event_id
        )
        unpublished = await rt.db[OUTBOX].count_documents({"published": False})
        pending = await rt.outbox.pending_count()
        stamped = await rt.db[OUTBOX].count_documents({"published_at": {"$exists": True}})
    finally:
        await publisher.stop()
        await rt.stop()
    assert passes == [3, 15, 11, 2, 0], "bounded by events, one whole document at least"
    versions = [TypeAdapter(ResultsEvent).validate_json(r.value).payload.version for r in records]
    assert versions == list(range(1, 32)), "sequence order, then batch order within a pack"
    headers = [dict(r.headers) for r in records]
    assert all(h["source"] == b"packed" for h in headers[3:28])
    assert all("source" not in h for h in headers[:3])
    assert (unpublished, pending, stamped) == (0, 0, 7)
    assert relay.published_total == 31


async def test_consume_once_applies_a_redelivered_event_once(runtime: ServiceRuntime) -> None:
    event = results_event("ev-" + uuid.uuid4().hex[:8])

    async def work(session: Session) -> None:
        await runtime.db["effects"].update_one(
            {"_id": "counter"}, {"$inc": {"n": 1}}, upsert=True, session=session
        )

    first = await runtime.consume_once(event, work)
    second = await runtime.consume_once(event, work)
    assert (first, second) == (True, False)
    assert (await runtime.db["effects"].find_one({"_id": "counter"}))["n"] == 1  # type: ignore[index]
    await runtime.client.close()


class Rejected(DomainError):
    pass


async def test_poison_and_rule_breaking_messages_go_to_the_dead_letter_topic(
    infra: Any, runtime: ServiceRuntime
) -> None:
    topic = "plumbing-" + uuid.uuid4().hex[:8]
    handled: list[str] = []

    @runtime.broker.subscriber(
        topic,
        decoder=strict_decoder(TypeAdapter(ResultsEvent)),
        **consumer_options(runtime.group_id(topic)),
    )
    async def on_results(event: ResultsEvent) -> None:
        if event.payload.event.event_id.startswith("reject"):
            raise Rejected("test_rule", "this event breaks a rule", field="payload.event")
        handled.append(event.payload.event.event_id)

    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    await runtime.start()
    try:
        await producer.send_and_wait(topic, b"not json at all")
        await producer.send_and_wait(topic, b'{"event_type": "EventFinalized", "payload": {}}')
        await producer.send_and_wait(topic, encode_event(results_event("reject-me")))
        await producer.send_and_wait(topic, encode_event(results_event("good-one")))
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.1)
        dead = await read_records(infra.kafka_bootstrap, topics.dlq(topic), 3)
    finally:
        await producer.stop()
        await runtime.stop()
    assert handled == ["good-one"], "a poison message must not stop the consumer"
    assert await committed_offsets(infra.kafka_bootstrap, runtime.group_id(topic), topic) == 4, (
        "every handled or dead-lettered message has its offset committed"
    )
    reasons = [dict(r.headers)["dlq_reason"].decode() for r in dead]
    assert len(dead) == 3
    # The dead-letter topic has several partitions: the order across them is not defined.
    assert any("Invalid JSON" in r for r in reasons)
    assert any("event_id: Field required" in r for r in reasons)
    assert any("breaks a rule" in r for r in reasons)
    assert all(dict(r.headers)["dlq_original_topic"].decode() == topic for r in dead)


class Echo(BaseModel):
    name: str
    count: int


async def test_http_edge_auth_limits_errors_health_and_audit(infra: Any, db_prefix: str) -> None:
    settings = infra.settings(mongodb_db_prefix=db_prefix, max_body_bytes=2048)
    runtime = ServiceRuntime("edge", settings)
    router = APIRouter()

    @router.post("/echo/{union_id}")
    async def echo(
        union_id: str,
        body: Echo,
        principal: Annotated[Principal, Depends(require(Role.UNION_OFFICER, Role.ADMIN))],
    ) -> dict[str, Any]:
        principal.require_scope("union", union_id)

        async def work(session: Session) -> None:
            await audit(runtime, session, principal, "echo", union_id, {"name": body.name})

        await runtime.transact(work)
        return {"name": body.name, "count": body.count}

    app = create_http_app(runtime, [router], title="edge test")
    import shared.settings as settings_module

    settings_module.get_settings.cache_clear()
    token = issue_token(settings, subject="o1", role=Role.UNION_OFFICER, scopes=["union:u1"])
    judge = issue_token(settings, subject="j1", role=Role.JUDGE, scopes=["event:e1"])
    expired = issue_token(
        settings,
        subject="o1",
        role=Role.UNION_OFFICER,
        scopes=["union:u1"],
        ttl=timedelta(seconds=-5),
    )
    forged = issue_token(
        settings.model_copy(update={"jwt_secret": "x" * 40}),
        subject="o1",
        role=Role.ADMIN,
        scopes=["*"],
    )
    monkey = pytest.MonkeyPatch()
    monkey.setenv("JINCHUI_JWT_SECRET", settings.jwt_secret)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                ok = await client.post(
                    "/echo/u1",
                    json={"name": "张三", "count": 1},
                    headers={"Authorization": f"Bearer {token}", "X-Correlation-ID": "abc"},
                )
                assert ok.status_code == 200, ok.text
                assert ok.headers["X-Correlation-ID"] == "abc"
                missing = await client.post("/echo/u1", json={"name": "a", "count": 1})
                assert missing.status_code == 401
                assert missing.json()["error"]["rule"] == "token_missing"
                for bad, rule in ((expired, "token_expired"), (forged, "token_invalid")):
                    r = await client.post(
                        "/echo/u1",
                        json={"name": "a", "count": 1},
                        headers={"Authorization": f"Bearer {bad}"},
                    )
                    assert (r.status_code, r.json()["error"]["rule"]) == (401, rule)
                wrong_role = await client.post(
                    "/echo/u1",
                    json={"name": "a", "count": 1},
                    headers={"Authorization": f"Bearer {judge}"},
                )
                assert wrong_role.status_code == 403
                other_union = await client.post(
                    "/echo/u2",
                    json={"name": "a", "count": 1},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert (other_union.status_code, other_union.json()["error"]["field"]) == (
                    403,
                    "union",
                )
                invalid = await client.post(
                    "/echo/u1",
                    json={"name": "a", "count": "many"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert invalid.status_code == 422
                assert invalid.json()["error"]["field"] == "count"
                huge = await client.post(
                    "/echo/u1",
                    content=b'{"name": "' + b"x" * 5000 + b'", "count": 1}',
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                    },
                )
                assert huge.status_code == 413
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"] == {"mongodb": True, "kafka": True, "started": True}
                spec = await client.get("/asyncapi.json")
                assert spec.json()["asyncapi"].startswith("3.")
            audited = await runtime.db[AUDIT].find({"action": "echo"}).to_list()
    finally:
        monkey.undo()
        settings_module.get_settings.cache_clear()
    assert [(a["actor"], a["target"]) for a in audited] == [("o1", "u1")]


async def test_a_service_runs_its_transactions_one_at_a_time_so_none_is_redone(
    infra: Any, db_prefix: str
) -> None:
    """Every transaction bumps the outbox sequence; were two of one process in flight at once,
    MongoDB would abort one on that counter and `with_transaction` would run its work again
    (a thousand marks re-inserted). Queued, each unit of work runs exactly once."""
    rt = ServiceRuntime("plumbing", infra.settings(mongodb_db_prefix=db_prefix), relay_outbox=False)
    event_id = "ev-" + uuid.uuid4().hex[:8]
    runs: list[int] = []
    in_flight = [0, 0]  # now, most ever
    await rt.start()
    try:

        def unit(number: int) -> Any:
            async def work(session: Session) -> None:
                runs.append(number)
                in_flight[0] += 1
                in_flight[1] = max(in_flight)
                try:
                    await rt.db["scratch"].insert_many(
                        [{"unit": number, "i": i} for i in range(200)], session=session
                    )
                    await asyncio.sleep(0.01)  # widen the window a conflict would need
                    await rt.outbox.add_packed(
                        session, [serialized(event_id, results_event(event_id, number))]
                    )
                finally:
                    in_flight[0] -= 1

            return work

        await asyncio.gather(*(rt.transact(unit(n)) for n in range(1, 21)))
        stored = await rt.db["scratch"].count_documents({})
        pending = await rt.outbox.pending_count()
    finally:
        await rt.stop()
    assert sorted(runs) == list(range(1, 21)), "no unit of work ran twice"
    assert in_flight[1] == 1
    assert (stored, pending) == (20 * 200, 20)
