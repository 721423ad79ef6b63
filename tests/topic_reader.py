"""Reading back what a service published, for assertions: real Kafka, no consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer


async def read_records(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    key: str | None = None,
    where: Callable[[Any], bool] | None = None,
    timeout: float = 20.0,
) -> list[Any]:
    """Records of `topic` from the beginning, those with `key` and/or matching `where`, until
    `count` of them arrived or `timeout` seconds passed (then what arrived so far)."""
    wanted_key = key.encode() if key is not None else None
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(found) < count and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                found.extend(
                    r
                    for r in records
                    if (wanted_key is None or r.key == wanted_key) and (where is None or where(r))
                )
    finally:
        await consumer.stop()
    return found
