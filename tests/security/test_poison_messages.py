"""Malformed Kafka messages on every consumed topic go to `<topic>.dlq` with the reason in
headers and never stop the consumer: after the poison, a valid message is still processed.

Each service runs in-process (the session's pool, under uvicorn) against the real broker;
poison messages carry a unique key, which the dead-letter middleware copies into the
`dlq_original_key` header, so this test finds exactly its own dead letters.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from shared import topics
from shared.events import (
    AwardGranted,
    AwardGrantedPayload,
    AwardReason,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    Envelope,
    EventFinalized,
    EventFormat,
    EventPublished,
    EventPublishedPayload,
    EventRef,
    EventResultsPayload,
    Recipient,
    RecipientKind,
    StandingsUpdated,
    StandingsUpdatedPayload,
    encode_event,
    new_event,
    utc_now,
)
from shared.kafka import MAX_MESSAGE_BYTES
from tests.security.conftest import RunningService, ServicePool

pytestmark = pytest.mark.integration

# (consuming service, topic): every subscription of the four services.
CONSUMERS: tuple[tuple[str, str], ...] = (
    ("scoring", topics.REGISTRATION_ENTRIES),
    ("awards", topics.REGISTRATION_ENTRIES),
    ("awards", topics.SCORING_RESULTS),
    ("notifications", topics.AWARDS_DECISIONS),
    ("notifications", topics.SCORING_STANDINGS),
)


def refs(tag: str) -> tuple[CompetitionRef, EventRef]:
    competition = CompetitionRef(
        competition_id=f"pc-{tag}", name="毒消息测试赛", year=2026, level=CompetitionLevel.CITY
    )
    event = EventRef(
        event_id=f"pe-{tag}", name="焊工", trade="电焊工", format=EventFormat.INDIVIDUAL
    )
    return competition, event


def negative_line() -> dict[str, Any]:
    return {
        "entry_id": "neg-1",
        "rank": 1,
        "total": "-5.00",
        "components": {"theory": "-5.00", "practical": "-5.00"},
        "qualified": False,
        "union_id": "u-neg",
        "union_name": "工会",
        "members": [{"worker_id": "w-neg", "name": "张三", "front_line": True}],
    }


def valid_event(topic: str, tag: str) -> Envelope[Any]:
    competition, event = refs(tag)
    now = utc_now()
    built: Envelope[Any]
    if topic == topics.REGISTRATION_ENTRIES:
        built = new_event(
            EventPublished,
            EventPublishedPayload(
                competition=competition,
                event=event,
                registration_opens_at=datetime(2026, 1, 1, tzinfo=UTC),
                registration_closes_at=datetime(2099, 1, 1, tzinfo=UTC),
                starts_at=datetime(2099, 2, 1, tzinfo=UTC),
            ),
            producer="security-test",
            correlation_id="poison-" + tag,
        )
    elif topic == topics.SCORING_RESULTS:
        built = new_event(
            EventFinalized,
            EventResultsPayload(
                competition=competition,
                event=event,
                version=1,
                entrants=0,
                lines=(),
                finalised_by="chief",
                finalised_at=now,
            ),
            producer="security-test",
            correlation_id="poison-" + tag,
        )
    elif topic == topics.SCORING_STANDINGS:
        built = new_event(
            StandingsUpdated,
            StandingsUpdatedPayload(
                competition=competition, event=event, lines=(), marks_counted=0, as_of=now
            ),
            producer="security-test",
            correlation_id="poison-" + tag,
        )
    else:
        built = new_event(
            AwardGranted,
            AwardGrantedPayload(
                award_id=f"pa-{tag}",
                certificate_no=f"PC-{tag}",
                award_type=AwardType.TECHNICAL_EXPERT,
                competition=competition,
                event=event,
                recipient=Recipient(
                    kind=RecipientKind.PERSON,
                    recipient_id=f"pw-{tag}",
                    name="张三",
                    union_id="pu-1",
                    union_name="工会",
                ),
                rank=1,
                reason=AwardReason(rule="technical_expert.rank_1_3", facts={"rank": 1}),
                result_version=1,
                publicity_ends_on=date(2026, 5, 8),
                granted_at=now,
            ),
            producer="security-test",
            correlation_id="poison-" + tag,
        )
    return built


def with_negative_value(topic: str, tag: str) -> bytes:
    """A well-formed envelope whose payload breaks a value constraint (a negative number)."""
    document = json.loads(encode_event(valid_event(topic, tag)))
    document["event_id"] = str(uuid.uuid4())
    payload = document["payload"]
    if topic == topics.REGISTRATION_ENTRIES:
        payload["quota_per_union"] = -5
    elif topic in (topics.SCORING_RESULTS, topics.SCORING_STANDINGS):
        payload["lines"] = [negative_line()]
        if topic == topics.SCORING_RESULTS:
            payload["entrants"] = 1
    else:
        payload["rank"] = -1
    return json.dumps(document).encode()


def poisons(topic: str, tag: str) -> dict[str, bytes]:
    genuine = json.loads(encode_event(valid_event(topic, tag)))
    unknown_type = {**genuine, "event_type": "EventDetonated", "event_id": str(uuid.uuid4())}
    wrong_schema = {"event_id": str(uuid.uuid4()), "payload": {"surprise": True}}
    huge = {**genuine, "event_id": str(uuid.uuid4()), "padding": "x" * (MAX_MESSAGE_BYTES + 64)}
    return {
        "bad-json": b'{"event_type": "EventPublished", "payload": ',
        "not-utf8": b"\xff\xfe\x00garbage",
        "wrong-schema": json.dumps(wrong_schema).encode(),
        "unknown-type": json.dumps(unknown_type).encode(),
        "huge": json.dumps(huge).encode(),
        "negative": with_negative_value(topic, tag),
    }


async def dead_letters(
    bootstrap: str, topic: str, wanted: Callable[[dict[str, str]], bool], count: int
) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        # Count distinct original messages: another instance of the same service alive in
        # this process (another test module's) dead-letters the same poison a second time.
        seen_keys: set[str] = set()
        deadline = time.monotonic() + 120
        while len(seen_keys) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    headers = {k: v.decode(errors="replace") for k, v in record.headers}
                    if wanted(headers):
                        found.append(headers)
                        seen_keys.add(headers.get("dlq_original_key", ""))
    finally:
        await consumer.stop()
    return found


async def mentions(
    client: AsyncMongoClient[dict[str, Any]], service: RunningService, needle: str
) -> bool:
    database = client[service.database_name()]
    for name in await database.list_collection_names():
        async for doc in database[name].find({}):
            if needle in json.dumps(doc, default=str, ensure_ascii=False):
                return True
    return False


@pytest.mark.parametrize(("name", "topic"), CONSUMERS, ids=[f"{s}-{t}" for s, t in CONSUMERS])
async def test_poison_goes_to_the_dlq_and_the_consumer_carries_on(
    name: str,
    topic: str,
    services: ServicePool,
    infra: Any,
    security_mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    service = await services.get(name)
    tag = uuid.uuid4().hex[:8]
    poison = poisons(topic, tag)
    keys = {f"poison-{tag}-{case}": case for case in poison}
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for key, case in keys.items():
            await producer.send_and_wait(topic, poison[case], key=key.encode())
        good = valid_event(topic, tag)
        await producer.send_and_wait(topic, encode_event(good), key=f"pe-{tag}".encode())
    finally:
        await producer.stop()

    letters = await dead_letters(
        infra.kafka_bootstrap,
        topics.dlq(topic),
        lambda h: h.get("dlq_original_key", "") in keys and h.get("dlq_consumer") == name,
        len(keys),
    )
    by_case = {keys[h["dlq_original_key"]]: h for h in letters}
    missing = sorted(set(poison) - set(by_case))
    assert not missing, f"{name} on {topic}: poison not dead-lettered: {missing}"
    for case, headers in by_case.items():
        assert headers.get("dlq_reason"), f"{case}: dead letter without a reason"
        assert headers.get("dlq_original_topic") == topic
    assert "exceeds" in by_case["huge"]["dlq_reason"]

    async def processed() -> bool:
        return await mentions(security_mongo, service, f"pe-{tag}") or await mentions(
            security_mongo, service, str(good.event_id)
        )

    deadline = time.monotonic() + 30
    while not await processed():
        assert time.monotonic() < deadline, (
            f"{name} stopped consuming {topic} after the poison: the valid event "
            f"{good.event_id} was never processed"
        )
        await asyncio.sleep(0.3)
