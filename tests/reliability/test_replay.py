"""`jinchui replay` against real Kafka and MongoDB: the scoring roster is rebuilt from
registration.entries after its consumer group is reset and the derived collection cleared."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

import services.scoring.repository as scoring_repository
from jinchui.replay import ReplayRefused, execute_replay, plan_replay
from services.scoring.app import create_app
from shared import topics
from shared.events import (
    CompetitionLevel,
    CompetitionRef,
    EntryRegistered,
    EntryRegisteredPayload,
    EventFormat,
    EventPublished,
    EventPublishedPayload,
    EventRef,
    Member,
    encode_event,
    new_event,
    utc_now,
)
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def publish_roster(bootstrap: str, event_id: str, entry_ids: list[str]) -> None:
    now = utc_now()
    competition = CompetitionRef(
        competition_id=f"c-{event_id}", name="重放赛", year=now.year, level=CompetitionLevel.CITY
    )
    event = EventRef(
        event_id=event_id, name="叉车", trade="叉车司机", format=EventFormat.INDIVIDUAL
    )
    published = new_event(
        EventPublished,
        EventPublishedPayload(
            competition=competition,
            event=event,
            registration_opens_at=now - timedelta(days=1),
            registration_closes_at=now + timedelta(days=1),
            starts_at=now + timedelta(days=2),
        ),
        producer="test",
        correlation_id="replay-test",
    )
    messages = [published] + [
        new_event(
            EntryRegistered,
            EntryRegisteredPayload(
                entry_id=entry_id,
                competition=competition,
                event=event,
                union_id="u1",
                union_name="工会",
                members=(Member(worker_id=f"w-{entry_id}", name="王伟", front_line=True),),
                registered_at=now,
            ),
            producer="test",
            correlation_id="replay-test",
        )
        for entry_id in entry_ids
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(
                topics.REGISTRATION_ENTRIES, encode_event(message), key=event_id.encode()
            )
    finally:
        await producer.stop()


async def roster(client: AsyncMongoClient[Any], settings: Settings, event_id: str) -> set[str]:
    docs = (
        await client[settings.database_name("scoring")]["entries"]
        .find({"event_id": event_id})
        .to_list()
    )
    return {str(d["_id"]) for d in docs}


async def wait_roster(
    client: AsyncMongoClient[Any], settings: Settings, event_id: str, wanted: set[str]
) -> set[str]:
    found: set[str] = set()
    for _ in range(300):
        found = await roster(client, settings, event_id)
        if found == wanted:
            return found
        await asyncio.sleep(0.2)
    return found


async def test_replay_rebuilds_the_scoring_roster(
    infra: Any, db_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = infra.settings(mongodb_db_prefix=db_prefix)
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    entries = [f"{event_id}-e{i}" for i in range(3)]
    client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_url)
    try:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await publish_roster(infra.kafka_bootstrap, event_id, entries)
            assert await wait_roster(client, settings, event_id, set(entries)) == set(entries)

        # Without a declaration replay refuses, naming what it would have cleared.
        monkeypatch.delattr(scoring_repository, "DERIVED_COLLECTIONS", raising=False)
        undeclared = await plan_replay(settings, "scoring")
        assert not undeclared.declared and "entries" in undeclared.collections
        with pytest.raises(ReplayRefused, match="DERIVED_COLLECTIONS"):
            await execute_replay(settings, undeclared)

        monkeypatch.setattr(scoring_repository, "DERIVED_COLLECTIONS", ("entries",), raising=False)
        plan = await plan_replay(settings, "scoring")
        group = f"{db_prefix}-scoring-main"
        assert group in plan.groups
        assert {tp.topic for tp in plan.groups[group]} == {topics.REGISTRATION_ENTRIES}
        await execute_replay(settings, plan)

        db = client[settings.database_name("scoring")]
        assert await roster(client, settings, event_id) == set()
        assert await db["processed_events"].count_documents({}) == 0
        await assert_group_at_beginning(infra.kafka_bootstrap, group, plan.groups[group])

        app = create_app(settings)
        async with app.router.lifespan_context(app):
            assert await wait_roster(client, settings, event_id, set(entries)) == set(entries)
    finally:
        await client.close()


async def assert_group_at_beginning(
    bootstrap: str, group: str, partitions: list[TopicPartition]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        beginnings = await consumer.beginning_offsets(partitions)
        assert {tp: committed[tp].offset for tp in partitions} == beginnings
    finally:
        await consumer.stop()
        await admin.close()


async def test_replay_refuses_while_the_service_runs(infra: Any, db_prefix: str) -> None:
    settings = infra.settings(mongodb_db_prefix=db_prefix)
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await publish_roster(infra.kafka_bootstrap, event_id, [f"{event_id}-e0"])
        client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_url)
        try:
            await wait_roster(client, settings, event_id, {f"{event_id}-e0"})
        finally:
            await client.close()
        plan = await plan_replay(settings, "scoring")
        plan.collections, plan.declared = ("entries",), True
        with pytest.raises(ReplayRefused, match="stop scoring first"):
            await execute_replay(settings, plan)
