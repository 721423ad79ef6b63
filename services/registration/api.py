"""HTTP edge of the registration service (see docs/http-api.md, "registration").

Thin: authenticate, parse, call a use case (handlers.py), shape the answer.

Status codes of broken rules: 404 unknown_event / unknown_union / unknown_worker /
unknown_entry / unknown_competition; 403 role_not_allowed / out_of_scope / not_entry_owner;
409 window_closed / event_started / quota_full / worker_already_entered /
entry_not_registered / *_exists / idempotency_key_reused (state-dependent refusals: the same
request may succeed at another time); 422 everything else (invalid_input, team_size,
team_name, duplicate_member, worker_not_of_union, invalid_national_id, unsafe_text, ...).

Idempotency: every POST accepts `Idempotency-Key`. The first successful response is stored
with a hash of (method, path, query, body) — in the same transaction as the write, so a
crash cannot separate them — and replayed for the same key and body; another body under the
same key gets 409 `idempotency_key_reused`. Refusals (4xx) are not remembered: retrying a
refused request re-evaluates it. Keys are per caller (token subject and role).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.registration.bulk import ImportMode
from services.registration.domain import (
    Competition,
    Entry,
    Event,
    InvalidDefinition,
    Union,
    Worker,
)
from services.registration.handlers import (
    CompetitionView,
    Finish,
    ImportOutcome,
    RegistrationService,
    WorkerInput,
)
from services.registration.repository import remembered_body
from shared.auth import Principal, Role, require
from shared.errors import Conflict
from shared.events import CompetitionLevel, EventFormat, PlainText, ScoringScheme
from shared.http import correlation_id_of
from shared.mongo import Session

IdText = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
NameText = Annotated[PlainText, Field(min_length=1, max_length=200)]
OptionalText = Annotated[PlainText, Field(max_length=200)]
IMPORT_PATH = "/entries/import"
# Same bound as every other batch endpoint (settings.max_batch_items); larger rosters go
# through several calls or the bulk import.
MAX_WORKERS_PER_CALL = 5_000

ADMIN = require(Role.ADMIN)
OFFICER_OR_ADMIN = require(Role.UNION_OFFICER, Role.ADMIN)
READERS = require(Role.UNION_OFFICER, Role.ADMIN, Role.LEADER)
ANYONE = require(*Role)


# --- request models -------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompetitionFields(Strict):
    name: NameText
    year: Annotated[int, Field(ge=2000, le=2100)]
    level: CompetitionLevel
    registration_opens_at: datetime
    registration_closes_at: datetime


class CompetitionIn(CompetitionFields):
    competition_id: IdText


class ComponentIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]
    weight: Annotated[Decimal, Field(gt=0, le=1)]
    pass_mark: Annotated[Decimal, Field(ge=0, le=100)] = Decimal("60")
    panel: bool = True


class SchemeIn(Strict):
    components: list[ComponentIn] | None = None
    divergence_tolerance: Annotated[Decimal, Field(ge=0, le=100)] = Decimal("20")
    team_marked_as_unit: bool = False


class EventFields(Strict):
    name: NameText
    trade: NameText
    format: EventFormat
    team_min_size: Annotated[int, Field(ge=1, le=50)] | None = None
    team_max_size: Annotated[int, Field(ge=1, le=50)] | None = None
    scheme: SchemeIn | None = Field(
        default=None, description="scoring scheme; default theory 30 % + practical 70 %, pass 60"
    )
    quota_per_union: Annotated[int, Field(ge=1)]
    minimum_entrants: Annotated[int, Field(ge=0)] = 0
    starts_at: datetime


class EventIn(EventFields):
    event_id: IdText


class OfficerIn(Strict):
    officer_id: IdText
    name: NameText


class UnionIn(Strict):
    union_id: IdText
    name: NameText
    officers: list[OfficerIn] = Field(default_factory=list, max_length=100)


class WorkerIn(Strict):
    worker_id: IdText
    name: NameText
    employer: OptionalText = ""
    job: OptionalText = ""
    front_line: bool
    national_id: Annotated[str, Field(min_length=1, max_length=32)]


class WorkersIn(Strict):
    workers: Annotated[list[WorkerIn], Field(min_length=1, max_length=MAX_WORKERS_PER_CALL)]


class EntryIn(Strict):
    event_id: IdText
    union_id: IdText
    team_name: OptionalText = ""
    worker_ids: Annotated[list[IdText], Field(min_length=1, max_length=50)]
    entry_id: IdText | None = None


class WithdrawIn(Strict):
    reason: Annotated[PlainText, Field(max_length=500)] = ""


# --- response models ------------------------------------------------------------------------


class EventOut(BaseModel):
    event_id: str
    competition_id: str
    name: str
    trade: str
    format: EventFormat
    team_min_size: int
    team_max_size: int
    quota_per_union: int
    minimum_entrants: int
    starts_at: datetime
    scheme: dict[str, Any]

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls(
            event_id=event.event_id,
            competition_id=event.competition_id,
            name=event.name,
            trade=event.trade,
            format=event.format,
            team_min_size=event.min_team_size,
            team_max_size=event.max_team_size,
            quota_per_union=event.quota_per_union,
            minimum_entrants=event.minimum_entrants,
            starts_at=event.starts_at,
            scheme=event.scheme.model_dump(mode="json"),
        )


class CompetitionOut(BaseModel):
    competition_id: str
    name: str
    year: int
    level: CompetitionLevel
    registration_opens_at: datetime
    registration_closes_at: datetime
    events: list[EventOut]

    @classmethod
    def of(cls, view: CompetitionView) -> CompetitionOut:
        c = view.competition
        return cls(
            competition_id=c.competition_id,
            name=c.name,
            year=c.year,
            level=c.level,
            registration_opens_at=c.opens_at,
            registration_closes_at=c.closes_at,
            events=[EventOut.of(e) for e in view.events],
        )


class UnionOut(BaseModel):
    union_id: str
    name: str
    officers: list[OfficerIn] = []


class WorkersCreated(BaseModel):
    created: int


class WorkerOut(BaseModel):
    worker_id: str
    union_id: str
    name: str
    employer: str
    job: str
    front_line: bool
    national_id_masked: str = Field(description="first 3 and last 4 characters; never the id")

    @classmethod
    def of(cls, worker: Worker) -> WorkerOut:
        return cls(
            worker_id=worker.worker_id,
            union_id=worker.union_id,
            name=worker.name,
            employer=worker.employer,
            job=worker.job,
            front_line=worker.front_line,
            national_id_masked=worker.national_id_masked,
        )


class EntryOut(BaseModel):
    entry_id: str
    event_id: str
    union_id: str
    team_name: str
    worker_ids: list[str]
    status: Literal["registered", "withdrawn"]
    registered_at: datetime
    withdrawn_at: datetime | None = None
    withdrawal_reason: str = ""

    @classmethod
    def of(cls, entry: Entry) -> EntryOut:
        return cls(
            entry_id=entry.entry_id,
            event_id=entry.event_id,
            union_id=entry.union_id,
            team_name=entry.team_name,
            worker_ids=list(entry.member_ids),
            status=entry.status.value,
            registered_at=entry.registered_at,
            withdrawn_at=entry.withdrawn_at,
            withdrawal_reason=entry.withdrawal_reason,
        )


class RowErrorOut(BaseModel):
    row: int = Field(description="spreadsheet row (header = 1) or JSON item (from 1); 0 = file")
    field: str
    rule: str
    reason: str


class ImportReport(BaseModel):
    mode: ImportMode
    rows: int
    accepted: int
    rejected: int
    errors: list[RowErrorOut]

    @classmethod
    def of(cls, outcome: ImportOutcome) -> ImportReport:
        return cls(
            mode=outcome.mode,
            rows=outcome.rows,
            accepted=outcome.accepted,
            rejected=outcome.rejected,
            errors=[
                RowErrorOut(row=e.row, field=e.field, rule=e.rule, reason=e.reason)
                for e in outcome.errors
            ],
        )


class ErrorOut(BaseModel):
    rule: str
    field: str | None
    reason: str


class ErrorBody(BaseModel):
    error: ErrorOut


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 422)
}


# --- idempotency ----------------------------------------------------------------------------


class _Replay(Exception):
    """The key was stored by a concurrent request with the same key; answer with its record."""


class Idempotency:
    """Replays or refuses a POST seen before; otherwise remembers its response in the write's
    transaction (`finisher`)."""

    def __init__(self, service: RegistrationService, principal: Principal, key: str | None):
        self.service = service
        self.key = f"{principal.role.value}:{principal.subject}:{key}" if key else None
        self.request_hash = ""

    async def prior(self, request: Request) -> JSONResponse | None:
        if self.key is None:
            return None
        body = await request.body()
        digest = hashlib.sha256()
        for part in (request.method, request.url.path, request.url.query):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(body)
        self.request_hash = digest.hexdigest()
        return await self._stored()

    async def _stored(self) -> JSONResponse | None:
        assert self.key is not None
        doc = await self.service.repo.remembered(self.key)
        if doc is None or doc.get("status") is None:
            return None
        if doc["request_hash"] != self.request_hash:
            raise Conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request; use a new key",
                "Idempotency-Key",
            )
        return JSONResponse(
            remembered_body(doc), status_code=doc["status"], headers={"Idempotent-Replay": "true"}
        )

    def finisher(self, status: int, shape: Any) -> Finish | None:
        if self.key is None:
            return None
        return _Remember(self, status, shape)

    async def replay(self) -> JSONResponse:
        stored = await self._stored()
        if stored is None:  # pragma: no cover - the concurrent request's record is committed
            raise Conflict("idempotency_in_flight", "retry this request", "Idempotency-Key")
        return stored


class _Remember:
    """Claims the key first in the write's transaction (a concurrent request with the same key
    then waits on it and replays), stores the response last."""

    def __init__(self, idem: Idempotency, status: int, shape: Any) -> None:
        self.idem = idem
        self.status = status
        self.shape = shape

    async def claim(self, session: Session) -> None:
        assert self.idem.key is not None
        repo = self.idem.service.repo
        if not await repo.claim_key(self.idem.key, self.idem.request_hash, session):
            raise _Replay

    async def complete(self, session: Session, result: Any) -> None:
        assert self.idem.key is not None
        body = self.shape(result).model_dump(mode="json")
        await self.idem.service.repo.complete_key(self.idem.key, self.status, body, session)


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="same key and body → the first response again; another body → 409",
    ),
]


# --- the router -----------------------------------------------------------------------------


def _to_competition(competition_id: str, body: CompetitionFields) -> Competition:
    return Competition(
        competition_id=competition_id,
        name=body.name,
        year=body.year,
        level=body.level,
        opens_at=body.registration_opens_at,
        closes_at=body.registration_closes_at,
    )


def _to_event(competition_id: str, event_id: str, body: EventFields) -> Event:
    scheme = ScoringScheme()
    if body.scheme is not None:
        data = body.scheme.model_dump(exclude_none=True)
        try:
            scheme = ScoringScheme.model_validate(data, strict=False)
        except ValidationError as error:
            first = error.errors()[0]
            raise InvalidDefinition(
                rule="invalid_scheme",
                field="scheme." + ".".join(str(p) for p in first.get("loc", ())),
                reason=str(first.get("msg")),
            ) from None
        if sum(c.weight for c in scheme.components) != 1:
            raise InvalidDefinition(
                rule="invalid_scheme", field="scheme.components", reason="weights must sum to 1"
            )
    if body.format is EventFormat.TEAM:
        low = body.team_min_size or body.team_max_size or 2
        high = body.team_max_size or low
    else:
        low = body.team_min_size or 1
        high = body.team_max_size or 1
    return Event(
        event_id=event_id,
        competition_id=competition_id,
        name=body.name,
        trade=body.trade,
        format=body.format,
        starts_at=body.starts_at,
        quota_per_union=body.quota_per_union,
        min_team_size=low,
        max_team_size=high,
        minimum_entrants=body.minimum_entrants,
        scheme=scheme,
    )


def build_router(service: RegistrationService) -> APIRouter:
    router = APIRouter(tags=["registration"], responses=ERRORS)

    async def idempotent(
        request: Request, principal: Principal, key: str | None
    ) -> tuple[Idempotency, JSONResponse | None]:
        idem = Idempotency(service, principal, key)
        return idem, await idem.prior(request)

    @router.post(
        "/competitions",
        status_code=201,
        response_model=CompetitionOut,
        summary="Create a competition (competition office)",
    )
    async def create_competition(
        request: Request,
        body: CompetitionIn,
        principal: Annotated[Principal, Depends(ADMIN)],
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior
        try:
            view = await service.create_competition(
                principal,
                _to_competition(body.competition_id, body),
                correlation_id=correlation_id_of(request),
                finish=idem.finisher(201, CompetitionOut.of),
            )
        except _Replay:
            return await idem.replay()
        return CompetitionOut.of(view)

    @router.put(
        "/competitions/{competition_id}",
        response_model=CompetitionOut,
        summary="Edit a competition; re-publishes its events (EventPublished)",
    )
    async def edit_competition(
        request: Request,
        competition_id: IdText,
        body: CompetitionFields,
        principal: Annotated[Principal, Depends(ADMIN)],
    ) -> CompetitionOut:
        view = await service.edit_competition(
            principal,
            _to_competition(competition_id, body),
            correlation_id=correlation_id_of(request),
        )
        return CompetitionOut.of(view)

    @router.get(
        "/competitions/{competition_id}",
        response_model=CompetitionOut,
        summary="A competition with its events",
    )
    async def get_competition(
        competition_id: str, _principal: Annotated[Principal, Depends(ANYONE)]
    ) -> CompetitionOut:
        return CompetitionOut.of(await service.view_competition(competition_id))

    @router.post(
        "/competitions/{competition_id}/events",
        status_code=201,
        response_model=EventOut,
        summary="Create an event of a competition; emits EventPublished",
    )
    async def create_event(
        request: Request,
        competition_id: IdText,
        body: EventIn,
        principal: Annotated[Principal, Depends(ADMIN)],
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior
        try:
            event = await service.publish_event(
                principal,
                _to_event(competition_id, body.event_id, body),
                create=True,
                correlation_id=correlation_id_of(request),
                finish=idem.finisher(201, EventOut.of),
            )
        except _Replay:
            return await idem.replay()
        return EventOut.of(event)

    @router.put(
        "/competitions/{competition_id}/events/{event_id}",
        response_model=EventOut,
        summary="Edit an event; emits EventPublished with the new definition",
    )
    async def edit_event(
        request: Request,
        competition_id: IdText,
        event_id: IdText,
        body: EventFields,
        principal: Annotated[Principal, Depends(ADMIN)],
    ) -> EventOut:
        event = await service.publish_event(
            principal,
            _to_event(competition_id, event_id, body),
            create=False,
            correlation_id=correlation_id_of(request),
        )
        return EventOut.of(event)

    @router.post("/unions", status_code=201, response_model=UnionOut, summary="Create a union")
    async def create_union(
        request: Request,
        body: UnionIn,
        principal: Annotated[Principal, Depends(ADMIN)],
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior

        def shape(union: Union) -> UnionOut:
            return UnionOut(union_id=union.union_id, name=union.name, officers=body.officers)

        try:
            union = await service.create_union(
                principal,
                Union(union_id=body.union_id, name=body.name),
                [o.model_dump() for o in body.officers],
                finish=idem.finisher(201, shape),
            )
        except _Replay:
            return await idem.replay()
        return shape(union)

    @router.post(
        "/unions/{union_id}/workers",
        status_code=201,
        response_model=WorkersCreated,
        summary="Add workers to a union's roster (batch); national ids stored hashed",
    )
    async def add_workers(
        request: Request,
        union_id: IdText,
        body: WorkersIn,
        principal: Annotated[Principal, Depends(OFFICER_OR_ADMIN)],
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior
        inputs = [
            WorkerInput(
                worker_id=w.worker_id,
                name=w.name,
                front_line=w.front_line,
                national_id=w.national_id,
                employer=w.employer,
                job=w.job,
            )
            for w in body.workers
        ]

        def shape(created: int) -> WorkersCreated:
            return WorkersCreated(created=created)

        try:
            created = await service.add_workers(
                principal, union_id, inputs, finish=idem.finisher(201, shape)
            )
        except _Replay:
            return await idem.replay()
        return shape(created)

    @router.get(
        "/unions/{union_id}/workers",
        response_model=list[WorkerOut],
        summary="A union's roster, national ids masked",
    )
    async def list_workers(
        union_id: str, principal: Annotated[Principal, Depends(OFFICER_OR_ADMIN)]
    ) -> list[WorkerOut]:
        return [WorkerOut.of(w) for w in await service.list_workers(principal, union_id)]

    @router.post(
        "/entries",
        status_code=201,
        response_model=EntryOut,
        summary="Register an individual or team entry; emits EntryRegistered",
    )
    async def register_entry(
        request: Request,
        body: EntryIn,
        principal: Annotated[Principal, Depends(OFFICER_OR_ADMIN)],
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior
        try:
            entry = await service.register(
                principal,
                event_id=body.event_id,
                union_id=body.union_id,
                worker_ids=body.worker_ids,
                team_name=body.team_name,
                entry_id=body.entry_id,
                correlation_id=correlation_id_of(request),
                finish=idem.finisher(201, EntryOut.of),
            )
        except _Replay:
            return await idem.replay()
        return EntryOut.of(entry)

    @router.post(
        IMPORT_PATH,
        response_model=ImportReport,
        summary="Bulk import entries from a CSV or JSON body (up to 100,000 rows)",
        description="CSV columns event_id,union_id,team_name,worker_ids (ids separated by ;); "
        "JSON: an array of objects with those fields. mode=all_or_nothing stores nothing if "
        "any row fails; valid_rows_only stores the rows that pass. The answer lists every "
        "rejected row with its field and reason. Body limit: settings.max_import_bytes.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                },
            }
        },
    )
    async def import_entries(
        request: Request,
        principal: Annotated[Principal, Depends(OFFICER_OR_ADMIN)],
        mode: ImportMode = ImportMode.ALL_OR_NOTHING,
        format: Annotated[Literal["csv", "json"], Query()] = "csv",
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior
        data = await request.body()
        outcome = await service.import_entries(
            principal,
            data,
            file_format=format,
            mode=mode,
            correlation_id=correlation_id_of(request),
        )
        report = ImportReport.of(outcome)
        # Several transactions: the record is stored after them (a crash in between means a
        # retry re-imports, and rows already stored are reported as worker_already_entered).
        if idem.key is not None:
            stored = await service.repo.remember(
                idem.key, idem.request_hash, 200, report.model_dump(mode="json"), None
            )
            if not stored:
                return await idem.replay()
        return report

    @router.get(
        "/entries",
        response_model=list[EntryOut],
        summary="List entries (officers see their own union's only)",
    )
    async def list_entries(
        principal: Annotated[Principal, Depends(READERS)],
        event_id: str | None = None,
        union_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        after: Annotated[str | None, Query(description="entry id to continue after")] = None,
    ) -> list[EntryOut]:
        entries = await service.list_entries(
            principal, event_id=event_id, union_id=union_id, limit=limit, after=after
        )
        return [EntryOut.of(e) for e in entries]

    @router.get("/entries/{entry_id}", response_model=EntryOut, summary="One entry")
    async def get_entry(
        entry_id: str, principal: Annotated[Principal, Depends(READERS)]
    ) -> EntryOut:
        return EntryOut.of(await service.entry(principal, entry_id))

    @router.post(
        "/entries/{entry_id}/withdraw",
        response_model=EntryOut,
        summary="Withdraw an entry before its event starts; emits EntryWithdrawn",
    )
    async def withdraw(
        request: Request,
        entry_id: str,
        body: WithdrawIn,
        principal: Annotated[Principal, Depends(OFFICER_OR_ADMIN)],
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        idem, prior = await idempotent(request, principal, idempotency_key)
        if prior is not None:
            return prior
        try:
            entry = await service.withdraw(
                principal,
                entry_id,
                body.reason,
                correlation_id=correlation_id_of(request),
                finish=idem.finisher(200, EntryOut.of),
            )
        except _Replay:
            return await idem.replay()
        return EntryOut.of(entry)

    return router
