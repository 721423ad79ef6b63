"""Transactional outbox and its in-order relay.

A service writes its state change and the events it owes the world in one MongoDB
transaction (`Outbox.add`); the relay publishes them to Kafka in sequence order and marks them
sent. Sequence numbers come from a counter document incremented inside the same transaction,
so concurrent writers serialise on it and sequence order equals commit order: the relay never
sees seq N+1 before seq N exists. (Concurrent writers would conflict on it, so a service runs
its own transactions one at a time, see `ServiceRuntime`; only replicas still race, and
MongoDB retries the loser.) A crash between publish and marking re-publishes, which the
consumers' processed-event records absorb (at-least-once on the wire, exactly-once in effect).

Two document shapes share the sequence:
- single: one event per document (`add`, `add_many`, `add_serialized`);
- packed: many events in ONE document, `{_id: seq, batch: [{topic, key, value, event_id,
  event_type, correlation_id, headers?}, ...], n: len(batch), published}` (`add_packed`, up
  to `PACK_MAX_EVENTS` events or about `PACK_MAX_BYTES` of event JSON per document; `value`
  is the JSON as BSON binary, so the relay reads it back as bytes without a UTF-8 round
  trip). Bulk paths that emit 100,000 events in one go write some 50 documents, not 100,000.
The publishing order is (seq, position in the batch): a packed document is published as a
whole, in its batch order, and marked published only after every one of its events was
acknowledged; a crash in between re-publishes the whole pack (the same at-least-once rule).
A relay pass is bounded by a number of events (records), not documents, but always takes at
least one whole document.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
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
# A packed document stays far below MongoDB's 16 MB document limit and one relay pass.
PACK_MAX_EVENTS = 2000
PACK_MAX_BYTES = 8 * 1024 * 1024

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


class SerializedEvent(NamedTuple):
    topic: str
    key: str
    event_id: str
    event_type: str
    correlation_id: str
    value: str
    headers: dict[str, str] | None = None

    @classmethod
    def of(
        cls, topic: str, key: str, event: Envelope[Any], headers: dict[str, str] | None = None
    ) -> SerializedEvent:
        """An envelope serialised for the outbox; `headers` travel as Kafka headers."""
        return cls(
            topic,
            key,
            str(event.event_id),
            event.event_type,
            event.correlation_id,
            event.model_dump_json(),
            headers,
        )


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
        [sequence] = await self.add_serialized(
            session, [SerializedEvent.of(topic, key, event, headers)]
        )
        return sequence

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
            session, [SerializedEvent.of(topic, key, event) for topic, key, event in items]
        )

    async def add_serialized(self, session: Session, items: Sequence[SerializedEvent]) -> list[int]:
        """Like `add_many` for events already serialised to their envelope JSON (bulk paths
        that build 100,000 events without a pydantic model each; the caller guarantees the
        JSON validates against the contract)."""
        if not items:
            return []
        last = await self._next_sequence(session, len(items))
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
                "headers": item.headers or {},
                "published": False,
                "created_at": created_at,
            }
            for i, item in enumerate(items)
        ]
        await self._db[OUTBOX].insert_many(docs, ordered=True, session=session)
        return list(range(first, last + 1))

    async def add_packed(
        self,
        session: Session,
        items: Sequence[SerializedEvent],
        *,
        max_events: int = PACK_MAX_EVENTS,
        max_bytes: int = PACK_MAX_BYTES,
    ) -> list[int]:
        """Append events in order, many per outbox document (see the module docstring);
        returns the sequence number of each document written. One counter bump per call."""
        if not items:
            return []
        packs: list[list[dict[str, Any]]] = []
        pack: list[dict[str, Any]] = []
        pack_bytes = 0
        for item in items:
            size = len(item.value)
            if pack and (len(pack) >= max_events or pack_bytes + size > max_bytes):
                packs.append(pack)
                pack, pack_bytes = [], 0
            part: dict[str, Any] = {
                "topic": item.topic,
                "key": item.key,
                "value": item.value.encode(),
                "event_id": item.event_id,
                "event_type": item.event_type,
                "correlation_id": item.correlation_id,
            }
            if item.headers:
                part["headers"] = item.headers
            pack.append(part)
            pack_bytes += size
        packs.append(pack)
        last = await self._next_sequence(session, len(packs))
        first = last - len(packs) + 1
        created_at = utc_now()
        await self._db[OUTBOX].insert_many(
            [
                {
                    "_id": first + i,
                    "batch": batch,
                    "n": len(batch),
                    "published": False,
                    "created_at": created_at,
                }
                for i, batch in enumerate(packs)
            ],
            ordered=True,
            session=session,
        )
        return list(range(first, last + 1))

    async def pending_count(self) -> int:
        """Unpublished events (a packed document counts its events)."""
        cursor = await self._db[OUTBOX].aggregate(
            [
                {"$match": {"published": False}},
                {"$group": {"_id": None, "n": {"$sum": {"$ifNull": ["$n", 1]}}}},
            ]
        )
        rows = await cursor.to_list()
        return int(rows[0]["n"]) if rows else 0


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
        self._lease_until: datetime | None = None
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
        self._lease_until = None
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
        # Renewing only past half the lease saves a write on every pass of the hot path.
        if self._lease_until is not None and now < self._lease_until - self._lease_ttl / 2:
            return True
        self._lease_until = None
        try:
            await self._db[LEASES].find_one_and_update(
                {"_id": self._name, "$or": [{"owner": self._owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self._owner, "expires_at": now + self._lease_ttl}},
                upsert=True,
            )
        except PyMongoError:
            # Duplicate key on upsert: another live relay holds the lease.
            return False
        self._lease_until = now + self._lease_ttl
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
        """Publish the next pending documents in order, about `batch_size` events (at least
        one whole document); returns how many events were sent."""
        outbox = self._db[OUTBOX]
        heads = (
            await outbox.find({"published": False}, {"n": 1})
            .sort("_id", ASCENDING)
            .limit(self._batch_size)
            .to_list()
        )
        if not heads:
            return 0
        ids: list[int] = []
        events = 0
        for head in heads:
            size = int(head.get("n", 1))
            if ids and events + size > self._batch_size:
                break
            ids.append(head["_id"])
            events += size
        docs = await outbox.find({"_id": {"$in": ids}}).sort("_id", ASCENDING).to_list()
        records: list[OutgoingRecord] = []
        for doc in docs:
            batch = doc.get("batch")
            if batch is None:
                records.append(_record(doc))
            else:
                records.extend(_record(part) for part in batch)
        await self._publisher.publish_batch(records)
        await outbox.update_many(
            {"_id": {"$in": ids}},
            {"$set": {"published": True, "published_at": utc_now()}},
        )
        self.published_total += len(records)
        return len(records)

    async def _watch(self) -> None:
        # Only the wake-up matters: leave the inserted documents (packed ones are megabytes)
        # out of the stream.
        pipeline: list[dict[str, Any]] = [
            {"$match": {"operationType": "insert"}},
            {"$project": {"operationType": 1}},
        ]
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


def _record(doc: dict[str, Any]) -> OutgoingRecord:
    """A Kafka record from a single outbox document or one event of a packed document."""
    return OutgoingRecord(
        topic=doc["topic"],
        key=doc["key"],
        value=value.encode() if isinstance(value := doc["value"], str) else value,
        event_id=doc["event_id"],
        event_type=doc["event_type"],
        headers={**doc.get("headers", {}), "correlation_id": doc.get("correlation_id", "")},
    )
