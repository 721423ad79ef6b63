"""Registration domain: competitions, events, unions, workers and entries. Pure — no I/O.

The repository fetches only the facts a decision needs (`EntryFacts`) and the functions here
decide. Every refusal is a `RegistrationError` subclass carrying `rule` (short code), `field`
and `reason` (a sentence a union officer can act on).

Choices stated once:
- The registration window is half-open: open from `opens_at` (inclusive) until `closes_at`
  (exclusive). All timestamps must be timezone-aware.
- A team event's size is a range `min_team_size..max_team_size` (2..50); an individual event
  is exactly one member and carries no team name.
- Text that may later be exported to a spreadsheet (team, worker, employer and job names) is
  REJECTED, not silently rewritten, when it starts with = + - @ or a tab/carriage return
  (CSV formula injection); the officer sees why and fixes the source.
- National ids are validated, then kept only as an HMAC-SHA256 hash (keyed by a secret
  pepper) and a mask showing the first 3 and last 4 characters. Error messages never echo
  the number itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from shared.errors import Conflict, DomainError, Forbidden, NotFound
from shared.events import (
    CompetitionLevel,
    CompetitionRef,
    EntryRegisteredPayload,
    EntryWithdrawnPayload,
    EventFormat,
    EventPublishedPayload,
    EventRef,
    Member,
    ScoringScheme,
)

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 200
MAX_REASON_LENGTH = 500
MAX_TEAM_SIZE = 50
# Leading characters that make spreadsheet programs evaluate a cell as a formula (OWASP).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

# --- errors ---------------------------------------------------------------------------------


class RegistrationError(DomainError):
    """Base of every registration refusal: `rule`, `field`, `reason`."""

    # Keyword-only: the shared base takes (rule, reason, field) positionally; don't mix them up.
    def __init__(self, *, rule: str, field: str, reason: str) -> None:
        super().__init__(rule=rule, reason=reason, field=field)


class InvalidDefinition(RegistrationError):
    """A competition, event, union or worker definition is malformed."""


class InvalidNationalId(RegistrationError):
    def __init__(self, reason: str, field: str = "national_id") -> None:
        super().__init__(rule="invalid_national_id", field=field, reason=reason)


class UnsafeText(RegistrationError):
    def __init__(self, field: str) -> None:
        super().__init__(
            rule="unsafe_text",
            field=field,
            reason=f"{field} must not start with = + - @, a tab or a carriage return "
            "(spreadsheet formula injection)",
        )


class WindowClosed(Conflict, RegistrationError):
    def __init__(self, reason: str) -> None:
        RegistrationError.__init__(self, rule="window_closed", field="now", reason=reason)


class EventStarted(Conflict, RegistrationError):
    def __init__(self, reason: str) -> None:
        RegistrationError.__init__(self, rule="event_started", field="event_id", reason=reason)


class QuotaFull(Conflict, RegistrationError):
    def __init__(self, reason: str) -> None:
        RegistrationError.__init__(self, rule="quota_full", field="union_id", reason=reason)


class WorkerAlreadyEntered(Conflict, RegistrationError):
    def __init__(self, worker_id: str, event_id: str) -> None:
        RegistrationError.__init__(
            self,
            rule="worker_already_entered",
            field="members",
            reason=f"worker {worker_id!r} is already entered in event {event_id!r}; "
            "a worker enters an event at most once",
        )
        self.worker_id = worker_id


class WorkerNotOfUnion(RegistrationError):
    def __init__(self, worker_id: str, union_id: str) -> None:
        super().__init__(
            rule="worker_not_of_union",
            field="members",
            reason=f"worker {worker_id!r} is not on the roster of union {union_id!r}",
        )
        self.worker_id = worker_id


class DuplicateMember(RegistrationError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(
            rule="duplicate_member",
            field="members",
            reason=f"worker {worker_id!r} is listed more than once",
        )
        self.worker_id = worker_id


class TeamSizeViolation(RegistrationError):
    def __init__(self, reason: str) -> None:
        super().__init__(rule="team_size", field="members", reason=reason)


class TeamNameViolation(RegistrationError):
    def __init__(self, reason: str) -> None:
        super().__init__(rule="team_name", field="team_name", reason=reason)


class UnknownEvent(NotFound, RegistrationError):
    def __init__(self, event_id: str, reason: str = "") -> None:
        RegistrationError.__init__(
            self,
            rule="unknown_event",
            field="event_id",
            reason=reason or f"no event with id {event_id!r}",
        )


class EntryNotRegistered(Conflict, RegistrationError):
    def __init__(self, entry_id: str, status: str) -> None:
        RegistrationError.__init__(
            self,
            rule="entry_not_registered",
            field="entry_id",
            reason=f"entry {entry_id!r} is {status}; only a registered entry can be withdrawn",
        )


class NotEntryOwner(Forbidden, RegistrationError):
    def __init__(self, entry_id: str, union_id: str) -> None:
        RegistrationError.__init__(
            self,
            rule="not_entry_owner",
            field="union_id",
            reason=f"entry {entry_id!r} belongs to another union; "
            f"union {union_id!r} cannot withdraw it",
        )


# --- small validators -----------------------------------------------------------------------


def _require(condition: bool, field: str, reason: str) -> None:
    if not condition:
        raise InvalidDefinition(rule="invalid_definition", field=field, reason=reason)


def _require_id(value: str, field: str) -> None:
    _require(
        isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.strip() == value,
        field,
        f"{field} must be 1 to {MAX_ID_LENGTH} characters without surrounding spaces",
    )


def _require_aware(value: datetime, field: str) -> None:
    _require(
        isinstance(value, datetime) and value.utcoffset() is not None,
        field,
        f"{field} must be a timezone-aware datetime",
    )


def starts_like_formula(text: str) -> bool:
    return text.startswith(FORMULA_TRIGGERS)


def check_safe_text(value: str, field: str, *, required: bool, max_length: int) -> None:
    """Raise if `value` is empty when required, too long, or could run as a formula."""
    if required and not value.strip():
        raise InvalidDefinition(rule="required", field=field, reason=f"{field} is required")
    if len(value) > max_length:
        raise InvalidDefinition(
            rule="too_long", field=field, reason=f"{field} must be at most {max_length} characters"
        )
    if starts_like_formula(value):
        raise UnsafeText(field)


# --- national id ----------------------------------------------------------------------------

_ID_WEIGHTS = tuple(pow(2, 17 - position, 11) for position in range(17))
_CHECK_CHARACTERS = "10X98765432"  # indexed by (weighted sum mod 11), ISO 7064 MOD 11-2
_SEVENTEEN_DIGITS = re.compile(r"[0-9]{17}")
MIN_PEPPER_BYTES = 16


def national_id_check_character(first_seventeen: str) -> str:
    """The ISO 7064 MOD 11-2 check character for 17 ASCII digits."""
    total = sum(
        int(digit) * weight for digit, weight in zip(first_seventeen, _ID_WEIGHTS, strict=True)
    )
    return _CHECK_CHARACTERS[total % 11]


def normalize_national_id(raw: str) -> str:
    """Validate a Chinese resident identity number and return its canonical form.

    Canonical: NFKC-folded (full-width digits typed on Chinese keyboards become ASCII),
    surrounding spaces removed, a lowercase check `x` upper-cased.
    """
    if not isinstance(raw, str):
        raise InvalidNationalId("national id must be text")
    candidate = unicodedata.normalize("NFKC", raw).strip().upper()
    if len(candidate) != 18:
        raise InvalidNationalId(
            f"national id must be 18 characters (17 digits and a check digit or X), "
            f"got {len(candidate)}"
        )
    if not _SEVENTEEN_DIGITS.fullmatch(candidate[:17]):
        raise InvalidNationalId("the first 17 characters of a national id must be digits 0-9")
    check = candidate[17]
    if check not in "0123456789X":
        raise InvalidNationalId("the last character of a national id must be a digit or X")
    if national_id_check_character(candidate[:17]) != check:
        raise InvalidNationalId(
            "national id check digit does not match (ISO 7064 MOD 11-2); "
            "the number was probably mistyped"
        )
    return candidate


def mask_text(value: str) -> str:
    """Show at most the first 3 and last 4 characters; everything between becomes '*'.

    Strings too short to hide anything that way (under 8 characters) are fully masked.
    """
    if len(value) < 8:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_national_id(raw: str) -> str:
    """E.g. "110105194912310021" → "110***********0021" (validates first)."""
    return mask_text(normalize_national_id(raw))


def _pepper_bytes(pepper: bytes | str) -> bytes:
    key = pepper.encode() if isinstance(pepper, str) else pepper
    if len(key) < MIN_PEPPER_BYTES:
        raise ValueError(f"the national-id pepper must be at least {MIN_PEPPER_BYTES} bytes")
    return key


def hash_national_id(raw: str, pepper: bytes | str) -> str:
    """HMAC-SHA256 (hex) of the canonical id keyed by the secret pepper.

    Stable for the same person and pepper (so duplicates can be detected), useless to anyone
    without the pepper (an 18-digit id space is small enough to brute-force a plain hash).
    """
    canonical = normalize_national_id(raw)
    return hmac.new(_pepper_bytes(pepper), canonical.encode(), hashlib.sha256).hexdigest()


# --- entities -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Competition:
    competition_id: str
    name: str
    year: int
    level: CompetitionLevel
    opens_at: datetime
    closes_at: datetime

    def __post_init__(self) -> None:
        _require_id(self.competition_id, "competition_id")
        check_safe_text(self.name, "name", required=True, max_length=MAX_NAME_LENGTH)
        _require(
            isinstance(self.year, int) and 2000 <= self.year <= 2100,
            "year",
            "year must be between 2000 and 2100",
        )
        _require(
            isinstance(self.level, CompetitionLevel),
            "level",
            "level must be one of " + ", ".join(level.value for level in CompetitionLevel),
        )
        _require_aware(self.opens_at, "opens_at")
        _require_aware(self.closes_at, "closes_at")
        _require(
            self.opens_at < self.closes_at,
            "closes_at",
            "the registration window must close after it opens",
        )

    def ref(self) -> CompetitionRef:
        return CompetitionRef(
            competition_id=self.competition_id, name=self.name, year=self.year, level=self.level
        )


@dataclass(frozen=True, slots=True)
class Event:
    """A competition event (竞赛项目)."""

    event_id: str
    competition_id: str
    name: str
    trade: str
    format: EventFormat
    starts_at: datetime
    quota_per_union: int
    min_team_size: int = 1
    max_team_size: int = 1
    minimum_entrants: int = 0
    scheme: ScoringScheme = field(default_factory=ScoringScheme)

    def __post_init__(self) -> None:
        _require_id(self.event_id, "event_id")
        _require_id(self.competition_id, "competition_id")
        check_safe_text(self.name, "name", required=True, max_length=MAX_NAME_LENGTH)
        check_safe_text(self.trade, "trade", required=True, max_length=MAX_NAME_LENGTH)
        _require(
            isinstance(self.format, EventFormat), "format", "format must be individual or team"
        )
        _require_aware(self.starts_at, "starts_at")
        _require(
            isinstance(self.quota_per_union, int) and self.quota_per_union >= 1,
            "quota_per_union",
            "quota_per_union must be at least 1",
        )
        _require(
            isinstance(self.minimum_entrants, int) and self.minimum_entrants >= 0,
            "minimum_entrants",
            "minimum_entrants must not be negative",
        )
        _require(isinstance(self.scheme, ScoringScheme), "scheme", "scheme must be a ScoringScheme")
        if self.format is EventFormat.INDIVIDUAL:
            _require(
                self.min_team_size == 1 and self.max_team_size == 1,
                "max_team_size",
                "an individual event has exactly one member",
            )
        else:
            _require(
                2 <= self.min_team_size <= self.max_team_size <= MAX_TEAM_SIZE,
                "max_team_size",
                f"a team event needs 2 <= min_team_size <= max_team_size <= {MAX_TEAM_SIZE}",
            )

    def ref(self) -> EventRef:
        return EventRef(
            event_id=self.event_id, name=self.name, trade=self.trade, format=self.format
        )


@dataclass(frozen=True, slots=True)
class Union:
    union_id: str
    name: str

    def __post_init__(self) -> None:
        _require_id(self.union_id, "union_id")
        check_safe_text(self.name, "name", required=True, max_length=MAX_NAME_LENGTH)


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker on a union's roster. Holds the national id only hashed and masked."""

    worker_id: str
    union_id: str
    name: str
    front_line: bool
    national_id_hash: str
    national_id_masked: str
    employer: str = ""
    job: str = ""

    def __post_init__(self) -> None:
        _require_id(self.worker_id, "worker_id")
        _require_id(self.union_id, "union_id")
        check_safe_text(self.name, "name", required=True, max_length=MAX_NAME_LENGTH)
        check_safe_text(self.employer, "employer", required=False, max_length=MAX_NAME_LENGTH)
        check_safe_text(self.job, "job", required=False, max_length=MAX_NAME_LENGTH)
        _require(isinstance(self.front_line, bool), "front_line", "front_line must be true/false")

    @classmethod
    def enrol(
        cls,
        *,
        worker_id: str,
        union_id: str,
        name: str,
        national_id: str,
        pepper: bytes | str,
        front_line: bool,
        employer: str = "",
        job: str = "",
    ) -> Worker:
        """Build a worker from a raw national id, which is validated and not kept."""
        return cls(
            worker_id=worker_id,
            union_id=union_id,
            name=name,
            front_line=front_line,
            national_id_hash=hash_national_id(national_id, pepper),
            national_id_masked=mask_national_id(national_id),
            employer=employer,
            job=job,
        )

    def as_member(self) -> Member:
        return Member(
            worker_id=self.worker_id,
            name=self.name,
            employer=self.employer,
            job=self.job,
            front_line=self.front_line,
            national_id_masked=self.national_id_masked,
        )


class EntryStatus(StrEnum):
    REGISTERED = "registered"
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry of one union in one event: an individual (one member) or a team.

    No __post_init__ checks: entries are only made by `register_entry` (which checks the
    rules) or rehydrated from storage, and bulk import builds 100,000 of them.
    """

    entry_id: str
    event_id: str
    union_id: str
    team_name: str
    member_ids: tuple[str, ...]
    registered_at: datetime
    status: EntryStatus = EntryStatus.REGISTERED
    withdrawn_at: datetime | None = None
    withdrawal_reason: str = ""

    @property
    def is_active(self) -> bool:
        return self.status is EntryStatus.REGISTERED


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """What the repository must fetch before registering an entry in one event.

    `union_active_entries`: the registering union's non-withdrawn entries in the event.
    `entered_worker_ids`: workers in any non-withdrawn entry of the event, of any union.
    """

    union_active_entries: int
    entered_worker_ids: Set[str]


# --- decisions ------------------------------------------------------------------------------


def _require_aware_now(now: datetime) -> None:
    # A naive `now` is a programming error, not a user error: fail loudly.
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def find_event(events: Mapping[str, Event], event_id: str) -> Event:
    try:
        return events[event_id]
    except KeyError:
        raise UnknownEvent(event_id) from None


def register_entry(
    event: Event,
    competition: Competition,
    union_id: str,
    members: Sequence[Worker],
    team_name: str,
    existing: EntryFacts,
    now: datetime,
    *,
    entry_id: str | None = None,
) -> Entry:
    """Decide whether `union_id` may enter `members` in `event`; return the new entry.

    Checks, in order: event belongs to the competition, window open, event not started,
    team name and size, no member twice, every member on the union's roster, no member
    already entered in the event, the union's quota.
    """
    _require_aware_now(now)
    if event.competition_id != competition.competition_id:
        raise UnknownEvent(
            event.event_id,
            f"event {event.event_id!r} is not part of competition {competition.competition_id!r}",
        )
    if now < competition.opens_at:
        raise WindowClosed(
            f"registration for {competition.name!r} opens at {competition.opens_at.isoformat()}"
        )
    if now >= competition.closes_at:
        raise WindowClosed(
            f"registration for {competition.name!r} closed at {competition.closes_at.isoformat()}"
        )
    if now >= event.starts_at:
        raise EventStarted(
            f"event {event.event_id!r} started at {event.starts_at.isoformat()}; "
            "it takes no more entries"
        )

    team_name = team_name.strip()
    if event.format is EventFormat.INDIVIDUAL:
        if team_name:
            raise TeamNameViolation("an individual event takes no team name")
        if len(members) != 1:
            raise TeamSizeViolation(
                f"an individual event takes exactly 1 member, got {len(members)}"
            )
    else:
        if not team_name:
            raise TeamNameViolation("a team event needs a team name")
        check_safe_text(team_name, "team_name", required=True, max_length=MAX_NAME_LENGTH)
        if not event.min_team_size <= len(members) <= event.max_team_size:
            raise TeamSizeViolation(
                f"a team in event {event.event_id!r} has {event.min_team_size} to "
                f"{event.max_team_size} members, got {len(members)}"
            )

    # One pass (bulk import calls this 100,000 times); the first offending member is named.
    entered = existing.entered_worker_ids
    member_ids: list[str] = []
    for worker in members:
        worker_id = worker.worker_id
        if worker_id in member_ids:
            raise DuplicateMember(worker_id)
        if worker.union_id != union_id:
            raise WorkerNotOfUnion(worker_id, union_id)
        if worker_id in entered:
            raise WorkerAlreadyEntered(worker_id, event.event_id)
        member_ids.append(worker_id)
    if existing.union_active_entries >= event.quota_per_union:
        raise QuotaFull(
            f"union {union_id!r} already has {existing.union_active_entries} entries in event "
            f"{event.event_id!r}; the quota is {event.quota_per_union} per union"
        )

    return Entry(
        entry_id=entry_id or str(uuid.uuid4()),
        event_id=event.event_id,
        union_id=union_id,
        team_name=team_name,
        member_ids=tuple(member_ids),
        registered_at=now,
    )


def withdraw_entry(entry: Entry, event: Event, union_id: str, now: datetime, reason: str) -> Entry:
    """Withdraw a registered entry, by its own union, before the event starts."""
    _require_aware_now(now)
    if entry.event_id != event.event_id:
        raise UnknownEvent(
            entry.event_id, f"entry {entry.entry_id!r} is not in event {event.event_id!r}"
        )
    if entry.union_id != union_id:
        raise NotEntryOwner(entry.entry_id, union_id)
    if entry.status is not EntryStatus.REGISTERED:
        raise EntryNotRegistered(entry.entry_id, entry.status.value)
    if now >= event.starts_at:
        raise EventStarted(
            f"event {event.event_id!r} started at {event.starts_at.isoformat()}; "
            "entries can no longer be withdrawn"
        )
    reason = reason.strip()
    check_safe_text(reason, "reason", required=False, max_length=MAX_REASON_LENGTH)
    return replace(entry, status=EntryStatus.WITHDRAWN, withdrawn_at=now, withdrawal_reason=reason)


# --- outgoing contracts ---------------------------------------------------------------------


def entry_registered_payload(
    entry: Entry,
    competition: Competition,
    event: Event,
    union: Union,
    workers: Mapping[str, Worker] | Iterable[Worker],
) -> EntryRegisteredPayload:
    """The `EntryRegistered` payload; members carry only the masked national id."""
    by_id = (
        workers
        if isinstance(workers, Mapping)
        else {worker.worker_id: worker for worker in workers}
    )
    missing = [worker_id for worker_id in entry.member_ids if worker_id not in by_id]
    if missing:
        raise ValueError(f"workers {missing} of entry {entry.entry_id!r} were not supplied")
    if entry.event_id != event.event_id or event.competition_id != competition.competition_id:
        raise ValueError("entry, event and competition do not belong together")
    if entry.union_id != union.union_id:
        raise ValueError("entry and union do not belong together")
    return EntryRegisteredPayload(
        entry_id=entry.entry_id,
        competition=competition.ref(),
        event=event.ref(),
        union_id=union.union_id,
        union_name=union.name,
        team_name=entry.team_name,
        members=tuple(by_id[worker_id].as_member() for worker_id in entry.member_ids),
        registered_at=entry.registered_at,
    )


def entry_withdrawn_payload(entry: Entry) -> EntryWithdrawnPayload:
    if entry.status is not EntryStatus.WITHDRAWN or entry.withdrawn_at is None:
        raise ValueError(f"entry {entry.entry_id!r} is not withdrawn")
    return EntryWithdrawnPayload(
        entry_id=entry.entry_id,
        event_id=entry.event_id,
        union_id=entry.union_id,
        reason=entry.withdrawal_reason,
        withdrawn_at=entry.withdrawn_at,
    )


def event_published_payload(competition: Competition, event: Event) -> EventPublishedPayload:
    """The `EventPublished` payload.

    The contract carries one `team_size`; we send the maximum (1 for individual events),
    the size a scoring or display consumer must be prepared for.
    """
    if event.competition_id != competition.competition_id:
        raise ValueError("event and competition do not belong together")
    return EventPublishedPayload(
        competition=competition.ref(),
        event=event.ref(),
        team_size=event.max_team_size,
        scheme=event.scheme,
        quota_per_union=event.quota_per_union,
        minimum_entrants=event.minimum_entrants,
        registration_opens_at=competition.opens_at,
        registration_closes_at=competition.closes_at,
        starts_at=event.starts_at,
    )
