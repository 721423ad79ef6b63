"""HTTP edge of the notifications service: subscriptions, delivery records, the public page
and its two server-sent-event streams."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.auth import Principal, Role, require
from shared.errors import DomainError
from shared.events import Id, Name
from shared.mongo import Doc
from shared.runtime import ServiceRuntime

from .channels import LiveFeed
from .domain import ChannelName, Language, LeaderRole, Subscription, is_valid_email
from .handlers import save_subscription
from .repository import NotificationsRepository
from .streams import REPLAY_LIMIT, Broadcast, award_stream, standings_stream

PAGE = Path(__file__).parent / "static" / "index.html"
_http_url: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChannelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: Annotated[str, Field(max_length=2000)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    live_feed: bool = False

    @field_validator("webhook")
    @classmethod
    def _webhook_is_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = _http_url.validate_python(value)
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("email")
    @classmethod
    def _email_is_valid(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_email(value):
            raise ValueError("must be a valid email address")
        return value

    @model_validator(mode="after")
    def _at_least_one(self) -> ChannelsIn:
        if not self.names():
            raise ValueError("name at least one channel: webhook, email or live_feed")
        return self

    def names(self) -> frozenset[ChannelName]:
        chosen: list[ChannelName] = []
        if self.webhook:
            chosen.append("webhook")
        if self.email:
            chosen.append("email")
        if self.live_feed:
            chosen.append("live_feed")
        return frozenset(chosen)


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    role: LeaderRole
    scope: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    channels: ChannelsIn
    language: Language = "zh"


class SubscriptionOut(BaseModel):
    leader_id: str
    name: str
    role: LeaderRole
    scope: str | None
    channels: dict[str, Any]
    language: Language


def subscription_out(subscription: Subscription) -> SubscriptionOut:
    channels: dict[str, Any] = {}
    if "webhook" in subscription.channels:
        channels["webhook"] = subscription.webhook_url
    if "email" in subscription.channels:
        channels["email"] = subscription.email
    if "live_feed" in subscription.channels:
        channels["live_feed"] = True
    return SubscriptionOut(
        leader_id=subscription.leader_id,
        name=subscription.name,
        role=subscription.role,
        scope=subscription.scope,
        channels=channels,
        language=subscription.language,
    )


def subscription_from(leader_id: str, body: SubscriptionIn) -> Subscription:
    if body.role is LeaderRole.FEDERATION and body.scope:
        raise DomainError(
            "scope_not_allowed", "federation leadership hears of every award: omit scope", "scope"
        )
    if body.role is not LeaderRole.FEDERATION and not body.scope:
        what = "union id" if body.role is LeaderRole.UNION_CHAIR else "competition id"
        raise DomainError(
            "scope_required", f"role {body.role.value} needs a scope ({what})", "scope"
        )
    try:
        return Subscription(
            leader_id=leader_id,
            name=body.name,
            role=body.role,
            scope=body.scope,
            channels=body.channels.names(),
            webhook_url=body.channels.webhook,
            email=body.channels.email,
            language=body.language,
        )
    except ValidationError as exc:  # the domain's own checks, in case they grow stricter
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        raise DomainError("invalid_subscription", str(first.get("msg")), field) from exc


class AttemptOut(BaseModel):
    at: datetime
    outcome: str
    error: str


class DeliveryOut(BaseModel):
    delivery_key: str
    award_id: str
    decision_event_id: str
    competition_id: str
    leader_id: str
    channel: ChannelName
    address: str
    language: Language
    kind: str
    status: str
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None
    dead_letter: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


def delivery_out(doc: Doc) -> DeliveryOut:
    plan = doc["plan"]
    return DeliveryOut(
        delivery_key=doc["_id"],
        award_id=doc["award_id"],
        decision_event_id=doc["decision_event_id"],
        competition_id=doc.get("competition_id", ""),
        leader_id=doc["leader_id"],
        channel=doc["channel"],
        address=plan["address"],
        language=plan["language"],
        kind=doc["kind"],
        status=doc["status"],
        attempts=[AttemptOut(**attempt) for attempt in doc.get("attempts", [])],
        next_attempt_at=doc.get("next_attempt_at"),
        dead_letter=doc.get("dead_letter"),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def build_router(
    runtime: ServiceRuntime,
    repo: NotificationsRepository,
    feed: LiveFeed,
    standings_hub: Broadcast[dict[str, Any]],
) -> APIRouter:
    router = APIRouter(tags=["notifications"])

    @router.put("/subscriptions/{leader_id}", summary="Subscribe a leader (replaces)")
    async def put_subscription(
        leader_id: Annotated[
            str, PathParam(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
        ],
        body: SubscriptionIn,
        principal: Annotated[Principal, Depends(require(Role.ADMIN))],
    ) -> SubscriptionOut:
        subscription = subscription_from(leader_id, body)
        await save_subscription(runtime, repo, subscription, principal)
        return subscription_out(subscription)

    @router.get("/subscriptions", summary="Every leader's subscription")
    async def list_subscriptions(
        _principal: Annotated[Principal, Depends(require(Role.ADMIN))],
    ) -> list[SubscriptionOut]:
        return [subscription_out(s) for s in await repo.subscriptions()]

    @router.get("/deliveries", summary="Delivery records with every attempt")
    async def list_deliveries(
        principal: Annotated[Principal, Depends(require(Role.ADMIN, Role.LEADER))],
        award_id: Id | None = None,
        leader_id: Id | None = None,
        competition_id: Id | None = None,
        status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 5000,
    ) -> list[DeliveryOut]:
        if principal.role is Role.LEADER and "*" not in principal.scopes:
            # A leader without the all-scope sees only what was sent to them.
            if leader_id not in (None, principal.subject):
                raise DomainError(
                    "out_of_scope", "a leader sees only their own deliveries", "leader_id"
                )
            leader_id = principal.subject
        filters = {
            "award_id": award_id,
            "leader_id": leader_id,
            "competition_id": competition_id,
            "status": status,
        }
        return [delivery_out(doc) for doc in await repo.deliveries(filters, limit)]

    @router.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @router.get("/feed", summary="Award news as server-sent events (public)")
    async def award_feed(
        since: datetime | None = None, leader_id: Id | None = None
    ) -> StreamingResponse:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)

        async def replay() -> list[Any]:
            return await repo.recent_feed(REPLAY_LIMIT, since)

        return StreamingResponse(
            award_stream(feed, replay, leader_id=leader_id),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    @router.get("/standings", summary="Latest standings per event (public)")
    async def latest_standings() -> list[dict[str, Any]]:
        return await repo.standings()

    @router.get("/standings/stream", summary="Standings as server-sent events (public)")
    async def standings_events() -> StreamingResponse:
        return StreamingResponse(
            standings_stream(standings_hub, repo.standings),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    return router
