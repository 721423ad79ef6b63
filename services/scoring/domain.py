"""Pure scoring domain: marks, corrections, standings, divergence flags. No I/O.

The rules (DESIGN.md "Domain rules"), and the choices made where the design is silent:

* **Marks are append-only.** A `Mark` targets (judge, entry, member, component). A correction is
  a new mark that names, in `supersedes`, the *current* mark of the same judge, entry, member and
  component, and carries a non-empty reason. A judge who already has a current mark for a target
  must correct it; a second uncorrelated mark is refused, so every change leaves a reason.
  Resubmitting a mark id with the same content is a no-op (`recorded_at` is not content: the
  server stamps it on receipt, so a client retry may carry a different time); a different content
  under the same id is a `MarkConflict`.
* **Component score.** A panel component is the mean of the judges' current marks (one per
  judge), dropping the single highest and single lowest mark when 5 or more judges marked. A
  non-panel component (an imported theory exam) takes the latest current mark, by
  (`recorded_at`, `mark_id`).
* **Rounding** (Decimal, ROUND_HALF_UP, two places) happens at exactly these steps:
  1. each component score is rounded;
  2. the total is the weighted sum of the *rounded* component scores, then rounded;
  3. for a team marked per member, the team total is the mean of the members' (rounded) totals,
     then rounded; each team component shown is the mean of the members' rounded component
     scores, then rounded (shown for information and the tie-break; the team total is *not*
     recomputed from them, so it may differ from their weighted sum by a cent).
* **Missing component.** It counts as 0 in the total; the entry is `complete=False` and never
  qualified; it is still ranked by its total (a no-show ranks last with 0.00). Incomplete
  entries are reported in `Standings.incomplete_entries` but do not block finalisation,
  because a contestant who did not turn up must not stop an event from finishing.
* **Qualified** only if complete and every component score >= its pass mark. A team marked per
  member qualifies only if every member qualifies.
* **Teams.** An entry with more than one member is marked per member (marks carry the
  member's `worker_id` as `member_id`) unless `scheme.team_marked_as_unit`; then, like every
  individual entry, its marks carry `member_id=None`. Marks whose target does not fit the entry
  are ignored here; the service refuses them up front with `check_mark_target`.
* **Ranking.** By total descending, then the tie-break component descending (the component
  named "practical"; without one, the heaviest panel component, first in scheme order on equal
  weights; a missing score counts 0); still equal means a shared rank, competition style
  (1, 1, 3). Lines of a shared rank are listed by entry id so output is deterministic.
* **Divergence.** Within one (entry, member, component) — any component, panel or not — two
  current marks from different judges that differ by more than the scheme's tolerance flag the
  entry. A chief judge's `Resolution` covers the set of mark ids current when it was made: a
  divergent pair of marks is resolved when one resolution of that group covers both. So the
  flag comes back only when a mark arriving after the resolution (a new judge, or a
  correction) diverges again. Any unresolved flag blocks finalisation.
* **Incremental use.** `entry_score` scores one entry from its own marks; `build_standings`
  ranks already-scored entries. The service keeps one `EntryScore` per entry, recomputes only
  the entry a new mark touches, and re-ranks (a sort). `compute_standings` does both at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from itertools import combinations
from typing import Any

from shared.errors import DomainError
from shared.events import (
    MarkRecordedPayload,
    Member,
    ResultLine,
    ScoringComponent,
    ScoringScheme,
)

CENTS = Decimal("0.01")
ZERO = Decimal("0.00")
MIN_SCORE = Decimal("0")
MAX_SCORE = Decimal("100")
TRIM_FROM_JUDGES = 5
"""With this many judges or more, a panel score drops the single highest and lowest mark."""
TIEBREAK_COMPONENT = "practical"


def round_score(value: Decimal) -> Decimal:
    """Two places, ROUND_HALF_UP: the one rounding rule of every score and total."""
    return value.quantize(CENTS, rounding=ROUND_HALF_UP)


# --- errors ---------------------------------------------------------------------------------


class ScoringError(DomainError):
    """A domain rule was broken. `rule` is a stable code; `field` names the offending input.

    A `DomainError`, so the HTTP edge answers it with its `status_code` (422 unless a subclass
    says otherwise) and consumers dead-letter it.
    """

    rule: str = "scoring"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(type(self).rule, message, field)
        self.message = message


class MarkConflict(ScoringError):
    rule = "mark.id_conflict"
    status_code = 409


class InvalidCorrection(ScoringError):
    rule = "mark.invalid_correction"


class ValueOutOfRange(ScoringError):
    rule = "mark.value_out_of_range"


class UnknownComponent(ScoringError):
    rule = "mark.unknown_component"


class InvalidMarkTarget(ScoringError):
    rule = "mark.invalid_target"


class JudgeNotAssigned(ScoringError):
    rule = "judge.not_assigned"
    status_code = 403


class ConflictOfInterest(ScoringError):
    rule = "judge.conflict_of_interest"
    status_code = 403


class NotChiefJudge(ScoringError):
    rule = "resolution.not_chief_judge"
    status_code = 403


class InvalidResolution(ScoringError):
    rule = "resolution.invalid"


class InvalidScheme(ScoringError):
    rule = "scheme.invalid"


# --- marks ----------------------------------------------------------------------------------

MarkTarget = tuple[str, str, str | None, str]
"""(judge_id, entry_id, member_id, component): one judge's slot for one score."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Mark:
    mark_id: str
    judge_id: str
    entry_id: str
    component: str
    value: Decimal
    recorded_at: datetime
    member_id: str | None = None
    supersedes: str | None = None
    reason: str = ""

    @property
    def target(self) -> MarkTarget:
        return (self.judge_id, self.entry_id, self.member_id, self.component)

    def same_content(self, other: Mark) -> bool:
        """Equal in everything a judge submits; `recorded_at` is the server's receipt time."""
        return (
            self.mark_id == other.mark_id
            and self.target == other.target
            and self.value == other.value
            and self.supersedes == other.supersedes
            and self.reason == other.reason
        )

    @classmethod
    def from_payload(cls, payload: MarkRecordedPayload) -> Mark:
        return cls(
            mark_id=payload.mark_id,
            judge_id=payload.judge_id,
            entry_id=payload.entry_id,
            member_id=payload.member_id,
            component=payload.component,
            value=payload.value,
            supersedes=payload.supersedes,
            reason=payload.reason,
            recorded_at=payload.recorded_at,
        )

    def to_payload(self, event_id: str, *, validate: bool = True) -> MarkRecordedPayload:
        """`validate=False` builds it without pydantic's checks, for a mark the domain already
        admitted (see `scoring.handlers.mark_recorded`: the hot path of every mark)."""
        fields: dict[str, Any] = {
            "mark_id": self.mark_id,
            "event_id": event_id,
            "entry_id": self.entry_id,
            "member_id": self.member_id,
            "judge_id": self.judge_id,
            "component": self.component,
            "value": self.value,
            "supersedes": self.supersedes,
            "reason": self.reason,
            "recorded_at": self.recorded_at,
        }
        if validate:
            return MarkRecordedPayload(**fields)
        return MarkRecordedPayload.model_construct(**fields)


class AddOutcome(StrEnum):
    ADDED = "added"
    DUPLICATE_NOOP = "duplicate_noop"


class MarkBook:
    """All marks of one event, append-only, with O(1) add and per-entry lookups.

    `add` enforces the correction rules; the book never forgets a mark. Replaying stored marks
    in their recorded order through `add` (or the constructor) rebuilds the same book.
    """

    def __init__(self, marks: Iterable[Mark] = ()) -> None:
        self._by_id: dict[str, Mark] = {}
        self._order: list[Mark] = []
        self._history_by_entry: dict[str, list[Mark]] = defaultdict(list)
        # Insertion-ordered, so current_marks() lists targets in the order first marked.
        self._current_by_entry: dict[str, dict[MarkTarget, Mark]] = defaultdict(dict)
        self._superseded_by: dict[str, str] = {}
        for mark in marks:
            self.add(mark)

    def add(self, mark: Mark) -> AddOutcome:
        known = self._by_id.get(mark.mark_id)
        if known is not None:
            if known.same_content(mark):
                return AddOutcome.DUPLICATE_NOOP
            raise MarkConflict(
                f"mark id {mark.mark_id!r} was already recorded with different content; "
                "a mark id can be submitted only once (send a correction with a new id instead)",
                field="mark_id",
            )
        current = self._current_by_entry[mark.entry_id].get(mark.target)
        if mark.supersedes is None:
            if current is not None:
                raise InvalidCorrection(
                    f"judge {mark.judge_id!r} already has mark {current.mark_id!r} for entry "
                    f"{mark.entry_id!r}{_member_text(mark.member_id)} component "
                    f"{mark.component!r}; a change must be a correction that supersedes it "
                    "and gives a reason",
                    field="supersedes",
                )
        else:
            self._check_correction(mark, current)
        self._by_id[mark.mark_id] = mark
        self._order.append(mark)
        self._history_by_entry[mark.entry_id].append(mark)
        if mark.supersedes is not None:
            self._superseded_by[mark.supersedes] = mark.mark_id
        # Assigning to an existing key keeps its position: a corrected target stays in place.
        self._current_by_entry[mark.entry_id][mark.target] = mark
        return AddOutcome.ADDED

    def _check_correction(self, mark: Mark, current: Mark | None) -> None:
        assert mark.supersedes is not None
        original = self._by_id.get(mark.supersedes)
        if original is None:
            raise InvalidCorrection(
                f"correction {mark.mark_id!r} supersedes unknown mark {mark.supersedes!r}",
                field="supersedes",
            )
        if original.target != mark.target:
            raise InvalidCorrection(
                f"correction {mark.mark_id!r} must target the same judge, entry, member and "
                f"component as the mark it supersedes ({mark.supersedes!r})",
                field="supersedes",
            )
        if current is not None and current.mark_id != original.mark_id:
            raise InvalidCorrection(
                f"mark {original.mark_id!r} was already superseded; correct the current mark "
                f"{current.mark_id!r} instead",
                field="supersedes",
            )
        if not mark.reason.strip():
            raise InvalidCorrection(
                f"correction {mark.mark_id!r} must give a reason", field="reason"
            )

    def get(self, mark_id: str) -> Mark | None:
        return self._by_id.get(mark_id)

    def superseded_by(self, mark_id: str) -> str | None:
        return self._superseded_by.get(mark_id)

    def current_marks(self, entry_id: str) -> list[Mark]:
        """The marks that count now: per (judge, member, component), the latest correction."""
        return list(self._current_by_entry.get(entry_id, {}).values())

    def history(self, entry_id: str) -> list[Mark]:
        """Every mark ever recorded for the entry, corrections included, in recorded order."""
        return list(self._history_by_entry.get(entry_id, ()))

    def entry_ids(self) -> list[str]:
        return list(self._history_by_entry)

    def __iter__(self) -> Iterator[Mark]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, mark_id: object) -> bool:
        return mark_id in self._by_id


def current_marks_of(marks: Iterable[Mark]) -> list[Mark]:
    """Current marks of any set of marks, independent of iteration order.

    A mark is current when no other mark in the set supersedes it. Where the set still holds
    several for one target (data that did not pass through a `MarkBook`), the latest by
    (`recorded_at`, `mark_id`) wins, so the answer never depends on the order given.
    """
    all_marks = list(marks)
    superseded = {m.supersedes for m in all_marks if m.supersedes is not None}
    best: dict[MarkTarget, Mark] = {}
    for mark in all_marks:
        if mark.mark_id in superseded:
            continue
        held = best.get(mark.target)
        if held is None or _latest_key(mark) > _latest_key(held):
            best[mark.target] = mark
    return sorted(best.values(), key=_latest_key)


def _latest_key(mark: Mark) -> tuple[datetime, str]:
    return (mark.recorded_at, mark.mark_id)


def _member_text(member_id: str | None) -> str:
    return "" if member_id is None else f" member {member_id!r}"


# --- roster, panel, resolutions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RosterEntry:
    entry_id: str
    union_id: str
    union_name: str
    team_name: str
    members: tuple[Member, ...]

    def member_ids(self) -> tuple[str, ...]:
        return tuple(member.worker_id for member in self.members)


def marked_per_member(scheme: ScoringScheme, entry: RosterEntry) -> bool:
    """A team (2+ members) is marked per member unless the scheme marks teams as a unit."""
    return len(entry.members) > 1 and not scheme.team_marked_as_unit


@dataclass(frozen=True)
class JudgePanel:
    """Judges assigned to one event; a union id of None marks a judge with no union tie."""

    event_id: str
    judges: Mapping[str, str | None]
    chief_judge_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """The chief judge's decision that a divergence stands; covers the marks current then."""

    entry_id: str
    component: str
    resolved_by: str
    note: str
    covered_mark_ids: frozenset[str]
    resolved_at: datetime
    member_id: str | None = None

    @property
    def group(self) -> tuple[str, str | None, str]:
        return (self.entry_id, self.member_id, self.component)


@dataclass(frozen=True, slots=True)
class DivergenceFlag:
    entry_id: str
    member_id: str | None
    component: str
    spread: Decimal
    mark_ids: tuple[str, ...]
    """Current marks of the group; a resolution made now covers exactly these."""

    def describe(self, tolerance: Decimal) -> str:
        return (
            f"entry {self.entry_id!r}{_member_text(self.member_id)} component "
            f"{self.component!r}: judges' marks differ by {self.spread} (tolerance "
            f"{tolerance}); the chief judge must resolve it"
        )


def resolve_divergence(
    panel: JudgePanel,
    current_marks: Iterable[Mark],
    *,
    entry_id: str,
    component: str,
    member_id: str | None = None,
    resolved_by: str,
    note: str,
    resolved_at: datetime,
) -> Resolution:
    """Build the chief judge's resolution of one group, covering its current mark ids."""
    if resolved_by != panel.chief_judge_id:
        raise NotChiefJudge(
            f"only the chief judge of event {panel.event_id!r} may resolve a divergence; "
            f"{resolved_by!r} is not",
            field="resolved_by",
        )
    if not note.strip():
        raise InvalidResolution("a resolution must carry a note", field="note")
    covered = frozenset(
        m.mark_id
        for m in current_marks
        if m.entry_id == entry_id and m.member_id == member_id and m.component == component
    )
    if not covered:
        raise InvalidResolution(
            f"entry {entry_id!r}{_member_text(member_id)} has no current marks for component "
            f"{component!r}",
            field="component",
        )
    return Resolution(
        entry_id=entry_id,
        member_id=member_id,
        component=component,
        resolved_by=resolved_by,
        note=note,
        covered_mark_ids=covered,
        resolved_at=resolved_at,
    )


# --- validation helpers for the service layer -----------------------------------------------


def check_scheme(scheme: ScoringScheme) -> None:
    """Component names unique, weights summing to exactly 1 (so totals stay within 0–100)."""
    names = [c.name for c in scheme.components]
    if not names:
        raise InvalidScheme("a scoring scheme needs at least one component", field="components")
    if len(set(names)) != len(names):
        raise InvalidScheme(f"component names must be unique: {names}", field="components")
    weight_sum = sum((c.weight for c in scheme.components), Decimal(0))
    if weight_sum != 1:
        raise InvalidScheme(
            f"component weights must sum to 1, not {weight_sum}", field="components"
        )


def check_value_in_range(value: Decimal) -> Decimal:
    """A mark is a Decimal from 0 to 100 with at most two decimal places."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueOutOfRange(
            f"a mark must be a finite decimal number, not {value!r}", field="value"
        )
    if not MIN_SCORE <= value <= MAX_SCORE:
        raise ValueOutOfRange(f"a mark must be between 0 and 100, not {value}", field="value")
    if value != value.quantize(CENTS):
        raise ValueOutOfRange(f"a mark has at most two decimal places, not {value}", field="value")
    return value


def check_component_known(scheme: ScoringScheme, component: str) -> ScoringComponent:
    for candidate in scheme.components:
        if candidate.name == component:
            return candidate
    known = ", ".join(c.name for c in scheme.components)
    raise UnknownComponent(
        f"component {component!r} is not in this event's scoring scheme ({known})",
        field="component",
    )


def check_judge_may_mark(
    panel: JudgePanel, judge_id: str, entry_union_id: str, event_id: str
) -> None:
    """Judges mark only events they are assigned to, never an entry of their own union."""
    if panel.event_id != event_id or judge_id not in panel.judges:
        raise JudgeNotAssigned(
            f"judge {judge_id!r} is not assigned to event {event_id!r}", field="judge_id"
        )
    judge_union = panel.judges[judge_id]
    if judge_union is not None and judge_union == entry_union_id:
        raise ConflictOfInterest(
            f"judge {judge_id!r} belongs to union {judge_union!r} and may not mark an entry "
            "of their own union (conflict of interest)",
            field="judge_id",
        )


def check_mark_target(scheme: ScoringScheme, entry: RosterEntry, member_id: str | None) -> None:
    """Per-member teams need a member id of the team; other entries take member_id None."""
    if marked_per_member(scheme, entry):
        if member_id not in entry.member_ids():
            raise InvalidMarkTarget(
                f"entry {entry.entry_id!r} is a team marked per member; member_id must be one "
                f"of {list(entry.member_ids())}, not {member_id!r}",
                field="member_id",
            )
    elif member_id is not None:
        raise InvalidMarkTarget(
            f"entry {entry.entry_id!r} is marked as a whole; member_id must be empty",
            field="member_id",
        )


# --- scoring --------------------------------------------------------------------------------


def panel_score(values: Sequence[Decimal]) -> Decimal:
    """Mean of the judges' marks, dropping the single highest and lowest with 5+ judges.

    Rounded to two places. `values` holds one current mark per judge and is not empty.
    """
    if not values:
        raise ValueError("a panel score needs at least one mark")
    ordered = sorted(values)
    if len(ordered) >= TRIM_FROM_JUDGES:
        ordered = ordered[1:-1]
    return round_score(sum(ordered, Decimal(0)) / len(ordered))


def tiebreak_component(scheme: ScoringScheme) -> str | None:
    """ "practical" if the scheme has it, else its heaviest panel component (first on ties)."""
    names = [c.name for c in scheme.components]
    if TIEBREAK_COMPONENT in names:
        return TIEBREAK_COMPONENT
    panels = [c for c in scheme.components if c.panel]
    if not panels:
        return None
    heaviest = max(c.weight for c in panels)
    return next(c.name for c in panels if c.weight == heaviest)


@dataclass(frozen=True, slots=True)
class ScoredUnit:
    """The score of one individual, one team member, or one team marked as a unit."""

    total: Decimal
    components: Mapping[str, Decimal]
    qualified: bool
    complete: bool


@dataclass(frozen=True, slots=True)
class MemberScore:
    member_id: str
    total: Decimal
    components: Mapping[str, Decimal]
    qualified: bool
    complete: bool


@dataclass(frozen=True, slots=True)
class EntryScore:
    """One entry scored from its own marks, before ranking."""

    entry_id: str
    total: Decimal
    components: Mapping[str, Decimal]
    tiebreak: Decimal
    qualified: bool
    complete: bool
    flags: tuple[DivergenceFlag, ...]
    mark_ids: tuple[str, ...]
    """Current marks the scores were computed from (including marks dropped by trimming,
    since which marks are dropped depends on all of them)."""
    members: tuple[MemberScore, ...] = ()

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


def _score_unit(
    scheme: ScoringScheme, marks_by_component: Mapping[str, list[Mark]], used: set[str]
) -> ScoredUnit:
    components: dict[str, Decimal] = {}
    total = Decimal(0)
    passes = True
    for component in scheme.components:
        marks = marks_by_component.get(component.name)
        if not marks:
            passes = False  # missing: counts 0 in the total, and cannot pass
            continue
        if component.panel:
            score = panel_score([m.value for m in marks])
            used.update(m.mark_id for m in marks)
        else:
            latest = max(marks, key=_latest_key)
            score = round_score(latest.value)
            used.add(latest.mark_id)
        components[component.name] = score
        total += component.weight * score
        passes = passes and score >= component.pass_mark
    complete = len(components) == len(scheme.components)
    return ScoredUnit(round_score(total), components, passes and complete, complete)


def _divergences(
    tolerance: Decimal,
    entry_id: str,
    groups: Mapping[tuple[str | None, str], list[Mark]],
    resolutions: Iterable[Resolution],
) -> tuple[DivergenceFlag, ...]:
    covered_by_group: dict[tuple[str | None, str], list[frozenset[str]]] = defaultdict(list)
    for resolution in resolutions:
        if resolution.entry_id == entry_id:
            covered_by_group[(resolution.member_id, resolution.component)].append(
                resolution.covered_mark_ids
            )
    flags: list[DivergenceFlag] = []
    for (member_id, component), marks in groups.items():
        if len(marks) < 2:
            continue
        values = [m.value for m in marks]
        spread = max(values) - min(values)
        if spread <= tolerance:
            continue
        covers = covered_by_group.get((member_id, component), [])
        unresolved = any(
            abs(a.value - b.value) > tolerance
            and not any(a.mark_id in cover and b.mark_id in cover for cover in covers)
            for a, b in combinations(marks, 2)
        )
        if unresolved:
            flags.append(
                DivergenceFlag(
                    entry_id=entry_id,
                    member_id=member_id,
                    component=component,
                    spread=spread,
                    mark_ids=tuple(sorted(m.mark_id for m in marks)),
                )
            )
    flags.sort(key=lambda f: (f.member_id or "", f.component))
    return tuple(flags)


def entry_score(
    scheme: ScoringScheme,
    entry: RosterEntry,
    marks_for_entry: Iterable[Mark],
    resolutions: Iterable[Resolution] = (),
) -> EntryScore:
    """Score one entry from its marks (any order; superseded ones are skipped).

    Marks of other entries, of unknown components, or whose member id does not fit the entry
    are ignored. Resolutions of other entries are ignored.
    """
    per_member = marked_per_member(scheme, entry)
    known_components = {c.name for c in scheme.components}
    member_ids = set(entry.member_ids())
    # (member_id, component) -> current marks, one per judge
    groups: dict[tuple[str | None, str], list[Mark]] = defaultdict(list)
    for mark in current_marks_of(m for m in marks_for_entry if m.entry_id == entry.entry_id):
        if mark.component not in known_components:
            continue
        if (mark.member_id in member_ids) if per_member else (mark.member_id is None):
            groups[(mark.member_id, mark.component)].append(mark)

    used: set[str] = set()
    members: tuple[MemberScore, ...] = ()
    if per_member:
        member_scores = []
        for member_id in entry.member_ids():
            by_component = {c: ms for (m, c), ms in groups.items() if m == member_id}
            unit = _score_unit(scheme, by_component, used)
            member_scores.append(
                MemberScore(member_id, unit.total, unit.components, unit.qualified, unit.complete)
            )
        members = tuple(member_scores)
        team = _team_of(scheme, member_scores)
    else:
        team = _score_unit(scheme, {c: ms for (_, c), ms in groups.items()}, used)

    tiebreak_name = tiebreak_component(scheme)
    tiebreak = team.components.get(tiebreak_name, ZERO) if tiebreak_name else ZERO
    return EntryScore(
        entry_id=entry.entry_id,
        total=team.total,
        components=team.components,
        tiebreak=tiebreak,
        qualified=team.qualified,
        complete=team.complete,
        flags=_divergences(scheme.divergence_tolerance, entry.entry_id, groups, resolutions),
        mark_ids=tuple(sorted(used)),
        members=members,
    )


def _team_of(scheme: ScoringScheme, members: Sequence[MemberScore]) -> ScoredUnit:
    """Team = mean of members' totals; a component is shown only if every member has it."""
    count = len(members)
    total = round_score(sum((m.total for m in members), Decimal(0)) / count)
    components = {
        c.name: round_score(sum((m.components[c.name] for m in members), Decimal(0)) / count)
        for c in scheme.components
        if all(c.name in m.components for m in members)
    }
    return ScoredUnit(
        total=total,
        components=components,
        qualified=all(m.qualified for m in members),
        complete=all(m.complete for m in members),
    )


# --- standings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StandingLine:
    entry_id: str
    rank: int
    total: Decimal
    components: Mapping[str, Decimal]
    qualified: bool
    complete: bool
    flagged: bool
    mark_ids: tuple[str, ...]
    tiebreak: Decimal
    members: tuple[MemberScore, ...] = ()


@dataclass(frozen=True)
class Standings:
    lines: list[StandingLine]
    flags: tuple[DivergenceFlag, ...]
    tolerance: Decimal
    incomplete_entries: tuple[str, ...] = ()

    @property
    def flagged_entries(self) -> tuple[str, ...]:
        return tuple(sorted({f.entry_id for f in self.flags}))

    @property
    def blocking_reasons(self) -> tuple[str, ...]:
        """Why the event cannot be finalised now: the unresolved divergence flags."""
        return tuple(flag.describe(self.tolerance) for flag in self.flags)

    @property
    def can_finalise(self) -> bool:
        return not self.flags

    @property
    def marks_counted(self) -> int:
        return sum(len(line.mark_ids) for line in self.lines)


def build_standings(scheme: ScoringScheme, scores: Iterable[EntryScore]) -> Standings:
    """Rank scored entries: total desc, tie-break desc, then shared rank (1, 1, 3)."""
    ordered = sorted(scores, key=lambda s: (-s.total, -s.tiebreak, s.entry_id))
    lines: list[StandingLine] = []
    rank = 0
    previous: tuple[Decimal, Decimal] | None = None
    for position, score in enumerate(ordered, start=1):
        key = (score.total, score.tiebreak)
        if key != previous:
            rank, previous = position, key
        lines.append(
            StandingLine(
                entry_id=score.entry_id,
                rank=rank,
                total=score.total,
                components=score.components,
                qualified=score.qualified,
                complete=score.complete,
                flagged=score.flagged,
                mark_ids=score.mark_ids,
                tiebreak=score.tiebreak,
                members=score.members,
            )
        )
    return Standings(
        lines=lines,
        flags=tuple(flag for score in ordered for flag in score.flags),
        tolerance=scheme.divergence_tolerance,
        incomplete_entries=tuple(sorted(s.entry_id for s in ordered if not s.complete)),
    )


def compute_standings(
    scheme: ScoringScheme,
    roster: Sequence[RosterEntry],
    marks: Iterable[Mark],
    resolutions: Iterable[Resolution] = (),
) -> Standings:
    """Score and rank every roster entry; marks of entries not on the roster are ignored."""
    check_scheme(scheme)
    marks_by_entry: dict[str, list[Mark]] = defaultdict(list)
    for mark in marks:
        marks_by_entry[mark.entry_id].append(mark)
    resolutions_by_entry: dict[str, list[Resolution]] = defaultdict(list)
    for resolution in resolutions:
        resolutions_by_entry[resolution.entry_id].append(resolution)
    return build_standings(
        scheme,
        (
            entry_score(
                scheme,
                entry,
                marks_by_entry.get(entry.entry_id, ()),
                resolutions_by_entry.get(entry.entry_id, ()),
            )
            for entry in roster
        ),
    )


def to_result_lines(standings: Standings, roster: Sequence[RosterEntry]) -> tuple[ResultLine, ...]:
    """The contract lines of `scoring.results` / `scoring.standings`, in rank order."""
    by_id = {entry.entry_id: entry for entry in roster}
    result: list[ResultLine] = []
    for line in standings.lines:
        entry = by_id[line.entry_id]
        result.append(
            ResultLine(
                entry_id=line.entry_id,
                rank=line.rank,
                total=line.total,
                components=dict(line.components),
                qualified=line.qualified,
                union_id=entry.union_id,
                union_name=entry.union_name,
                team_name=entry.team_name,
                members=entry.members,
                mark_ids=line.mark_ids,
            )
        )
    return tuple(result)


__all__ = [
    "AddOutcome",
    "ConflictOfInterest",
    "DivergenceFlag",
    "EntryScore",
    "InvalidCorrection",
    "InvalidMarkTarget",
    "InvalidResolution",
    "InvalidScheme",
    "JudgeNotAssigned",
    "Mark",
    "MarkBook",
    "MarkConflict",
    "MemberScore",
    "NotChiefJudge",
    "Resolution",
    "RosterEntry",
    "ScoringError",
    "StandingLine",
    "Standings",
    "UnknownComponent",
    "ValueOutOfRange",
    "build_standings",
    "check_component_known",
    "check_judge_may_mark",
    "check_mark_target",
    "check_scheme",
    "check_value_in_range",
    "compute_standings",
    "current_marks_of",
    "entry_score",
    "marked_per_member",
    "panel_score",
    "resolve_divergence",
    "round_score",
    "tiebreak_component",
    "to_result_lines",
]
