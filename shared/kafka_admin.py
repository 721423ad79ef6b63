"""Kafka administration the services and tools share: making sure topics exist."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

# Kafka protocol error code TOPIC_ALREADY_EXISTS: someone else created it first, which is fine.
_TOPIC_ALREADY_EXISTS = 36


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic for a reason other than "it already exists"."""


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int = 3,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create whichever of `topics` do not exist yet, then wait until each has a leader.

    Safe to call concurrently from several processes: a topic that appears between our listing
    and our creation request is taken as success. Existing topics are left as they are (their
    partition count is not changed).
    """
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=partitions,
                        replication_factor=replication_factor,
                    )
                    for name in missing
                ]
            )
            _raise_for_topic_errors(response.to_object())
        await _wait_for_leaders(admin, wanted, timeout_s)
    finally:
        await admin.close()


def _raise_for_topic_errors(response: dict[str, object]) -> None:
    failures: list[str] = []
    topic_errors = response.get("topic_errors") or response.get("topics") or []
    assert isinstance(topic_errors, list)
    for entry in topic_errors:
        code = int(entry["error_code"])
        if code in (0, _TOPIC_ALREADY_EXISTS):
            continue
        message = entry.get("error_message") or for_code(code).__name__
        failures.append(f"{entry.get('topic') or entry.get('name')}: {message}")
    if failures:
        raise TopicCreationError("could not create topics: " + "; ".join(failures))


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float
) -> None:
    """Creation returns before partitions have leaders; producing right away would fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(topics)
        pending = [
            str(topic["topic"])
            for topic in described
            if topic["error_code"] != 0
            or not topic["partitions"]
            or any(partition["leader"] < 0 for partition in topic["partitions"])
        ]
        if not pending:
            return
        if loop.time() > deadline:
            raise TopicCreationError(f"topics without a leader after {timeout_s}s: {pending}")
        await asyncio.sleep(0.2)
