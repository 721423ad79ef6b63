"""The HTTP edge every service shares: app factory, errors as 4xx, correlation ids, limits,
health and readiness, the AsyncAPI document, and the audit trail of writes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal
from shared.errors import DomainError
from shared.events import utc_now
from shared.logging import correlation, get_logger
from shared.mongo import Doc, Session
from shared.runtime import AUDIT, ServiceRuntime

log = get_logger(__name__)
ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
# Ids in URL paths follow the documented id rule: no NUL, no encoded slashes, no traversal.
PathId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
CORRELATION_HEADER = "X-Correlation-ID"


def error_body(rule: str, reason: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"rule": rule, "field": field, "reason": reason}}


class BodyLimitMiddleware:
    """Refuse request bodies above the limit with 413 before they are read into memory."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Exact paths allowed a different limit (e.g. a bulk-import route).
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, max_bytes)
            return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # The app may catch _BodyTooLarge while parsing (FastAPI answers 400); a chunked
            # body without Content-Length must still get the 413 below, not that answer.
            if not too_large:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if too_large:
            await self._refuse(send, max_bytes)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        response = JSONResponse(
            error_body("body_too_large", f"request body exceeds {max_bytes} bytes", "body"),
            status_code=413,
        )
        await response({"type": "http"}, _empty_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class CorrelationMiddleware:
    """Bind the caller's correlation id (or a fresh one) to every log line of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(CORRELATION_HEADER.lower().encode(), b"")
        correlation_id = raw.decode("latin-1")[:128] if raw else str(uuid.uuid4())
        scope.setdefault("state", {})["correlation_id"] = correlation_id

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append(
                    (CORRELATION_HEADER.encode(), correlation_id.encode())
                )
            await send(message)

        with correlation(correlation_id):
            await self.app(scope, receive, send_with_header)


def correlation_id_of(request: Request) -> str:
    return str(getattr(request.state, "correlation_id", "") or uuid.uuid4())


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _audit_refused_write(request: Request, status: int, error: dict[str, Any]) -> None:
    """Every write attempt is audited, refused ones too (who tried what, and why it failed).

    Only authenticated callers: anonymous refusals (401) would let anyone fill the trail."""
    principal = getattr(request.state, "principal", None)
    runtime = getattr(request.app.state, "runtime", None)
    if request.method not in WRITE_METHODS or principal is None or runtime is None:
        return
    route = request.scope.get("route")
    try:
        await audit(
            runtime,
            None,
            principal,
            f"{request.method} {getattr(route, 'path', request.url.path)}",
            request.url.path[:300],
            {"status": status, "rule": error.get("rule"), "field": error.get("field")},
            outcome="rejected",
        )
    except Exception as exc:  # the refusal must still reach the caller
        log.warning("could not audit a refused write", error=str(exc))


async def _validation_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        problems.append(
            {
                "rule": "invalid_input",
                "field": ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc),
                "reason": str(err.get("msg")),
            }
        )
    first = problems[0] if problems else {"rule": "invalid_input", "field": None, "reason": ""}
    await _audit_refused_write(request, 422, first)
    return JSONResponse({"error": first, "errors": problems}, status_code=422)


async def _domain_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    await _audit_refused_write(request, exc.status_code, exc.as_dict())
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse({"error": exc.as_dict()}, status_code=exc.status_code, headers=headers)


def create_http_app(
    runtime: ServiceRuntime,
    routers: Sequence[APIRouter],
    *,
    title: str,
    description: str = "",
    body_limits: Mapping[str, int] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.runtime = runtime
    app.add_exception_handler(RequestValidationError, _validation_error_response)
    app.add_exception_handler(DomainError, _domain_error_response)
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.name}

    @app.get("/readyz", tags=["health"], summary="Readiness: Kafka and MongoDB answer")
    async def readyz() -> JSONResponse:
        checks = await runtime.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/asyncapi.json", tags=["health"], summary="AsyncAPI document of this service")
    async def asyncapi() -> dict[str, Any]:
        return runtime.asyncapi_document(title, description)

    app.add_middleware(
        BodyLimitMiddleware, max_bytes=runtime.settings.max_body_bytes, path_limits=body_limits
    )
    app.add_middleware(CorrelationMiddleware)
    return app


def audit_document(
    principal: Principal | None,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    *,
    outcome: str = "ok",
) -> Doc:
    """One audit record: who did what to which object, and when."""
    return {
        "at": utc_now(),
        "actor": principal.subject if principal else None,
        "role": principal.role.value if principal else None,
        "action": action,
        "target": target,
        "outcome": outcome,
        "details": details or {},
    }


async def audit(
    runtime: ServiceRuntime,
    session: Session | None,
    principal: Principal | None,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    *,
    outcome: str = "ok",
) -> None:
    """Record who did what to which object, and when; inside the write's own transaction."""
    await runtime.db[AUDIT].insert_one(
        audit_document(principal, action, target, details, outcome=outcome), session=session
    )


async def audit_many(
    runtime: ServiceRuntime, session: Session | None, documents: Sequence[Doc]
) -> None:
    """Write many `audit_document` records in one round trip, inside the caller's transaction."""
    if documents:
        await runtime.db[AUDIT].insert_many(list(documents), ordered=True, session=session)
