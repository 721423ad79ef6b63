"""MongoDB adapter of the registration service.

Collections (database `<prefix>_registration`):
- `competitions`, `events`, `unions`, `workers` (national id only hashed + masked),
  `entries` (every entry, registered or withdrawn). A UNIQUE PARTIAL MULTIKEY index on
  {event_id, member_ids} over registered entries only is what stops two officers entering
  the same worker at once: a unique multikey index holds one key per array element, unique
  across documents, so the second transaction hits a write conflict, retries, then a
  duplicate key on `member_ids`; withdrawing (status no longer "registered") drops the
  entry's keys and frees its workers. (Before this index, a separate `event_participants`
  collection held one slot document per worker: a third document per entry on the bulk
  path. A database created then keeps that collection unused; drop it at leisure.)
- `quota_counters`: one document per (event, union), `_id` "<event_id>|<union_id>", with the
  number of active entries; incremented with a guard `active <= quota - k` inside the
  transaction, so the quota holds under concurrency;
- `idempotency`: remembered responses of POSTs by (caller, Idempotency-Key).
Every write method takes the caller's transaction `session`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from bson.binary import Binary
from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from services.registration.domain import (
    Competition,
    Entry,
    EntryStatus,
    Event,
    Union,
    Worker,
)
from shared.events import CompetitionLevel, EventFormat, ScoringScheme, utc_now
from shared.mongo import Database, Doc, Session

COMPETITIONS = "competitions"
EVENTS = "events"
UNIONS = "unions"
WORKERS = "workers"
ENTRIES = "entries"
REGISTERED = EntryStatus.REGISTERED.value
ACTIVE_MEMBER_INDEX = "active_member_once_per_event"
QUOTA_COUNTERS = "quota_counters"
IDEMPOTENCY = "idempotency"
IDEMPOTENCY_RETENTION = timedelta(days=1)

INDEXES: dict[str, Sequence[IndexModel]] = {
    EVENTS: [IndexModel([("competition_id", ASCENDING)])],
    WORKERS: [
        IndexModel([("union_id", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("national_id_hash", ASCENDING)]),
    ],
    ENTRIES: [
        IndexModel([("event_id", ASCENDING), ("union_id", ASCENDING)]),
        IndexModel([("union_id", ASCENDING), ("event_id", ASCENDING)]),
        # A worker in at most one registered entry per event, enforced by the server.
        IndexModel(
            [("event_id", ASCENDING), ("member_ids", ASCENDING)],
            name=ACTIVE_MEMBER_INDEX,
            unique=True,
            partialFilterExpression={"status": REGISTERED},
        ),
    ],
    IDEMPOTENCY: [
        IndexModel(
            [("created_at", ASCENDING)],
            expireAfterSeconds=int(IDEMPOTENCY_RETENTION.total_seconds()),
        )
    ],
}


class WorkerTaken(Exception):
    """Raised when a worker (event, worker) is already in another registered entry."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.worker_id = worker_id


class QuotaExhausted(Exception):
    """Raised when the guarded quota increment finds the union's quota used up."""


class AlreadyExists(Exception):
    """Raised when a document with the same id exists (competition, event, union, worker)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def counter_id(event_id: str, union_id: str) -> str:
    return f"{event_id}|{union_id}"


# --- document mapping -----------------------------------------------------------------------


def competition_doc(competition: Competition) -> Doc:
    return {
        "_id": competition.competition_id,
        "name": competition.name,
        "year": competition.year,
        "level": competition.level.value,
        "opens_at": competition.opens_at,
        "closes_at": competition.closes_at,
    }


def competition_from(doc: Doc) -> Competition:
    return Competition(
        competition_id=doc["_id"],
        name=doc["name"],
        year=doc["year"],
        level=CompetitionLevel(doc["level"]),
        opens_at=doc["opens_at"],
        closes_at=doc["closes_at"],
    )


def event_doc(event: Event) -> Doc:
    return {
        "_id": event.event_id,
        "competition_id": event.competition_id,
        "name": event.name,
        "trade": event.trade,
        "format": event.format.value,
        "starts_at": event.starts_at,
        "quota_per_union": event.quota_per_union,
        "min_team_size": event.min_team_size,
        "max_team_size": event.max_team_size,
        "minimum_entrants": event.minimum_entrants,
        # Stored as JSON (decimals as strings), rebuilt leniently on the way out.
        "scheme": event.scheme.model_dump(mode="json"),
    }


def event_from(doc: Doc) -> Event:
    return Event(
        event_id=doc["_id"],
        competition_id=doc["competition_id"],
        name=doc["name"],
        trade=doc["trade"],
        format=EventFormat(doc["format"]),
        starts_at=doc["starts_at"],
        quota_per_union=doc["quota_per_union"],
        min_team_size=doc["min_team_size"],
        max_team_size=doc["max_team_size"],
        minimum_entrants=doc["minimum_entrants"],
        scheme=ScoringScheme.model_validate(doc["scheme"], strict=False),
    )


def worker_doc(worker: Worker) -> Doc:
    return {
        "_id": worker.worker_id,
        "union_id": worker.union_id,
        "name": worker.name,
        "employer": worker.employer,
        "job": worker.job,
        "front_line": worker.front_line,
        "national_id_hash": worker.national_id_hash,
        "national_id_masked": worker.national_id_masked,
    }


def worker_from_trusted(doc: Doc) -> Worker:
    """Rehydrate a stored worker without re-running its checks (they ran when it was
    enrolled): bulk import loads up to 100,000 at a time."""
    worker = object.__new__(Worker)
    for name, value in (
        ("worker_id", doc["_id"]),
        ("union_id", doc["union_id"]),
        ("name", doc["name"]),
        ("front_line", doc["front_line"]),
        ("national_id_hash", doc["national_id_hash"]),
        ("national_id_masked", doc["national_id_masked"]),
        ("employer", doc.get("employer", "")),
        ("job", doc.get("job", "")),
    ):
        object.__setattr__(worker, name, value)
    return worker


def worker_from(doc: Doc) -> Worker:
    return Worker(
        worker_id=doc["_id"],
        union_id=doc["union_id"],
        name=doc["name"],
        front_line=doc["front_line"],
        national_id_hash=doc["national_id_hash"],
        national_id_masked=doc["national_id_masked"],
        employer=doc.get("employer", ""),
        job=doc.get("job", ""),
    )


def entry_doc(entry: Entry) -> Doc:
    """The stored entry; empty optional fields are left out (`entry_from` defaults them),
    which keeps the 100,000-document bulk path lean."""
    doc: Doc = {
        "_id": entry.entry_id,
        "event_id": entry.event_id,
        "union_id": entry.union_id,
        "member_ids": list(entry.member_ids),
        "registered_at": entry.registered_at,
        "status": entry.status.value,
    }
    if entry.team_name:
        doc["team_name"] = entry.team_name
    if entry.withdrawn_at is not None:
        doc["withdrawn_at"] = entry.withdrawn_at
    if entry.withdrawal_reason:
        doc["withdrawal_reason"] = entry.withdrawal_reason
    return doc


def entry_from(doc: Doc) -> Entry:
    return Entry(
        entry_id=doc["_id"],
        event_id=doc["event_id"],
        union_id=doc["union_id"],
        team_name=doc.get("team_name", ""),
        member_ids=tuple(doc["member_ids"]),
        registered_at=doc["registered_at"],
        status=EntryStatus(doc["status"]),
        withdrawn_at=doc.get("withdrawn_at"),
        withdrawal_reason=doc.get("withdrawal_reason", ""),
    )


class RegistrationRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- competitions and events ------------------------------------------------------------

    async def insert_competition(self, competition: Competition, session: Session) -> None:
        try:
            await self.db[COMPETITIONS].insert_one(competition_doc(competition), session=session)
        except DuplicateKeyError:
            raise AlreadyExists(competition.competition_id) from None

    async def replace_competition(self, competition: Competition, session: Session) -> bool:
        result = await self.db[COMPETITIONS].replace_one(
            {"_id": competition.competition_id}, competition_doc(competition), session=session
        )
        return result.matched_count == 1

    async def competition(
        self, competition_id: str, session: Session | None = None
    ) -> Competition | None:
        doc = await self.db[COMPETITIONS].find_one({"_id": competition_id}, session=session)
        return competition_from(doc) if doc else None

    async def competitions(self, ids: Iterable[str]) -> dict[str, Competition]:
        docs = await self.db[COMPETITIONS].find({"_id": {"$in": list(ids)}}).to_list()
        return {doc["_id"]: competition_from(doc) for doc in docs}

    async def insert_event(self, event: Event, session: Session) -> None:
        try:
            await self.db[EVENTS].insert_one(event_doc(event), session=session)
        except DuplicateKeyError:
            raise AlreadyExists(event.event_id) from None

    async def replace_event(self, event: Event, session: Session) -> bool:
        result = await self.db[EVENTS].replace_one(
            {"_id": event.event_id}, event_doc(event), session=session
        )
        return result.matched_count == 1

    async def event(self, event_id: str, session: Session | None = None) -> Event | None:
        doc = await self.db[EVENTS].find_one({"_id": event_id}, session=session)
        return event_from(doc) if doc else None

    async def events(self, ids: Iterable[str]) -> dict[str, Event]:
        docs = await self.db[EVENTS].find({"_id": {"$in": list(ids)}}).to_list()
        return {doc["_id"]: event_from(doc) for doc in docs}

    async def events_of(self, competition_id: str, session: Session | None = None) -> list[Event]:
        docs = (
            await self.db[EVENTS]
            .find({"competition_id": competition_id}, session=session)
            .sort("_id", ASCENDING)
            .to_list()
        )
        return [event_from(doc) for doc in docs]

    # --- unions and workers -----------------------------------------------------------------

    async def insert_union(
        self, union: Union, officers: Sequence[Mapping[str, str]], session: Session
    ) -> None:
        try:
            await self.db[UNIONS].insert_one(
                {"_id": union.union_id, "name": union.name, "officers": list(officers)},
                session=session,
            )
        except DuplicateKeyError:
            raise AlreadyExists(union.union_id) from None

    async def union_doc(self, union_id: str, session: Session | None = None) -> Doc | None:
        return await self.db[UNIONS].find_one({"_id": union_id}, session=session)

    async def union(self, union_id: str, session: Session | None = None) -> Union | None:
        doc = await self.union_doc(union_id, session)
        return Union(union_id=doc["_id"], name=doc["name"]) if doc else None

    async def unions(self, ids: Iterable[str]) -> dict[str, Union]:
        docs = await self.db[UNIONS].find({"_id": {"$in": list(ids)}}).to_list()
        return {doc["_id"]: Union(union_id=doc["_id"], name=doc["name"]) for doc in docs}

    async def insert_workers(self, workers: Sequence[Worker], session: Session) -> None:
        try:
            await self.db[WORKERS].insert_many(
                [worker_doc(w) for w in workers], ordered=True, session=session
            )
        except Exception as error:  # DuplicateKeyError, or a BulkWriteError wrapping one
            key = _duplicate_key(error)
            if key is None:
                raise
            raise AlreadyExists(str(key.get("_id", ""))) from None

    async def workers(
        self, ids: Iterable[str], session: Session | None = None
    ) -> dict[str, Worker]:
        docs = await self.db[WORKERS].find({"_id": {"$in": list(ids)}}, session=session).to_list()
        return {doc["_id"]: worker_from_trusted(doc) for doc in docs}

    async def workers_of(self, union_id: str) -> list[Worker]:
        docs = await self.db[WORKERS].find({"union_id": union_id}).sort("_id").to_list()
        return [worker_from(doc) for doc in docs]

    # --- entries ----------------------------------------------------------------------------

    async def entry(self, entry_id: str, session: Session | None = None) -> Entry | None:
        doc = await self.db[ENTRIES].find_one({"_id": entry_id}, session=session)
        return entry_from(doc) if doc else None

    async def list_entries(
        self,
        *,
        event_id: str | None,
        union_ids: Sequence[str] | None,
        limit: int,
        after: str | None,
    ) -> list[Entry]:
        query: Doc = {}
        if event_id is not None:
            query["event_id"] = event_id
        if union_ids is not None:
            query["union_id"] = {"$in": list(union_ids)}
        if after is not None:
            query["_id"] = {"$gt": after}
        docs = await self.db[ENTRIES].find(query).sort("_id", ASCENDING).limit(limit).to_list()
        return [entry_from(doc) for doc in docs]

    async def active_count(self, event_id: str, union_id: str, session: Session) -> int:
        doc = await self.db[QUOTA_COUNTERS].find_one(
            {"_id": counter_id(event_id, union_id)}, session=session
        )
        return int(doc["active"]) if doc else 0

    async def entered_among(
        self, event_id: str, worker_ids: Iterable[str], session: Session
    ) -> set[str]:
        wanted = list(worker_ids)
        docs = (
            await self.db[ENTRIES]
            .find(
                {"event_id": event_id, "member_ids": {"$in": wanted}, "status": REGISTERED},
                {"member_ids": 1, "_id": 0},
                session=session,
            )
            .to_list()
        )
        return {w for doc in docs for w in doc["member_ids"]} & set(wanted)

    async def active_counts(self, event_ids: Iterable[str]) -> dict[tuple[str, str], int]:
        docs = await self.db[QUOTA_COUNTERS].find({"event_id": {"$in": list(event_ids)}}).to_list()
        return {(doc["event_id"], doc["union_id"]): int(doc["active"]) for doc in docs}

    async def entered_workers(self, event_ids: Iterable[str]) -> dict[str, set[str]]:
        entered: dict[str, set[str]] = {}
        cursor = self.db[ENTRIES].find(
            {"event_id": {"$in": list(event_ids)}, "status": REGISTERED},
            {"event_id": 1, "member_ids": 1, "_id": 0},
        )
        async for doc in cursor:
            entered.setdefault(doc["event_id"], set()).update(doc["member_ids"])
        return entered

    async def insert_entries(
        self, entries: Sequence[Entry], quotas: Mapping[str, int], session: Session
    ) -> None:
        """Store new registered entries and their quota use.

        `quotas`: event id → quota per union. Raises `AlreadyExists` (entry id taken),
        `WorkerTaken` (the unique index on registered members) or `QuotaExhausted` when a
        concurrent transaction won the race; the caller's transaction must then be abandoned.
        Unordered: inside a transaction any error aborts the whole write anyway, and the
        server may then apply the batch without stopping at each document.
        """
        if not entries:
            return
        try:
            await self.db[ENTRIES].insert_many(
                [entry_doc(e) for e in entries], ordered=False, session=session
            )
        except Exception as error:  # DuplicateKeyError, or a BulkWriteError wrapping one
            key = _duplicate_key(error)
            if key is None:
                raise
            raise _entry_conflict(key) from None
        await self.take_quota(entries, quotas, session)

    async def take_quota(
        self, entries: Sequence[Entry], quotas: Mapping[str, int], session: Session
    ) -> None:
        per_counter: dict[tuple[str, str], int] = {}
        for e in entries:
            pair = (e.event_id, e.union_id)
            per_counter[pair] = per_counter.get(pair, 0) + 1
        for (event_id, union_id), taken in per_counter.items():
            await self.use_quota(event_id, union_id, taken, quotas[event_id], session)

    async def use_quota(
        self, event_id: str, union_id: str, taken: int, quota: int, session: Session
    ) -> None:
        """Increment the (event, union) counter by `taken`, refusing to pass `quota`."""
        if taken > quota:
            raise QuotaExhausted
        try:
            await self.db[QUOTA_COUNTERS].find_one_and_update(
                {"_id": counter_id(event_id, union_id), "active": {"$lte": quota - taken}},
                {
                    "$inc": {"active": taken},
                    "$setOnInsert": {"event_id": event_id, "union_id": union_id},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        except DuplicateKeyError:
            # The counter exists but the guard failed: the upsert tried a second document.
            raise QuotaExhausted from None

    async def release_quota(self, entries: Sequence[Entry], session: Session) -> None:
        """Give back the quota of entries that stop being active (their workers are freed by
        the status change itself: the unique member index covers registered entries only)."""
        if not entries:
            return
        per_counter: dict[tuple[str, str], int] = {}
        for e in entries:
            key = (e.event_id, e.union_id)
            per_counter[key] = per_counter.get(key, 0) + 1
        await self.db[QUOTA_COUNTERS].bulk_write(
            [
                UpdateOne({"_id": counter_id(ev, un)}, {"$inc": {"active": -n}})
                for (ev, un), n in per_counter.items()
            ],
            session=session,
        )

    async def mark_withdrawn(self, entries: Sequence[Entry], session: Session) -> None:
        """Store the withdrawn state of entries (status, time, reason), freeing their workers
        and quota."""
        for entry in entries:
            await self.db[ENTRIES].update_one(
                {"_id": entry.entry_id, "status": EntryStatus.REGISTERED.value},
                {
                    "$set": {
                        "status": entry.status.value,
                        "withdrawn_at": entry.withdrawn_at,
                        "withdrawal_reason": entry.withdrawal_reason,
                    }
                },
                session=session,
            )
        await self.release_quota(entries, session)

    # --- idempotency ------------------------------------------------------------------------

    async def remembered(self, key: str) -> Doc | None:
        return await self.db[IDEMPOTENCY].find_one({"_id": key})

    async def claim_key(self, key: str, request_hash: str, session: Session) -> bool:
        """Reserve an idempotency key inside a write's transaction; False if it is taken."""
        try:
            await self.db[IDEMPOTENCY].insert_one(
                {"_id": key, "request_hash": request_hash, "status": None, "created_at": utc_now()},
                session=session,
            )
        except DuplicateKeyError:
            return False
        return True

    async def complete_key(self, key: str, status: int, body: Any, session: Session) -> None:
        await self.db[IDEMPOTENCY].update_one(
            {"_id": key},
            {"$set": {"status": status, "body": Binary(zlib.compress(orjson.dumps(body), 3))}},
            session=session,
        )

    async def remember(
        self,
        key: str,
        request_hash: str,
        status: int,
        body: Any,
        session: Session | None,
        *,
        at: datetime | None = None,
    ) -> bool:
        """Store a response under its key; False when the key was taken meanwhile."""
        try:
            await self.db[IDEMPOTENCY].insert_one(
                {
                    "_id": key,
                    "request_hash": request_hash,
                    "status": status,
                    # Compressed: an import report of 100,000 row errors stays far below 16 MB.
                    "body": Binary(zlib.compress(orjson.dumps(body), 3)),
                    "created_at": at or utc_now(),
                },
                session=session,
            )
        except DuplicateKeyError:
            return False
        return True


def remembered_body(doc: Doc) -> Any:
    return orjson.loads(zlib.decompress(bytes(doc["body"])))


def _duplicate_key(error: Exception) -> dict[str, Any] | None:
    """The key of a duplicate-key error, from a single insert or an `insert_many` (whose
    BulkWriteError lists its write errors); None for any other error."""
    details = getattr(error, "details", None)
    if isinstance(error, DuplicateKeyError):
        return (details or {}).get("keyValue") or {}
    if not isinstance(details, dict):
        return None
    for write_error in details.get("writeErrors", []):
        if write_error.get("code") == 11000:
            return write_error.get("keyValue") or {}
    return None


def _entry_conflict(key: Mapping[str, Any]) -> Exception:
    """The domain-facing error of an entry insert's duplicate key: a taken worker (the
    member index) or a taken entry id."""
    if "member_ids" in key:
        return WorkerTaken(str(key["member_ids"]))
    return AlreadyExists(str(key.get("_id", "")))
