"""Transactional outbox and its in-order relay.

A service writes its state change and the events it owes the world in one MongoDB
transaction (`Outbox.add`); the relay publishes them to Kafka in sequence order and marks them
sent. Sequence numbers come from a counter document incremented inside the same transaction,
so concurrent writers serialise on it and sequence order equals commit order: the relay never
sees seq N+1 before seq N exists. A crash between publish and marking re-publishes, which the
consumers' processed-event records absorb (at-least-once on the wire, exactly-once in effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import PyMongoError

from shared.events import Envelope, utc_now
from shared.logging import get_logger
from shared.mongo import Database, Session

OUTBOX = "outbox"
COUNTERS = "counters"
LEASES = "leases"
SENT_RETENTION = timedelta(days=2)

OUTBOX_INDEXES = {
    OUTBOX: [
        IndexModel([("published", ASCENDING), ("_id", ASCENDING)]),
        IndexModel(
            [("published_at", ASCENDING)],
            expireAfterSeconds=int(SENT_RETENTION.total_seconds()),
        ),
    ],
}

log = get_logger(__name__)


class Publisher(Protocol):
    """What the relay needs from Kafka: send a batch, return when all are acknowledged."""

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> None: ...


class OutgoingRecord:
    __slots__ = ("event_id", "event_type", "headers", "key", "topic", "value")

    def __init__(
        self,
        topic: str,
        key: str,
        value: bytes,
        event_id: str,
        event_type: str,
        headers: dict[str, str],
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.event_id = event_id
        self.event_type = event_type
        self.headers = headers


def outbox_document(
    seq: int,
    topic: str,
    key: str,
    event: Envelope[Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "_id": seq,
        "topic": topic,
        "key": key,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "correlation_id": event.correlation_id,
        "value": event.model_dump_json(),
        "headers": headers or {},
        "published": False,
        "created_at": utc_now(),
    }


class SerializedEvent(NamedTuple):
    topic: str
    key: str
    event_id: str
    event_type: str
    correlation_id: str
    value: str


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        session: Session,
        topic: str,
        key: str,
        event: Envelope[Any],
        headers: dict[str, str] | None = None,
    ) -> int:
        """Append one event; `headers` travel as Kafka headers (e.g. a dead-letter reason)."""
        counter = await self._next_sequence(session, 1)
        await self._db[OUTBOX].insert_one(
            outbox_document(counter, topic, key, event, headers), session=session
        )
        return counter

    async def _next_sequence(self, session: Session, count: int) -> int:
        """Reserve `count` sequence numbers; returns the last one."""
        counter = await self._db[COUNTERS].find_one_and_update(
            {"_id": OUTBOX},
            {"$inc": {"seq": count}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert counter is not None  # upsert with ReturnDocument.AFTER always returns one
        return int(counter["seq"])

    async def add_many(
        self, session: Session, items: Sequence[tuple[str, str, Envelope[Any]]]
    ) -> list[int]:
        """Append events in order; one counter bump per call keeps batches cheap."""
        return await self.add_serialized(
            session,
            [
                SerializedEvent(
                    topic,
                    key,
                    str(event.event_id),
                    event.event_type,
                    event.correlation_id,
                    event.model_dump_json(),
                )
                for topic, key, event in items
            ],
        )

    async def add_serialized(self, session: Session, items: Sequence[SerializedEvent]) -> list[int]:
        """Like `add_many` for events already serialised to their envelope JSON (bulk paths
        that build 100,000 events without a pydantic model each; the caller guarantees the
        JSON validates against the contract)."""
        if not items:
            return []
        counter = await self._db[COUNTERS].find_one_and_update(
            {"_id": OUTBOX},
            {"$inc": {"seq": len(items)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert counter is not None  # upsert with ReturnDocument.AFTER always returns one
        last = int(counter["seq"])
        first = last - len(items) + 1
        created_at = utc_now()
        docs: list[dict[str, Any]] = [
            {
                "_id": first + i,
                "topic": item.topic,
                "key": item.key,
                "event_id": item.event_id,
                "event_type": item.event_type,
                "correlation_id": item.correlation_id,
                "value": item.value,
                "published": False,
                "created_at": created_at,
            }
            for i, item in enumerate(items)
        ]
        await self._db[OUTBOX].insert_many(docs, ordered=True, session=session)
        return list(range(first, last + 1))

    async def pending_count(self) -> int:
        return await self._db[OUTBOX].count_documents({"published": False})


class OutboxRelay:
    """Publishes the outbox in sequence order; one active relay per service (a Mongo lease).

    Change streams wake it within milliseconds of a commit; polling is the safety net for
    missed notifications and for the moment after a failover.
    """

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        *,
        batch_size: int = 2000,
        poll_interval_s: float = 0.5,
        lease_ttl_s: float = 10.0,
        name: str = "outbox-relay",
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._lease_ttl = timedelta(seconds=lease_ttl_s)
        self._name = name
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.published_total = 0

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{self._name}-run"),
            asyncio.create_task(self._watch(), name=f"{self._name}-watch"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(PyMongoError):
            await self._db[LEASES].delete_one({"_id": self._name, "owner": self._owner})

    def nudge(self) -> None:
        """Called by writers in this process right after a commit for the lowest latency."""
        self._wake.set()

    async def _hold_lease(self) -> bool:
        now = utc_now()
        try:
            await self._db[LEASES].find_one_and_update(
                {"_id": self._name, "$or": [{"owner": self._owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self._owner, "expires_at": now + self._lease_ttl}},
                upsert=True,
            )
        except PyMongoError:
            # Duplicate key on upsert: another live relay holds the lease.
            return False
        return True

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if await self._hold_lease():
                    sent = await self.drain()
                    if sent:
                        continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed; will retry", error=str(exc))
                await asyncio.sleep(1.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)

    async def drain(self) -> int:
        """Publish one batch of pending records in order; returns how many were sent."""
        docs = (
            await self._db[OUTBOX]
            .find({"published": False})
            .sort("_id", ASCENDING)
            .limit(self._batch_size)
            .to_list()
        )
        if not docs:
            return 0
        records = [
            OutgoingRecord(
                topic=d["topic"],
                key=d["key"],
                value=d["value"].encode(),
                event_id=d["event_id"],
                event_type=d["event_type"],
                headers={**d.get("headers", {}), "correlation_id": d.get("correlation_id", "")},
            )
            for d in docs
        ]
        await self._publisher.publish_batch(records)
        await self._db[OUTBOX].update_many(
            {"_id": {"$in": [d["_id"] for d in docs]}},
            {"$set": {"published": True, "published_at": utc_now()}},
        )
        self.published_total += len(docs)
        return len(docs)

    async def _watch(self) -> None:
        pipeline = [{"$match": {"operationType": "insert"}}]
        while not self._stopping:
            try:
                async with await self._db[OUTBOX].watch(pipeline) as stream:
                    async for _change in stream:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("outbox change stream interrupted; polling meanwhile", error=str(exc))
                await asyncio.sleep(1.0)
