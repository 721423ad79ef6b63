"""Use cases of the registration service: where I/O meets the pure rules.

Each write runs in ONE MongoDB transaction that stores the state change, appends its events
to the outbox and records the audit line, so nothing is stored without its event or the
reverse. Callers (the HTTP edge) may pass `finish`, work run first and last inside the same
transaction (the idempotency record of the response).

The rules the database itself enforces under concurrency (repository.py): a worker holds at
most one active participant slot per event (unique `_id`), and a union's quota counter is
incremented with a guard. Losing such a race surfaces as the same domain error the in-memory
check would have raised (`worker_already_entered`, `quota_full`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import orjson

from services.registration.bulk import (
    EntryRow,
    ImportMode,
    RegistrationSnapshot,
    RowError,
    parse_entries_file,
    validate_rows,
)
from services.registration.domain import (
    Competition,
    Entry,
    EntryFacts,
    EntryStatus,
    Event,
    QuotaFull,
    RegistrationError,
    Union,
    Worker,
    WorkerAlreadyEntered,
    entry_registered_payload,
    entry_withdrawn_payload,
    event_published_payload,
    register_entry,
    withdraw_entry,
)
from services.registration.repository import (
    AlreadyExists,
    QuotaExhausted,
    RegistrationRepository,
    WorkerTaken,
)
from shared import topics
from shared.auth import Principal, Role
from shared.errors import Conflict, DomainError, Forbidden, NotFound
from shared.events import (
    SCHEMA_VERSION,
    EntryRegistered,
    EntryWithdrawn,
    Envelope,
    EventPublished,
    new_event,
    utc_now,
)
from shared.http import audit
from shared.logging import get_logger
from shared.mongo import Session
from shared.outbox import SerializedEvent
from shared.runtime import ServiceRuntime

PRODUCER = "registration"
IMPORT_CHUNK_ROWS = 10_000
IMPORT_RACE_ATTEMPTS = 3
T = TypeVar("T")


class Finish(Protocol):
    """Work a caller adds to a use case's transaction: `claim` runs first, `complete` last
    (with the result). The HTTP edge uses it for the idempotency record of the response."""

    async def claim(self, session: Session) -> None: ...

    async def complete(self, session: Session, result: Any) -> None: ...


log = get_logger(__name__)


class UnknownUnion(NotFound):
    def __init__(self, union_id: str) -> None:
        super().__init__("unknown_union", f"no union with id {union_id!r}", field="union_id")


class UnknownWorker(NotFound):
    def __init__(self, worker_id: str) -> None:
        super().__init__(
            "unknown_worker", f"worker {worker_id!r} is not on any union's roster", "worker_ids"
        )


class UnknownEntry(NotFound):
    def __init__(self, entry_id: str) -> None:
        super().__init__("unknown_entry", f"no entry with id {entry_id!r}", field="entry_id")


class UnknownCompetition(NotFound):
    def __init__(self, competition_id: str) -> None:
        super().__init__(
            "unknown_competition", f"no competition with id {competition_id!r}", "competition_id"
        )


@dataclass(frozen=True, slots=True)
class WorkerInput:
    worker_id: str
    name: str
    front_line: bool
    national_id: str
    employer: str = ""
    job: str = ""


@dataclass(slots=True)
class ImportOutcome:
    mode: ImportMode
    rows: int
    accepted: int
    errors: list[RowError]
    entry_ids: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len({error.row for error in self.errors})


@dataclass(frozen=True, slots=True)
class CompetitionView:
    competition: Competition
    events: list[Event]


class _ChunkLost(Exception):
    """A bulk chunk lost a race to a concurrent registration; re-plan from `index`."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def is_admin(principal: Principal) -> bool:
    return principal.role is Role.ADMIN


def require_union(principal: Principal, union_id: str) -> None:
    """Admins act on every union; others only within their `union:<id>` scope."""
    if not is_admin(principal):
        principal.require_scope("union", union_id)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Building 100,000 small acyclic objects: skipping cyclic collections loses nothing.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class RegistrationService:
    def __init__(self, runtime: ServiceRuntime, repo: RegistrationRepository) -> None:
        self.runtime = runtime
        self.repo = repo

    @property
    def pepper(self) -> str:
        return self.runtime.settings.national_id_pepper

    async def _transact(self, work: Callable[[Session], Awaitable[T]], finish: Finish | None) -> T:
        async def unit(session: Session) -> T:
            if finish is not None:
                await finish.claim(session)
            result = await work(session)
            if finish is not None:
                await finish.complete(session, result)
            return result

        return await self.runtime.transact(unit)

    def _envelope(self, cls: Any, payload: Any, correlation_id: str) -> Envelope[Any]:
        return new_event(cls, payload, producer=PRODUCER, correlation_id=correlation_id)

    # --- competitions and events ------------------------------------------------------------

    async def create_competition(
        self,
        principal: Principal,
        competition: Competition,
        *,
        correlation_id: str,
        finish: Finish | None = None,
    ) -> CompetitionView:
        async def work(session: Session) -> CompetitionView:
            try:
                await self.repo.insert_competition(competition, session)
            except AlreadyExists:
                raise Conflict(
                    "competition_exists",
                    f"competition {competition.competition_id!r} exists; use PUT to edit it",
                    "competition_id",
                ) from None
            await audit(
                self.runtime,
                session,
                principal,
                "competition.create",
                competition.competition_id,
                {"name": competition.name, "year": competition.year},
            )
            return CompetitionView(competition, [])

        return await self._transact(work, finish)

    async def edit_competition(
        self, principal: Principal, competition: Competition, *, correlation_id: str
    ) -> CompetitionView:
        """Replace a competition; its events are re-published (the window is in them)."""

        async def work(session: Session) -> CompetitionView:
            if not await self.repo.replace_competition(competition, session):
                raise UnknownCompetition(competition.competition_id)
            events = await self.repo.events_of(competition.competition_id, session)
            await self.runtime.outbox.add_many(
                session,
                [
                    (
                        topics.REGISTRATION_ENTRIES,
                        event.event_id,
                        self._envelope(
                            EventPublished,
                            event_published_payload(competition, event),
                            correlation_id,
                        ),
                    )
                    for event in events
                ],
            )
            await audit(
                self.runtime,
                session,
                principal,
                "competition.edit",
                competition.competition_id,
                {"name": competition.name, "republished_events": len(events)},
            )
            return CompetitionView(competition, events)

        return await self.runtime.transact(work)

    async def view_competition(self, competition_id: str) -> CompetitionView:
        competition = await self.repo.competition(competition_id)
        if competition is None:
            raise UnknownCompetition(competition_id)
        return CompetitionView(competition, await self.repo.events_of(competition_id))

    async def publish_event(
        self,
        principal: Principal,
        event: Event,
        *,
        create: bool,
        correlation_id: str,
        finish: Finish | None = None,
    ) -> Event:
        """Create (`create=True`) or edit an event and emit `EventPublished` with it."""

        async def work(session: Session) -> Event:
            competition = await self.repo.competition(event.competition_id, session)
            if competition is None:
                raise UnknownCompetition(event.competition_id)
            if create:
                try:
                    await self.repo.insert_event(event, session)
                except AlreadyExists:
                    raise Conflict(
                        "event_exists",
                        f"event {event.event_id!r} exists; use PUT to edit it",
                        "event_id",
                    ) from None
            else:
                existing = await self.repo.event(event.event_id, session)
                if existing is None or existing.competition_id != event.competition_id:
                    raise NotFound(
                        "unknown_event",
                        f"no event {event.event_id!r} in competition {event.competition_id!r}",
                        "event_id",
                    )
                await self.repo.replace_event(event, session)
            await self.runtime.outbox.add(
                session,
                topics.REGISTRATION_ENTRIES,
                event.event_id,
                self._envelope(
                    EventPublished, event_published_payload(competition, event), correlation_id
                ),
            )
            await audit(
                self.runtime,
                session,
                principal,
                "event.create" if create else "event.edit",
                event.event_id,
                {"competition_id": event.competition_id, "quota_per_union": event.quota_per_union},
            )
            return event

        return await self._transact(work, finish)

    # --- unions and workers -----------------------------------------------------------------

    async def create_union(
        self,
        principal: Principal,
        union: Union,
        officers: Sequence[Mapping[str, str]],
        *,
        finish: Finish | None = None,
    ) -> Union:
        async def work(session: Session) -> Union:
            try:
                await self.repo.insert_union(union, officers, session)
            except AlreadyExists:
                raise Conflict(
                    "union_exists", f"union {union.union_id!r} exists", "union_id"
                ) from None
            await audit(
                self.runtime,
                session,
                principal,
                "union.create",
                union.union_id,
                {"name": union.name, "officers": len(officers)},
            )
            return union

        return await self._transact(work, finish)

    def enrol_workers(self, union_id: str, inputs: Sequence[WorkerInput]) -> list[Worker]:
        """Validate a batch of workers; the raw national ids go no further than here."""
        workers: list[Worker] = []
        seen: set[str] = set()
        for index, item in enumerate(inputs):
            if item.worker_id in seen:
                raise DomainError(
                    "duplicate_worker",
                    f"worker {item.worker_id!r} appears twice in the batch",
                    f"workers.{index}.worker_id",
                )
            seen.add(item.worker_id)
            try:
                workers.append(
                    Worker.enrol(
                        worker_id=item.worker_id,
                        union_id=union_id,
                        name=item.name,
                        national_id=item.national_id,
                        pepper=self.pepper,
                        front_line=item.front_line,
                        employer=item.employer,
                        job=item.job,
                    )
                )
            except RegistrationError as error:
                raise DomainError(
                    error.rule, error.reason, f"workers.{index}.{error.field}"
                ) from None
        return workers

    async def add_workers(
        self,
        principal: Principal,
        union_id: str,
        inputs: Sequence[WorkerInput],
        *,
        finish: Finish | None = None,
    ) -> int:
        require_union(principal, union_id)
        if await self.repo.union(union_id) is None:
            raise UnknownUnion(union_id)
        workers = await asyncio.to_thread(self.enrol_workers, union_id, inputs)

        async def work(session: Session) -> int:
            try:
                await self.repo.insert_workers(workers, session)
            except AlreadyExists as error:
                raise Conflict(
                    "worker_exists", f"worker {error.key!r} is already on a roster", "worker_id"
                ) from None
            await audit(
                self.runtime,
                session,
                principal,
                "workers.add",
                union_id,
                {"count": len(workers), "worker_ids": [w.worker_id for w in workers[:50]]},
            )
            return len(workers)

        return await self._transact(work, finish)

    async def list_workers(self, principal: Principal, union_id: str) -> list[Worker]:
        require_union(principal, union_id)
        if await self.repo.union(union_id) is None:
            raise UnknownUnion(union_id)
        return await self.repo.workers_of(union_id)

    # --- entries ----------------------------------------------------------------------------

    async def register(
        self,
        principal: Principal,
        *,
        event_id: str,
        union_id: str,
        worker_ids: Sequence[str],
        team_name: str = "",
        entry_id: str | None = None,
        correlation_id: str,
        finish: Finish | None = None,
    ) -> Entry:
        require_union(principal, union_id)
        event = await self.repo.event(event_id)
        if event is None:
            raise NotFound("unknown_event", f"no event with id {event_id!r}", "event_id")
        competition = await self.repo.competition(event.competition_id)
        if competition is None:
            raise UnknownCompetition(event.competition_id)
        union = await self.repo.union(union_id)
        if union is None:
            raise UnknownUnion(union_id)
        workers = await self.repo.workers(worker_ids)
        for worker_id in worker_ids:
            if worker_id not in workers:
                raise UnknownWorker(worker_id)
        members = [workers[worker_id] for worker_id in worker_ids]
        now = utc_now()

        async def work(session: Session) -> Entry:
            facts = EntryFacts(
                union_active_entries=await self.repo.active_count(event_id, union_id, session),
                entered_worker_ids=await self.repo.entered_among(event_id, worker_ids, session),
            )
            entry = register_entry(
                event, competition, union_id, members, team_name, facts, now, entry_id=entry_id
            )
            await self._store_new_entries([entry], {event_id: event.quota_per_union}, session)
            payload = entry_registered_payload(entry, competition, event, union, workers)
            await self.runtime.outbox.add(
                session,
                topics.REGISTRATION_ENTRIES,
                event_id,
                self._envelope(EntryRegistered, payload, correlation_id),
            )
            await audit(
                self.runtime,
                session,
                principal,
                "entry.register",
                entry.entry_id,
                {"event_id": event_id, "union_id": union_id, "worker_ids": list(entry.member_ids)},
            )
            return entry

        return await self._transact(work, finish)

    async def _store_new_entries(
        self, entries: Sequence[Entry], quotas: Mapping[str, int], session: Session
    ) -> None:
        try:
            await self.repo.insert_entries(entries, quotas, session)
        except WorkerTaken as error:
            raise WorkerAlreadyEntered(error.worker_id, entries[0].event_id) from None
        except QuotaExhausted:
            raise QuotaFull(
                f"union {entries[0].union_id!r} has used its quota in event {entries[0].event_id!r}"
            ) from None
        except AlreadyExists as error:
            raise Conflict(
                "entry_exists", f"an entry with id {error.key!r} exists", "entry_id"
            ) from None

    async def entry(self, principal: Principal, entry_id: str) -> Entry:
        entry = await self.repo.entry(entry_id)
        if entry is None:
            raise UnknownEntry(entry_id)
        if principal.role is Role.UNION_OFFICER:
            principal.require_scope("union", entry.union_id)
        return entry

    async def list_entries(
        self,
        principal: Principal,
        *,
        event_id: str | None,
        union_id: str | None,
        limit: int,
        after: str | None,
    ) -> list[Entry]:
        union_ids: list[str] | None = [union_id] if union_id else None
        if principal.role is Role.UNION_OFFICER and "*" not in principal.scopes:
            own = principal.scoped_values("union")
            if union_id is not None:
                principal.require_scope("union", union_id)
            else:
                union_ids = sorted(own)
        return await self.repo.list_entries(
            event_id=event_id, union_ids=union_ids, limit=limit, after=after
        )

    async def withdraw(
        self,
        principal: Principal,
        entry_id: str,
        reason: str,
        *,
        correlation_id: str,
        finish: Finish | None = None,
    ) -> Entry:
        found = await self.repo.entry(entry_id)
        if found is None:
            raise UnknownEntry(entry_id)
        if not is_admin(principal) and not principal.has_scope("union", found.union_id):
            raise Forbidden(
                "not_entry_owner",
                f"entry {entry_id!r} belongs to another union; you may not withdraw it",
                "union_id",
            )
        event = await self.repo.event(found.event_id)
        if event is None:
            raise NotFound("unknown_event", f"no event {found.event_id!r}", "event_id")
        now = utc_now()

        async def work(session: Session) -> Entry:
            current = await self.repo.entry(entry_id, session)
            if current is None:
                raise UnknownEntry(entry_id)
            withdrawn = withdraw_entry(current, event, current.union_id, now, reason)
            await self.repo.mark_withdrawn([withdrawn], session)
            await self.runtime.outbox.add(
                session,
                topics.REGISTRATION_ENTRIES,
                withdrawn.event_id,
                self._envelope(EntryWithdrawn, entry_withdrawn_payload(withdrawn), correlation_id),
            )
            await audit(
                self.runtime,
                session,
                principal,
                "entry.withdraw",
                entry_id,
                {"event_id": withdrawn.event_id, "reason": withdrawn.withdrawal_reason},
            )
            return withdrawn

        return await self._transact(work, finish)

    # --- bulk import ------------------------------------------------------------------------

    def acting_union(self, principal: Principal) -> str | None:
        """The union an import is restricted to: None for admins and `*`, else the one scope."""
        if is_admin(principal) or "*" in principal.scopes:
            return None
        unions = principal.scoped_values("union")
        if len(unions) != 1:
            raise Forbidden(
                "ambiguous_union_scope",
                "an officer's token must name exactly one union (scope union:<id>) to import",
                "scope",
            )
        return next(iter(unions))

    async def snapshot(self, rows: Sequence[EntryRow]) -> RegistrationSnapshot:
        event_ids = {row.event_id for row in rows}
        worker_ids = {worker_id for row in rows for worker_id in row.worker_ids}
        events = await self.repo.events(event_ids)
        competitions = await self.repo.competitions({e.competition_id for e in events.values()})
        unions = await self.repo.unions({row.union_id for row in rows})
        with _gc_paused():
            workers = await self.repo.workers(worker_ids)
        return RegistrationSnapshot(
            competitions=competitions,
            events=events,
            union_ids=set(unions),
            workers=workers,
            active_entries=await self.repo.active_counts(events),
            entered_workers=await self.repo.entered_workers(events),
        )

    async def import_entries(
        self,
        principal: Principal,
        data: bytes,
        *,
        file_format: str,
        mode: ImportMode,
        correlation_id: str,
        chunk_rows: int = IMPORT_CHUNK_ROWS,
    ) -> ImportOutcome:
        """Register the rows of a CSV/JSON file; see bulk.py for the file conventions.

        Rows are validated in memory against one snapshot, then written in chunks of
        `chunk_rows`, ONE transaction per chunk (entries, participant slots, quota counters,
        outbox events, audit). A chunk that loses a race to a concurrent registration is
        abandoned and the rows from it onwards are validated again against fresh facts. In
        ALL_OR_NOTHING mode, an error found that late withdraws the chunks already written
        (with `EntryWithdrawn` events), so the file leaves no entry behind.
        """
        acting = self.acting_union(principal)
        max_bytes = self.runtime.settings.max_import_bytes
        report = await asyncio.to_thread(parse_entries_file, data, file_format, max_bytes=max_bytes)
        errors: list[RowError] = list(report.errors)
        rows_total = len(report.rows) + len({e.row for e in report.errors})
        written: list[Entry] = []
        pending: Sequence[EntryRow] = report.rows
        now = utc_now()
        import_id = uuid.uuid4().hex
        for attempt in range(1, IMPORT_RACE_ATTEMPTS + 1):
            snapshot = await self.snapshot(pending)
            plan = await asyncio.to_thread(
                validate_rows, pending, snapshot, now=now, mode=mode, acting_union_id=acting
            )
            if mode is ImportMode.ALL_OR_NOTHING and (errors or plan.errors):
                errors.extend(plan.errors)
                await self._roll_back_import(principal, written, correlation_id, import_id)
                written = []
                break
            try:
                await self._write_import(
                    principal, plan.valid, snapshot, correlation_id, import_id, chunk_rows, written
                )
                errors.extend(plan.errors)
                break
            except _ChunkLost as lost:
                log.info("bulk import chunk lost a race; re-planning", reason=lost.reason)
                errors.extend(plan.errors)
                by_number = {row.row_number: row for row in pending}
                pending = [by_number[n] for n in plan.valid_row_numbers[lost.index :]]
                if attempt == IMPORT_RACE_ATTEMPTS:
                    errors.extend(
                        RowError(row.row_number, "row", lost.reason, "concurrent_change")
                        for row in pending
                    )
                    if mode is ImportMode.ALL_OR_NOTHING:
                        await self._roll_back_import(principal, written, correlation_id, import_id)
                        written = []
        errors.sort(key=lambda error: error.row)
        outcome = ImportOutcome(
            mode, rows_total, len(written), errors, [e.entry_id for e in written]
        )
        await audit(
            self.runtime,
            None,
            principal,
            "entry.import",
            import_id,
            {
                "mode": mode.value,
                "format": file_format,
                "rows": rows_total,
                "accepted": outcome.accepted,
                "rejected": outcome.rejected,
            },
        )
        return outcome

    async def _write_import(
        self,
        principal: Principal,
        entries: Sequence[Entry],
        snapshot: RegistrationSnapshot,
        correlation_id: str,
        import_id: str,
        chunk_rows: int,
        written: list[Entry],
    ) -> None:
        quotas = {event_id: event.quota_per_union for event_id, event in snapshot.events.items()}
        unions = await self.repo.unions({entry.union_id for entry in entries})
        outgoing = EntryEventFactory(snapshot, unions, correlation_id)
        starts = range(0, len(entries), chunk_rows)
        # Serialising the next chunk's events (CPU) overlaps the current chunk's transaction.
        next_items = (
            asyncio.ensure_future(asyncio.to_thread(outgoing.build, entries[:chunk_rows]))
            if entries
            else None
        )
        for start in starts:
            chunk = entries[start : start + chunk_rows]
            assert next_items is not None
            items = await next_items
            following = entries[start + chunk_rows : start + 2 * chunk_rows]
            next_items = (
                asyncio.ensure_future(asyncio.to_thread(outgoing.build, following))
                if following
                else None
            )

            async def work(
                session: Session,
                chunk: Sequence[Entry] = chunk,
                items: list[SerializedEvent] = items,
            ) -> None:
                await self._store_new_entries(chunk, quotas, session)
                await self.runtime.outbox.add_packed(session, items)
                await audit(
                    self.runtime,
                    session,
                    principal,
                    "entry.import.chunk",
                    import_id,
                    {"entries": len(chunk), "first_entry_id": chunk[0].entry_id},
                )

            try:
                await self.runtime.transact(work)
            except (WorkerAlreadyEntered, QuotaFull, Conflict) as error:
                if next_items is not None:
                    next_items.cancel()
                raise _ChunkLost(start, error.reason) from None
            written.extend(chunk)

    async def _roll_back_import(
        self,
        principal: Principal,
        written: Sequence[Entry],
        correlation_id: str,
        import_id: str,
    ) -> None:
        """Withdraw what an all-or-nothing import already committed (events included)."""
        now = utc_now()
        for start in range(0, len(written), IMPORT_CHUNK_ROWS):
            chunk = [
                replace(
                    entry,
                    status=EntryStatus.WITHDRAWN,
                    withdrawn_at=now,
                    withdrawal_reason="all-or-nothing import rolled back",
                )
                for entry in written[start : start + IMPORT_CHUNK_ROWS]
            ]
            items = [
                (
                    topics.REGISTRATION_ENTRIES,
                    entry.event_id,
                    self._envelope(EntryWithdrawn, entry_withdrawn_payload(entry), correlation_id),
                )
                for entry in chunk
            ]

            async def work(
                session: Session,
                chunk: list[Entry] = chunk,
                items: list[tuple[str, str, Envelope[Any]]] = items,
            ) -> None:
                await self.repo.mark_withdrawn(chunk, session)
                await self.runtime.outbox.add_many(session, items)
                await audit(
                    self.runtime,
                    session,
                    principal,
                    "entry.import.rollback",
                    import_id,
                    {"entries": len(chunk)},
                )

            await self.runtime.transact(work)


def uuid4_strings(count: int) -> list[str]:
    """`count` random (version 4) UUIDs in canonical text: one `os.urandom` call for all,
    about a third of the cost of `str(uuid.uuid4())` each."""
    digits = os.urandom(16 * count).hex()
    variant = "89ab"
    return [
        f"{digits[i : i + 8]}-{digits[i + 8 : i + 12]}-4{digits[i + 13 : i + 16]}-"
        f"{variant[int(digits[i + 16], 16) & 3]}{digits[i + 17 : i + 20]}-{digits[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class EntryEventFactory:
    """Serialises `EntryRegistered` envelopes for many entries straight to JSON text.

    Every part shared by many entries (the envelope head, competition and event refs, the
    union, each worker's member record, the registration time) is rendered once, through the
    pydantic contracts where there is one, into a JSON fragment; each entry then costs one
    string join of fragments plus the JSON escaping of its own entry id and team name.
    tests/registration and tests/unit check that the result decodes, strictly, to the same
    event the contract models would build.
    """

    def __init__(
        self,
        snapshot: RegistrationSnapshot,
        unions: Mapping[str, Union],
        correlation_id: str,
    ) -> None:
        self.snapshot = snapshot
        self.unions = unions
        self.correlation_id = correlation_id
        self._refs: dict[str, str] = {}
        self._union_parts: dict[str, str] = {}
        self._members: dict[str, str] = {}
        self._times: dict[Any, str] = {}

    def _event_refs(self, event_id: str) -> str:
        refs = self._refs.get(event_id)
        if refs is None:
            event = self.snapshot.events[event_id]
            competition = self.snapshot.competitions[event.competition_id]
            refs = (
                f'"competition":{competition.ref().model_dump_json()},'
                f'"event":{event.ref().model_dump_json()},'
            )
            self._refs[event_id] = refs
        return refs

    def _union(self, union_id: str) -> str:
        part = self._union_parts.get(union_id)
        if part is None:
            name = self.unions[union_id].name
            part = f'"union_id":{_json(union_id)},"union_name":{_json(name)},'
            self._union_parts[union_id] = part
        return part

    def _member(self, worker_id: str) -> str:
        member = self._members.get(worker_id)
        if member is None:
            member = self.snapshot.workers[worker_id].as_member().model_dump_json()
            self._members[worker_id] = member
        return member

    def _time(self, moment: Any) -> str:
        text = self._times.get(moment)
        if text is None:
            text = _json(moment.isoformat())
            self._times[moment] = text
        return text

    def build(self, entries: Sequence[Entry]) -> list[SerializedEvent]:
        correlation_id = self.correlation_id
        head = (
            '","event_type":"EntryRegistered",'
            f'"schema_version":{SCHEMA_VERSION},'
            f'"occurred_at":{_json(utc_now().isoformat())},'
            f'"producer":{_json(PRODUCER)},'
            f'"correlation_id":{_json(correlation_id)},'
            '"causation_id":null,"payload":{"entry_id":'
        )
        topic = topics.REGISTRATION_ENTRIES
        dumps = orjson.dumps
        event_refs, union, member, moment = self._event_refs, self._union, self._member, self._time
        items: list[SerializedEvent] = []
        append = items.append
        with _gc_paused():
            for event_id, entry in zip(uuid4_strings(len(entries)), entries, strict=True):
                members = entry.member_ids
                value = "".join(
                    (
                        '{"event_id":"',
                        event_id,
                        head,
                        dumps(entry.entry_id).decode(),
                        ",",
                        event_refs(entry.event_id),
                        union(entry.union_id),
                        '"team_name":',
                        dumps(entry.team_name).decode() if entry.team_name else '""',
                        ',"members":[',
                        member(members[0]) if len(members) == 1 else ",".join(map(member, members)),
                        '],"registered_at":',
                        moment(entry.registered_at),
                        "}}",
                    )
                )
                append(
                    SerializedEvent(
                        topic, entry.event_id, event_id, "EntryRegistered", correlation_id, value
                    )
                )
        return items
