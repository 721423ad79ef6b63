"""HTTP and WebSocket edge of the scoring service (docs/http-api.md, "scoring")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo.errors import DuplicateKeyError

from shared.auth import Principal, Role, decode_token, require
from shared.errors import DomainError
from shared.http import PathId
from shared.settings import get_settings

from .handlers import (
    Id,
    MarkJob,
    MarkOutcome,
    MarkSubmission,
    ScoringService,
    submission_adapter,
)
from .idempotency import IdempotencyClaim
from .report import render_report_png

JUDGES = (Role.JUDGE, Role.CHIEF_JUDGE)
SSE_KEEPALIVE_S = 15.0
SSE_MIN_INTERVAL_S = 0.25
"""Standings change with every mark; a screen needs at most four pictures a second."""
WS_POLICY_VIOLATION = 1008


class PanelJudge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge_id: Id
    union_id: Id | None = None


class PanelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chief_judge_id: Id
    judges: list[PanelJudge] = Field(min_length=1, max_length=200)


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    marks: list[MarkSubmission] = Field(min_length=1, max_length=5000)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    component: Annotated[str, Field(min_length=1, max_length=40)]
    member_id: Id | None = None
    note: Annotated[str, Field(min_length=1, max_length=1000)]


class FinaliseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AmendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


def _invalid_item(exc: ValidationError) -> DomainError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return DomainError("invalid_input", str(err.get("msg")), loc or None)


def build_router(service: ScoringService) -> APIRouter:
    router = APIRouter(tags=["scoring"])

    async def idempotent(
        request: Request,
        principal: Principal,
        run: Callable[[IdempotencyClaim | None], Awaitable[Any]],
        status_code: int = 200,
    ) -> Response:
        claim, stored = await service.idempotency.check(request, principal)
        if stored is not None:
            return stored
        try:
            body = await run(claim)
        except DuplicateKeyError:
            # Two requests with one key at once: the other committed first; answer as it did.
            if claim is None:
                raise
            stored = await service.idempotency.replay(claim)
            if stored is None:
                raise
            return stored
        return JSONResponse(body, status_code=status_code)

    @router.put("/events/{event_id}/panel", summary="Assign the judging panel and chief judge")
    async def put_panel(
        event_id: PathId,
        body: PanelBody,
        principal: Annotated[Principal, Depends(require(Role.ADMIN))],
    ) -> dict[str, Any]:
        judges = {j.judge_id: j.union_id for j in body.judges}
        return await service.set_panel(event_id, principal, body.chief_judge_id, judges)

    @router.post("/events/{event_id}/marks", status_code=201, summary="Submit one mark")
    async def post_mark(
        event_id: PathId,
        body: MarkSubmission,
        request: Request,
        principal: Annotated[Principal, Depends(require(*JUDGES))],
    ) -> Response:
        principal.require_scope("event", event_id)
        claim, stored = await service.idempotency.check(request, principal)
        if stored is not None:
            return stored

        def answer(outcomes: list[MarkOutcome]) -> tuple[int, Any] | None:
            only = outcomes[0]
            if only.error is not None:
                return None
            return (201 if only.outcome == "added" else 200), only.as_dict()

        job = MarkJob(principal, [body], "http", claim=claim, answer=answer)
        outcome = (await service.submit(event_id, job))[0]
        if outcome.error is not None:
            raise outcome.error
        status, shown = answer([outcome]) or (200, outcome.as_dict())
        return JSONResponse(shown, status_code=status)

    @router.post("/events/{event_id}/marks/batch", summary="Submit many marks")
    async def post_batch(
        event_id: PathId,
        body: BatchBody,
        request: Request,
        principal: Annotated[Principal, Depends(require(*JUDGES))],
    ) -> Response:
        principal.require_scope("event", event_id)
        claim, stored = await service.idempotency.check(request, principal)
        if stored is not None:
            return stored

        def answer(outcomes: list[MarkOutcome]) -> tuple[int, Any]:
            return 200, {"results": [o.as_dict() for o in outcomes]}

        job = MarkJob(principal, body.marks, "http-batch", claim=claim, answer=answer)
        status, shown = answer(await service.submit(event_id, job))
        return JSONResponse(shown, status_code=status)

    @router.websocket("/events/{event_id}/marks/stream")
    async def mark_stream(websocket: WebSocket, event_id: PathId) -> None:
        """Scoring tablets: browsers cannot set headers on a WebSocket, so `?token=`."""
        try:
            principal = decode_token(get_settings(), websocket.query_params.get("token", ""))
            if principal.role not in JUDGES:
                raise DomainError("role_not_allowed", "only judges may stream marks", "role")
            principal.require_scope("event", event_id)
        except DomainError as exc:
            await websocket.close(code=WS_POLICY_VIOLATION, reason=exc.reason[:120])
            return
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(await _stream_message(service, event_id, principal, text))
        except WebSocketDisconnect:
            return

    @router.post("/events/{event_id}/theory-import", summary="Import theory scores (CSV)")
    async def theory_import(
        event_id: PathId,
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.CHIEF_JUDGE, Role.ADMIN))],
    ) -> Response:
        principal.require_scope("event", event_id)
        text = (await request.body()).decode("utf-8-sig", errors="replace")
        return await idempotent(
            request,
            principal,
            lambda claim: service.import_theory(event_id, principal, text, claim),
        )

    @router.get("/events/{event_id}/standings", summary="Live standings of an event")
    async def standings(
        event_id: PathId,
        _principal: Annotated[Principal, Depends(require(*Role))],
    ) -> Response:
        state = await service.state(event_id)
        return Response(orjson.dumps(state.view()), media_type="application/json")

    @router.get("/events/{event_id}/standings/stream", summary="Standings as server-sent events")
    async def standings_stream(
        event_id: PathId,
        request: Request,
        _principal: Annotated[Principal, Depends(require(*Role))],
    ) -> StreamingResponse:
        return StreamingResponse(
            _standings_events(service, event_id, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/entries/{entry_id}/marks", summary="Full mark history of an entry")
    async def mark_history(
        entry_id: PathId,
        principal: Annotated[Principal, Depends(require(Role.JUDGE, Role.CHIEF_JUDGE, Role.ADMIN))],
    ) -> dict[str, Any]:
        return await service.mark_history(entry_id, principal)

    @router.post("/events/{event_id}/flags/{entry_id}/resolve", summary="Resolve a divergence")
    async def resolve_flag(
        event_id: PathId,
        entry_id: PathId,
        body: ResolveBody,
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.CHIEF_JUDGE))],
    ) -> Response:
        principal.require_scope("event", event_id)
        return await idempotent(
            request,
            principal,
            lambda claim: service.resolve_flag(
                event_id, entry_id, principal, body.component, body.member_id, body.note, claim
            ),
        )

    @router.post("/events/{event_id}/finalise", summary="Finalise the results (version 1)")
    async def finalise(
        event_id: PathId,
        _body: FinaliseBody,
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.CHIEF_JUDGE))],
    ) -> Response:
        principal.require_scope("event", event_id)
        return await idempotent(
            request, principal, lambda claim: service.finalise(event_id, principal, claim)
        )

    @router.post("/events/{event_id}/amend", summary="Amend finalised results after an appeal")
    async def amend(
        event_id: PathId,
        body: AmendBody,
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.CHIEF_JUDGE))],
    ) -> Response:
        principal.require_scope("event", event_id)
        return await idempotent(
            request, principal, lambda claim: service.amend(event_id, principal, body.reason, claim)
        )

    @router.get("/competitions/{competition_id}/report", summary="Participation and pass rates")
    async def report(
        competition_id: PathId,
        principal: Annotated[Principal, Depends(require(Role.ADMIN, Role.LEADER))],
    ) -> dict[str, Any]:
        principal.require_scope("competition", competition_id)
        return await service.competition_report(competition_id)

    @router.get("/competitions/{competition_id}/report.png", summary="The report as a PNG chart")
    async def report_png(
        competition_id: PathId,
        principal: Annotated[Principal, Depends(require(Role.ADMIN, Role.LEADER))],
    ) -> Response:
        principal.require_scope("competition", competition_id)
        data = await service.competition_report(competition_id)
        png = await asyncio.to_thread(render_report_png, data)
        return Response(png, media_type="image/png")

    return router


async def _stream_message(
    service: ScoringService, event_id: str, principal: Principal, text: str
) -> str:
    """One WebSocket message: a mark object or a list of them; the reply has the same shape."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        error = DomainError("invalid_json", f"the message is not JSON: {exc}")
        return json.dumps({"mark_id": None, "error": error.as_dict(), "status": 422})
    as_list = isinstance(raw, list)
    items: list[MarkSubmission | DomainError] = []
    for obj in raw if as_list else [raw]:
        try:
            items.append(submission_adapter.validate_python(obj))
        except ValidationError as exc:
            items.append(_invalid_item(exc))
    try:
        outcomes = await service.submit(event_id, MarkJob(principal, items, "websocket"))
    except DomainError as exc:
        outcomes = [MarkOutcome(getattr(i, "mark_id", None), error=exc) for i in items]
    for index, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
        if outcome.mark_id is None and isinstance(item, DomainError):
            outcome.mark_id = _raw_mark_id(raw, index, as_list)
    shown = [o.as_dict() for o in outcomes]
    return orjson.dumps(shown if as_list else shown[0]).decode()


def _raw_mark_id(raw: Any, index: int, as_list: bool) -> str | None:
    obj = raw[index] if as_list else raw
    value = obj.get("mark_id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


async def _standings_events(
    service: ScoringService, event_id: str, request: Request
) -> AsyncIterator[str]:
    seen: tuple[int, int] | None = None
    quiet_for = 0.0
    while not await request.is_disconnected():
        state = await service.state(event_id)
        current = (id(state), state.revision)
        if current != seen:
            seen = current
            quiet_for = 0.0
            yield "event: standings\ndata: " + orjson.dumps(state.view()).decode() + "\n\n"
            await asyncio.sleep(SSE_MIN_INTERVAL_S)
            continue
        if not await state.wait_for_change(state.revision, timeout=1.0):
            quiet_for += 1.0
            if quiet_for >= SSE_KEEPALIVE_S:
                quiet_for = 0.0
                yield ": keep-alive\n\n"
