"""The infrastructure gives what the delivery guarantees rely on (DESIGN.md).

Kafka: idempotent acks=all producers, consumer groups reading a key's messages in order,
transactions whose aborted records stay invisible to read_committed consumers. MongoDB: a
replica set, so multi-document transactions and change streams work. Plus the local
launcher's own promises: `up` is idempotent, restarts keep ports and data, `down` is
idempotent.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from jinchui import infra as local_infra
from shared.kafka_admin import ensure_topics
from tests.conftest import Infra

pytestmark = pytest.mark.integration

NO_IDEMPOTENCE = "Tansu lacks idempotent/transactional producers"


def _unique(name: str) -> str:
    return f"test.infra.{name}.{uuid.uuid4().hex[:8]}"


async def _read_until(
    consumer: AIOKafkaConsumer, count: int, timeout_s: float = 30.0
) -> list[tuple[bytes | None, bytes | None]]:
    """Read `count` records (key, value), in the order the consumer delivers them."""
    received: list[tuple[bytes | None, bytes | None]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(received) < count and loop.time() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            received.extend((record.key, record.value) for record in records)
    return received


async def _produce_then_consume_in_group(infra: Infra, *, idempotent: bool) -> None:
    topic = _unique("order")
    await ensure_topics(infra.kafka_bootstrap, [topic], partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=idempotent, acks="all"
    )
    await producer.start()
    try:
        # Sent without awaiting each one: the producer must still keep them in order.
        futures = [
            await producer.send(topic, key=b"event-1", value=str(n).encode()) for n in range(200)
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert {record.partition for record in metadata} == {metadata[0].partition}

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap,
        group_id=_unique("group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received = await _read_until(consumer, 200)
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(topic, metadata[0].partition))
    finally:
        await consumer.stop()
    assert [value for _, value in received] == [str(n).encode() for n in range(200)]
    assert committed == 200


async def test_idempotent_producer_and_consumer_group_keep_a_keys_order(infra: Infra) -> None:
    if not infra.kafka_idempotence:
        pytest.skip(NO_IDEMPOTENCE)
    await _produce_then_consume_in_group(infra, idempotent=True)


async def test_plain_acks_all_producer_and_consumer_group_keep_a_keys_order(
    infra: Infra,
) -> None:
    """What still holds on every broker flavour, Tansu included."""
    await _produce_then_consume_in_group(infra, idempotent=False)


async def test_aborted_transaction_is_invisible_to_read_committed_consumers(
    infra: Infra,
) -> None:
    if not infra.kafka_idempotence:
        pytest.skip(NO_IDEMPOTENCE)
    topic = _unique("tx")
    await ensure_topics(infra.kafka_bootstrap, [topic], partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap,
        transactional_id=_unique("producer"),
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed")
    finally:
        await producer.stop()

    async def values_seen(isolation_level: str, expected: int) -> list[bytes | None]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.kafka_bootstrap,
            auto_offset_reset="earliest",
            isolation_level=isolation_level,
        )
        await consumer.start()
        try:
            received = await _read_until(consumer, expected, timeout_s=10)
        finally:
            await consumer.stop()
        return [value for _, value in received]

    assert await values_seen("read_committed", 1) == [b"committed"]
    # The aborted record is really in the log: only the isolation level hides it.
    assert await values_seen("read_uncommitted", 2) == [b"aborted", b"committed"]


async def test_mongo_multi_document_transaction_commits_all_or_nothing(
    mongo_client: AsyncMongoClient[dict[str, Any]], db_prefix: str
) -> None:
    database = mongo_client[f"{db_prefix}_infra"]
    entries, outbox = database["entries"], database["outbox"]
    # Collections must exist before a transaction writes to them on MongoDB 6.0.
    await database.create_collection("entries")
    await database.create_collection("outbox")

    async with mongo_client.start_session() as session:
        async with await session.start_transaction():
            await entries.insert_one({"_id": "committed"}, session=session)
            await outbox.insert_one({"_id": "committed-event"}, session=session)

    with pytest.raises(RuntimeError, match="crash between the writes"):
        async with mongo_client.start_session() as session:
            async with await session.start_transaction():
                await entries.insert_one({"_id": "aborted"}, session=session)
                raise RuntimeError("crash between the writes")

    assert await entries.distinct("_id") == ["committed"]
    assert await outbox.distinct("_id") == ["committed-event"]
    await mongo_client.drop_database(database.name)


async def test_mongo_change_stream_sees_an_insert(
    mongo_client: AsyncMongoClient[dict[str, Any]], db_prefix: str
) -> None:
    collection = mongo_client[f"{db_prefix}_infra"]["feed"]
    async with await collection.watch() as stream:
        await collection.insert_one({"_id": "award-1", "title": "五一劳动奖章"})
        change = await asyncio.wait_for(stream.next(), timeout=10)
    assert change["operationType"] == "insert"
    assert change["fullDocument"] == {"_id": "award-1", "title": "五一劳动奖章"}
    await mongo_client.drop_database(f"{db_prefix}_infra")


# --- the local launcher itself ------------------------------------------------------------


def _local_state_dir(infra: Infra) -> Path:
    if infra.state_dir is None:
        pytest.skip("needs servers launched by jinchui.infra (not external or Docker ones)")
    return infra.state_dir


def test_up_is_idempotent(infra: Infra) -> None:
    state_dir = _local_state_dir(infra)
    before = local_infra.infra_status(state_dir)
    handle = local_infra.start_infra(state_dir, create_topics=False)
    after = local_infra.infra_status(state_dir)
    assert (handle.kafka_bootstrap, handle.mongodb_url) == (
        infra.kafka_bootstrap,
        infra.mongodb_url,
    )
    assert [(s.name, s.pid) for s in after] == [(s.name, s.pid) for s in before]
    assert all(s.running and s.answers for s in after)
    assert local_infra.load_env(state_dir)["KAFKA_BOOTSTRAP_SERVERS"] == infra.kafka_bootstrap


async def test_kafka_restart_keeps_port_and_data(infra: Infra) -> None:
    state_dir = _local_state_dir(infra)
    if infra.flavour == "tansu":
        pytest.skip("Tansu keeps its data in memory only, so a restart loses it")
    topic = _unique("restart")
    await ensure_topics(infra.kafka_bootstrap, [topic], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before the crash")
    finally:
        await producer.stop()

    # A hard kill, as in a crash: acks=all data must be back after the restart.
    record = await asyncio.to_thread(local_infra.restart_kafka, state_dir, kill=True)
    assert record.bootstrap == infra.kafka_bootstrap

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=infra.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        received = await _read_until(consumer, 1)
    finally:
        await consumer.stop()
    assert [value for _, value in received] == [b"before the crash"]


async def test_mongo_restart_keeps_port_and_data(
    infra: Infra, mongo_client: AsyncMongoClient[dict[str, Any]], db_prefix: str
) -> None:
    state_dir = _local_state_dir(infra)
    collection = mongo_client[f"{db_prefix}_infra"]["durable"]
    await collection.insert_one({"_id": "kept"})

    record = await asyncio.to_thread(local_infra.restart_mongo, state_dir)
    assert record.url == infra.mongodb_url

    # The client reconnects by itself once the restarted server is primary again.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            assert await collection.distinct("_id") == ["kept"]
            break
        except PyMongoError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)
    await mongo_client.drop_database(f"{db_prefix}_infra")


def test_down_is_idempotent_on_an_empty_state_folder(tmp_path: Path) -> None:
    assert local_infra.stop_infra(tmp_path) == []
    assert local_infra.stop_infra(tmp_path) == []
    assert local_infra.load_env(tmp_path) == {}


def test_process_alive_rejects_a_recycled_pid() -> None:
    import os

    # Our own PID runs, but it is not a broker: a stale record must not make us signal it.
    assert local_infra.process_alive(os.getpid(), "python")
    assert not local_infra.process_alive(os.getpid(), "kafka.Kafka /no/such/server.properties")
    assert not local_infra.terminate(os.getpid(), "kafka.Kafka /no/such/server.properties")
