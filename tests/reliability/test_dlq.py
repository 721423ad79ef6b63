"""`jinchui dlq` against a real Kafka broker: listing dead letters and replaying them once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from jinchui.dlq import (
    ReplayError,
    read_dead_letters,
    read_topic,
    replay_dead_letters,
    select_letters,
)
from shared.kafka_admin import ensure_topics
from shared.settings import Settings

pytestmark = pytest.mark.integration


def dlq_headers(topic: str, key: str, reason: str, offset: int) -> list[tuple[str, bytes]]:
    headers = {
        "dlq_reason": reason,
        "dlq_error_type": "PoisonMessage",
        "dlq_original_topic": topic,
        "dlq_partition": "0",
        "dlq_offset": str(offset),
        "dlq_consumer": "scoring",
        "dlq_attempts": "1",
        "dlq_original_key": key,
    }
    return [(k, v.encode()) for k, v in headers.items()]


@pytest.fixture
async def dead_letters(infra: Any) -> tuple[Settings, str]:
    """A private topic and its DLQ holding three dead letters on partition 0."""
    topic = f"t{uuid.uuid4().hex[:8]}.entries"
    await ensure_topics(infra.kafka_bootstrap, [topic, topic + ".dlq"], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(
                topic + ".dlq",
                f'{{"n": {i}}}'.encode(),
                partition=0,
                headers=dlq_headers(topic, f"key-{i}", f"reason {i}", 10 + i),
            )
    finally:
        await producer.stop()
    settings = infra.settings()
    return settings, topic


async def test_list_unpacks_the_dead_letter_headers(dead_letters: tuple[Settings, str]) -> None:
    settings, topic = dead_letters
    letters = await read_dead_letters(settings.kafka_bootstrap_servers, topic)
    assert [d.ref for d in letters] == ["0:0", "0:1", "0:2"]
    first = letters[0]
    assert first.reason == "reason 0"
    assert first.error_type == "PoisonMessage"
    assert first.original_topic == topic
    assert first.original_position == "0:10"
    assert first.original_key == "key-0"
    assert first.consumer == "scoring"
    assert first.excerpt() == '{"n": 0}'


async def test_replay_one_offset_republishes_it_once_with_its_key(
    dead_letters: tuple[Settings, str],
) -> None:
    settings, topic = dead_letters
    outcome = await replay_dead_letters(settings, topic, offset="0:1")
    assert [d.ref for d in outcome.replayed] == ["0:1"]
    again = await replay_dead_letters(settings, topic, offset="1")
    assert again.replayed == [] and [d.ref for d in again.skipped_already_replayed] == ["0:1"]
    republished = await read_topic(settings.kafka_bootstrap_servers, topic)
    assert [(key, value) for _p, _o, _t, key, value, _h in republished] == [(b"key-1", b'{"n": 1}')]


async def test_replay_all_skips_what_was_replayed_and_is_idempotent(
    dead_letters: tuple[Settings, str],
) -> None:
    settings, topic = dead_letters
    await replay_dead_letters(settings, topic, offset="0:1")
    outcome = await replay_dead_letters(settings, topic + ".dlq", replay_all=True)
    assert [d.ref for d in outcome.replayed] == ["0:0", "0:2"]
    assert [d.ref for d in outcome.skipped_already_replayed] == ["0:1"]
    final = await replay_dead_letters(settings, topic, replay_all=True)
    assert final.replayed == []
    keys = sorted(
        key or b"" for *_x, key, _v, _h in await read_topic(settings.kafka_bootstrap_servers, topic)
    )
    assert keys == [b"key-0", b"key-1", b"key-2"]


async def test_replay_needs_a_choice_and_an_existing_offset(
    dead_letters: tuple[Settings, str],
) -> None:
    settings, topic = dead_letters
    with pytest.raises(ReplayError, match="--all"):
        await replay_dead_letters(settings, topic)
    letters = await read_dead_letters(settings.kafka_bootstrap_servers, topic)
    with pytest.raises(ReplayError, match="no dead letter"):
        select_letters(letters, "0:99")
