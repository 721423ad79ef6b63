"""Event contracts: one envelope, typed payloads, strict validation.

Every message on every topic is an `Envelope` subclass whose `event_type` literal selects the
payload model. Validation is strict and forbids unknown fields, so a producer bug surfaces as
a dead-lettered message with a reason instead of a half-understood event.
Decimals travel as strings (exact, never binary floats).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must carry a UTC offset")
    return value.astimezone(UTC)


# Control characters (NUL, escapes) and bidirectional overrides (which make "abc" display as
# "cba" on a certificate) have no place in a name or a reason, nor have lone surrogates (no
# valid UTF-8 exists for them); zero-width joiners stay (emoji).
_UNPRINTABLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _printable(value: str) -> str:
    if _UNPRINTABLE.search(value):
        raise ValueError(
            "must not contain control, bidirectional-override or lone surrogate characters"
        )
    return value


PlainText = Annotated[str, AfterValidator(_printable)]
UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
Id = Annotated[str, Field(min_length=1, max_length=128)]
Name = Annotated[PlainText, Field(min_length=1, max_length=200)]
Score = Annotated[Decimal, Field(ge=0, le=100, max_digits=7, decimal_places=2)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every payload: strict, immutable, closed to unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CompetitionLevel(StrEnum):
    NATIONAL = "national"
    PROVINCIAL = "provincial"
    CITY = "city"
    DISTRICT = "district"
    ENTERPRISE = "enterprise"


class EventFormat(StrEnum):
    INDIVIDUAL = "individual"
    TEAM = "team"


class AwardType(StrEnum):
    MAY_DAY_LABOUR_MEDAL = "may_day_labour_medal"
    WORKER_PIONEER = "worker_pioneer"
    TECHNICAL_EXPERT = "technical_expert"
    EXCELLENT_CONTESTANT = "excellent_contestant"
    ORGANISATION_AWARD = "organisation_award"


class RecipientKind(StrEnum):
    PERSON = "person"
    TEAM = "team"
    UNION = "union"


# --- shared value objects -------------------------------------------------------------------


class ScoringComponent(Contract):
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]
    weight: Annotated[Decimal, Field(gt=0, le=1)]
    pass_mark: Score = Decimal("60")
    panel: bool = Field(
        default=True,
        description="Marked by a judging panel (mean, trimmed with 5+ judges); "
        "false for single-source scores such as an imported theory exam.",
    )


class ScoringScheme(Contract):
    components: tuple[ScoringComponent, ...] = (
        ScoringComponent(name="theory", weight=Decimal("0.3"), panel=False),
        ScoringComponent(name="practical", weight=Decimal("0.7")),
    )
    divergence_tolerance: Score = Decimal("20")
    team_marked_as_unit: bool = False


class CompetitionRef(Contract):
    competition_id: Id
    name: Name
    year: Annotated[int, Field(ge=2000, le=2100)]
    level: CompetitionLevel


class EventRef(Contract):
    event_id: Id
    name: Name
    trade: Name
    format: EventFormat


class Member(Contract):
    worker_id: Id
    name: Name
    employer: Annotated[str, Field(max_length=200)] = ""
    job: Annotated[str, Field(max_length=200)] = ""
    front_line: bool
    national_id_masked: Annotated[str, Field(max_length=32)] = ""


# --- registration.entries ------------------------------------------------------------------


class EventPublishedPayload(Contract):
    competition: CompetitionRef
    event: EventRef
    team_size: Annotated[int, Field(ge=1, le=50)] = 1
    scheme: ScoringScheme = ScoringScheme()
    quota_per_union: Annotated[int, Field(ge=1)] = 1000
    minimum_entrants: Annotated[int, Field(ge=0)] = 0
    registration_opens_at: UtcDatetime
    registration_closes_at: UtcDatetime
    starts_at: UtcDatetime


class EntryRegisteredPayload(Contract):
    entry_id: Id
    competition: CompetitionRef
    event: EventRef
    union_id: Id
    union_name: Name
    team_name: Annotated[str, Field(max_length=200)] = ""
    members: tuple[Member, ...] = Field(min_length=1)
    registered_at: UtcDatetime


class EntryWithdrawnPayload(Contract):
    entry_id: Id
    event_id: Id
    union_id: Id
    reason: Annotated[str, Field(max_length=500)] = ""
    withdrawn_at: UtcDatetime


# --- scoring.marks / scoring.standings / scoring.results -----------------------------------


class MarkRecordedPayload(Contract):
    mark_id: Id
    event_id: Id
    entry_id: Id
    member_id: Id | None = None
    judge_id: Id
    component: Annotated[str, Field(min_length=1, max_length=40)]
    value: Score
    supersedes: Id | None = None
    reason: Annotated[str, Field(max_length=500)] = ""
    recorded_at: UtcDatetime


class ResultLine(Contract):
    entry_id: Id
    rank: Annotated[int, Field(ge=1)]
    total: Score
    components: dict[str, Score]
    qualified: bool
    union_id: Id
    union_name: Name
    team_name: Annotated[str, Field(max_length=200)] = ""
    members: tuple[Member, ...]
    mark_ids: tuple[Id, ...] = ()


class StandingsUpdatedPayload(Contract):
    competition: CompetitionRef
    event: EventRef
    lines: tuple[ResultLine, ...]
    marks_counted: Annotated[int, Field(ge=0)]
    flagged_entries: tuple[Id, ...] = ()
    as_of: UtcDatetime


class EventResultsPayload(Contract):
    competition: CompetitionRef
    event: EventRef
    version: Annotated[int, Field(ge=1)]
    entrants: Annotated[int, Field(ge=0)]
    lines: tuple[ResultLine, ...]
    finalised_by: Id
    reason: Annotated[str, Field(max_length=1000)] = ""
    finalised_at: UtcDatetime


# --- awards.decisions -----------------------------------------------------------------------


class Recipient(Contract):
    kind: RecipientKind
    recipient_id: Id
    name: Name
    union_id: Id
    union_name: Name
    members: tuple[Member, ...] = ()


class AwardReason(Contract):
    rule: Annotated[str, Field(min_length=1, max_length=200)]
    facts: dict[str, str | int | bool]


class AwardGrantedPayload(Contract):
    award_id: Id
    certificate_no: Id
    award_type: AwardType
    competition: CompetitionRef
    event: EventRef | None = None
    recipient: Recipient
    rank: Annotated[int, Field(ge=1)] | None = None
    reason: AwardReason
    result_version: Annotated[int, Field(ge=0)]
    mark_ids: tuple[Id, ...] = ()
    publicity_ends_on: date
    granted_at: UtcDatetime


class AwardRevokedPayload(Contract):
    award_id: Id
    certificate_no: Id
    award_type: AwardType
    competition: CompetitionRef
    event: EventRef | None = None
    recipient: Recipient
    reason: AwardReason
    result_version: Annotated[int, Field(ge=0)]
    revoked_at: UtcDatetime


# --- notifications.deliveries --------------------------------------------------------------


class NotificationOutcomePayload(Contract):
    notification_id: Id
    award_id: Id
    decision_event_id: Id
    leader_id: Id
    channel: Literal["webhook", "email", "live_feed"]
    attempts: Annotated[int, Field(ge=1)]
    error: Annotated[str, Field(max_length=2000)] = ""
    at: UtcDatetime


# --- the envelope ---------------------------------------------------------------------------

P = TypeVar("P", bound=Contract)


class Envelope(Contract, Generic[P]):
    event_id: uuid.UUID
    event_type: str
    schema_version: Annotated[int, Field(ge=1)] = SCHEMA_VERSION
    occurred_at: UtcDatetime
    producer: Annotated[str, Field(min_length=1, max_length=64)]
    correlation_id: Annotated[str, Field(min_length=1, max_length=128)]
    causation_id: Annotated[str, Field(max_length=128)] | None = None
    payload: P


class EventPublished(Envelope[EventPublishedPayload]):
    event_type: Literal["EventPublished"] = "EventPublished"


class EntryRegistered(Envelope[EntryRegisteredPayload]):
    event_type: Literal["EntryRegistered"] = "EntryRegistered"


class EntryWithdrawn(Envelope[EntryWithdrawnPayload]):
    event_type: Literal["EntryWithdrawn"] = "EntryWithdrawn"


class MarkRecorded(Envelope[MarkRecordedPayload]):
    event_type: Literal["MarkRecorded"] = "MarkRecorded"


class StandingsUpdated(Envelope[StandingsUpdatedPayload]):
    event_type: Literal["StandingsUpdated"] = "StandingsUpdated"


class EventFinalized(Envelope[EventResultsPayload]):
    event_type: Literal["EventFinalized"] = "EventFinalized"


class EventResultsAmended(Envelope[EventResultsPayload]):
    event_type: Literal["EventResultsAmended"] = "EventResultsAmended"


class AwardGranted(Envelope[AwardGrantedPayload]):
    event_type: Literal["AwardGranted"] = "AwardGranted"


class AwardRevoked(Envelope[AwardRevokedPayload]):
    event_type: Literal["AwardRevoked"] = "AwardRevoked"


class NotificationDelivered(Envelope[NotificationOutcomePayload]):
    event_type: Literal["NotificationDelivered"] = "NotificationDelivered"


class NotificationFailed(Envelope[NotificationOutcomePayload]):
    event_type: Literal["NotificationFailed"] = "NotificationFailed"


RegistrationEvent = Annotated[
    EventPublished | EntryRegistered | EntryWithdrawn, Field(discriminator="event_type")
]
MarkEvent = MarkRecorded
StandingsEvent = StandingsUpdated
ResultsEvent = Annotated[EventFinalized | EventResultsAmended, Field(discriminator="event_type")]
DecisionEvent = Annotated[AwardGranted | AwardRevoked, Field(discriminator="event_type")]
DeliveryEvent = Annotated[
    NotificationDelivered | NotificationFailed, Field(discriminator="event_type")
]
AnyEvent = Annotated[
    EventPublished
    | EntryRegistered
    | EntryWithdrawn
    | MarkRecorded
    | StandingsUpdated
    | EventFinalized
    | EventResultsAmended
    | AwardGranted
    | AwardRevoked
    | NotificationDelivered
    | NotificationFailed,
    Field(discriminator="event_type"),
]

EVENT_TYPES: dict[str, type[Envelope[Any]]] = {
    cls.model_fields["event_type"].default: cls
    for cls in (
        EventPublished,
        EntryRegistered,
        EntryWithdrawn,
        MarkRecorded,
        StandingsUpdated,
        EventFinalized,
        EventResultsAmended,
        AwardGranted,
        AwardRevoked,
        NotificationDelivered,
        NotificationFailed,
    )
}

_any_event: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def decode_event(raw: bytes | str) -> Envelope[Any]:
    """Parse and validate any event from its JSON; raises pydantic.ValidationError."""
    event: Envelope[Any] = _any_event.validate_json(raw)
    return event


def encode_event(event: Envelope[Any]) -> bytes:
    return event.model_dump_json().encode()


def new_event(
    cls: type[Envelope[P]],
    payload: P,
    *,
    producer: str,
    correlation_id: str,
    causation_id: str | None = None,
) -> Envelope[P]:
    """Build an envelope with a fresh id and the current UTC time."""
    # event_type comes from the subclass's Literal default, which mypy cannot see through cls.
    return cls(  # type: ignore[call-arg]
        event_id=uuid.uuid4(),
        occurred_at=utc_now(),
        producer=producer,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload,
    )
