"""Notifications domain: who hears about an award decision, on which channel, and retries.

Pure code: no I/O, no clock, no randomness of its own. Time and the random source are passed
in, so every rule here is tested directly.

Guarantee this module carries: exactly one delivery per award decision, leader and channel.
The `delivery_key` names that delivery; the service stores one `DeliveryRecord` per key and
the webhook receiver gets the key as its idempotency key.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, TypeAdapter, model_validator

from shared.events import AwardGranted, AwardRevoked, Id, Name, UtcDatetime

ChannelName = Literal["webhook", "email", "live_feed"]
Language = Literal["zh", "en"]
DecisionKind = Literal["granted", "revoked"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
AttemptOutcome = Literal["delivered", "transient_error", "permanent_error"]

Decision = AwardGranted | AwardRevoked

CHANNELS: tuple[ChannelName, ...] = ("webhook", "email", "live_feed")

# Namespace for the deterministic notification id (uuid5 of the delivery key): the outcome
# contract caps ids at 128 characters, and a delivery key with a long leader id may exceed it.
NOTIFICATION_NAMESPACE = uuid.UUID("6c0f3a8e-5b1d-4f55-9a57-3f1c2b9d7e41")


class LeaderRole(StrEnum):
    FEDERATION = "federation"  # federation leadership: every award
    UNION_CHAIR = "union_chair"  # scope = union id: awards to that union's people and teams
    COMMITTEE = "committee"  # scope = competition id: awards of that competition


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Syntax check only (one @, no spaces, a dotted domain of sane labels). Whether the mailbox
# exists is proven by the SMTP server accepting the recipient, not guessed here.
_EMAIL_PATTERN = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_http_url: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def is_valid_email(address: str) -> bool:
    local = address.split("@", 1)[0]
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return _EMAIL_PATTERN.fullmatch(address) is not None


class Subscription(_Model):
    """A leader's standing request to hear about awards, by role and scope."""

    leader_id: Id
    name: Name
    role: LeaderRole
    scope: Annotated[str, Field(max_length=128)] | None = Field(
        default=None,
        description="Union id for a union chair, competition id for a committee; "
        "none for federation leadership.",
    )
    channels: frozenset[ChannelName] = Field(min_length=1)
    webhook_url: Annotated[str, Field(max_length=2000)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    language: Language = "zh"

    @model_validator(mode="after")
    def _check_scope_and_addresses(self) -> Self:
        if self.role is LeaderRole.FEDERATION:
            if self.scope:
                raise ValueError("federation leadership receives every award: scope must be empty")
        elif not self.scope:
            raise ValueError(f"role {self.role.value} needs a scope (union or competition id)")
        if "webhook" in self.channels:
            if not self.webhook_url:
                raise ValueError("webhook channel needs webhook_url")
            url = _http_url.validate_python(self.webhook_url)  # raises on a malformed URL
            if url.scheme not in ("http", "https"):
                raise ValueError("webhook_url must be an http(s) URL")
        if "email" in self.channels:
            if not self.email or not is_valid_email(self.email):
                raise ValueError("email channel needs a valid email address")
        return self

    def address_for(self, channel: ChannelName) -> str:
        """Where this leader receives `channel`; the live feed is addressed by leader id."""
        if channel == "webhook":
            return self.webhook_url or ""
        if channel == "email":
            return self.email or ""
        return self.leader_id

    def wants(self, decision: Decision) -> bool:
        payload = decision.payload
        if self.role is LeaderRole.FEDERATION:
            return True
        if self.role is LeaderRole.UNION_CHAIR:
            return payload.recipient.union_id == self.scope
        return payload.competition.competition_id == self.scope


class DeliveryPlan(_Model):
    """One message to one leader on one channel about one award decision."""

    delivery_key: Annotated[str, Field(min_length=1)]
    award_id: Id
    decision_event_id: Id
    leader_id: Id
    channel: ChannelName
    address: Annotated[str, Field(min_length=1)]
    language: Language
    kind: DecisionKind

    @property
    def notification_id(self) -> str:
        """Stable id for the outcome events: the same delivery always gets the same id."""
        return str(uuid.uuid5(NOTIFICATION_NAMESPACE, self.delivery_key))


def delivery_key(decision_event_id: str, leader_id: str, channel: ChannelName) -> str:
    # Unambiguous even if a leader id holds ':' — the event id (a UUID) has none and the
    # channel is one of three fixed words.
    return f"{decision_event_id}:{leader_id}:{channel}"


def decision_kind(decision: Decision) -> DecisionKind:
    return "granted" if isinstance(decision, AwardGranted) else "revoked"


def recipients_for(decision: Decision, subscriptions: Iterable[Subscription]) -> list[DeliveryPlan]:
    """Plan the deliveries an award decision (grant or revocation) calls for.

    Takes the whole event, not only its payload, because the decision's `event_id` is part of
    the delivery key. A leader holding several matching subscriptions (say federation and
    committee) still gets one delivery per channel: the first matching subscription in the
    given order decides address and language, so callers pass subscriptions in a stable order.
    """
    event_id = str(decision.event_id)
    kind = decision_kind(decision)
    plans: dict[str, DeliveryPlan] = {}
    for subscription in subscriptions:
        if not subscription.wants(decision):
            continue
        for channel in CHANNELS:  # fixed order keeps the plan list deterministic
            if channel not in subscription.channels:
                continue
            key = delivery_key(event_id, subscription.leader_id, channel)
            if key in plans:
                continue
            plans[key] = DeliveryPlan(
                delivery_key=key,
                award_id=decision.payload.award_id,
                decision_event_id=event_id,
                leader_id=subscription.leader_id,
                channel=channel,
                address=subscription.address_for(channel),
                language=subscription.language,
                kind=kind,
            )
    return list(plans.values())


# --- retries --------------------------------------------------------------------------------


class UniformSource(Protocol):
    """The one thing back-off needs from a random generator (random.Random fits)."""

    def uniform(self, a: float, b: float) -> float: ...


# Beyond 2**62 the ceiling is max_delay_s anyway; capping the exponent avoids float overflow.
_MAX_EXPONENT = 62


class RetryPolicy(_Model):
    """Exponential back-off with full jitter (AWS architecture blog, 2015).

    Full jitter spreads retries of many deliveries that failed together (a receiver outage)
    over the whole window instead of hammering it in lockstep.
    """

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    base_delay_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 2.0
    max_delay_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 300.0
    jitter: bool = True

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError("max_delay_s must be at least base_delay_s")
        return self

    def ceiling_for(self, attempt: int) -> float:
        """Longest wait after the `attempt`-th failed attempt (1-based): base * 2**(attempt-1)."""
        if attempt < 1:
            raise ValueError("attempt counts failed attempts and starts at 1")
        exponent = min(attempt - 1, _MAX_EXPONENT)
        return min(self.max_delay_s, math.ldexp(self.base_delay_s, exponent))

    def delay_for(self, attempt: int, rng: UniformSource) -> float:
        """Seconds to wait after the `attempt`-th failed attempt before trying again."""
        ceiling = self.ceiling_for(attempt)
        if not self.jitter:
            return ceiling
        # Clamp: uniform() may return b itself, and a custom source must not escape the window.
        return min(ceiling, max(0.0, rng.uniform(0.0, ceiling)))


# --- the delivery state machine -------------------------------------------------------------


class DeliverySettledError(ValueError):
    """A delivered or failed delivery was asked to record another attempt."""


class Attempt(_Model):
    at: UtcDatetime
    outcome: AttemptOutcome
    error: Annotated[str, Field(max_length=2000)] = ""


class DeliveryRecord(_Model):
    """Everything that happened to one delivery: pending → delivered | failed, never back."""

    plan: DeliveryPlan
    status: DeliveryStatus = "pending"
    attempts: tuple[Attempt, ...] = ()
    next_attempt_at: UtcDatetime | None = None

    @classmethod
    def start(cls, plan: DeliveryPlan) -> DeliveryRecord:
        return cls(plan=plan)

    @property
    def delivery_key(self) -> str:
        return self.plan.delivery_key

    @property
    def last_error(self) -> str:
        return self.attempts[-1].error if self.attempts else ""

    def is_due(self, now: datetime) -> bool:
        return self.status == "pending" and (
            self.next_attempt_at is None or self.next_attempt_at <= now
        )

    def record_success(self, now: datetime) -> DeliveryRecord:
        self._require_pending()
        attempt = Attempt(at=now, outcome="delivered")
        return self.model_copy(
            update={
                "status": "delivered",
                "attempts": (*self.attempts, attempt),
                "next_attempt_at": None,
            }
        )

    def record_failure(
        self,
        now: datetime,
        error: str,
        policy: RetryPolicy,
        rng: UniformSource,
        *,
        transient: bool = True,
    ) -> tuple[DeliveryRecord, datetime | None]:
        """Record a failed attempt; return the new record and when to try next.

        None means no further attempt: the failure was permanent (the receiver rejected the
        message itself) or this was the policy's last attempt. The record is then `failed`.
        """
        self._require_pending()
        attempt = Attempt(
            at=now,
            outcome="transient_error" if transient else "permanent_error",
            error=error[:2000],
        )
        attempts = (*self.attempts, attempt)
        if not transient or len(attempts) >= policy.max_attempts:
            failed = self.model_copy(
                update={"status": "failed", "attempts": attempts, "next_attempt_at": None}
            )
            return failed, None
        next_at = now + timedelta(seconds=policy.delay_for(len(attempts), rng))
        retrying = self.model_copy(update={"attempts": attempts, "next_attempt_at": next_at})
        return retrying, next_at

    def _require_pending(self) -> None:
        if self.status != "pending":
            raise DeliverySettledError(f"delivery {self.delivery_key} is already {self.status}")
