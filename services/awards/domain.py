"""The immediate-awarding (即时授予) engine: pure functions from final results to award decisions.

No I/O here. The adapter around it loads the policy, asks the award store what a person already
holds, calls `decide` (or `decide_organisation_award`), then `reconcile` against the awards that
stand for the event, and writes grants and revocations with their outgoing events in one
transaction.

Rules, as DESIGN.md states them and the policy files spell them out:
- Ranks are the published ranks. Entries that share a rank share it, so two entries tied at
  rank 1 are both rank 1 and both earn a rank-1 award if each is eligible.
- An ineligible entry does not consume an award. By default nobody moves up into its place (the
  place stays vacant); a rule with ``ineligible_passes_down: true`` strikes ineligible entries
  from the ranking first, so the next eligible entries move up.
- A quota is a hard cap per event; a tie that would overflow it is withheld as a whole rather
  than broken arbitrarily (the committee decides).
- An amendment re-evaluates the event: what is no longer earned is revoked, what is newly earned
  is granted, what still holds is left alone; an award is identified by `Decision.award_key`, so
  nothing is granted twice, a redelivered version changes nothing and an older one is ignored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from itertools import groupby
from typing import Protocol

from services.awards.policy import AwardPolicy, AwardRule
from shared.events import (
    AwardGrantedPayload,
    AwardReason,
    AwardRevokedPayload,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    EventFormat,
    EventRef,
    EventResultsPayload,
    Member,
    Recipient,
    RecipientKind,
    ResultLine,
)

# Publicity periods are counted in calendar days where the competition is held. China has had
# one UTC offset and no daylight saving since 1991, so a fixed offset is exact (and needs no
# tz database on the host).
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


def award_key(award_type: AwardType, scope_id: str, recipient_id: str) -> str:
    """Identity of "this award for this recipient in this event (or competition)"."""
    return f"{award_type.value}:{scope_id}:{recipient_id}"


def publicity_ends_on(finalised_at: datetime, publicity_days: int) -> date:
    """Last day of the publicity period (公示): the finalisation date in China + the days."""
    return finalised_at.astimezone(CHINA_STANDARD_TIME).date() + timedelta(days=publicity_days)


# --- decisions and the awards that stand ------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """An award the policy says a recipient has earned, with the facts that earned it."""

    award_type: AwardType
    competition: CompetitionRef
    event: EventRef | None  # None for the competition-wide organisation award
    recipient: Recipient
    rank: int | None
    reason: AwardReason
    result_version: int
    mark_ids: tuple[str, ...]
    publicity_ends_on: date

    @property
    def scope_id(self) -> str:
        return self.event.event_id if self.event else self.competition.competition_id

    @property
    def award_key(self) -> str:
        return award_key(self.award_type, self.scope_id, self.recipient.recipient_id)

    def granted_payload(
        self, *, award_id: str, certificate_no: str, granted_at: datetime
    ) -> AwardGrantedPayload:
        return AwardGrantedPayload(
            award_id=award_id,
            certificate_no=certificate_no,
            award_type=self.award_type,
            competition=self.competition,
            event=self.event,
            recipient=self.recipient,
            rank=self.rank,
            reason=self.reason,
            result_version=self.result_version,
            mark_ids=self.mark_ids,
            publicity_ends_on=self.publicity_ends_on,
            granted_at=granted_at,
        )


@dataclass(frozen=True)
class ExistingAward:
    """An award that currently stands (granted and not revoked), as the award store knows it."""

    award_key: str
    award_id: str
    certificate_no: str
    award_type: AwardType
    competition: CompetitionRef
    event: EventRef | None
    recipient: Recipient
    result_version: int

    @classmethod
    def from_decision(
        cls, decision: Decision, *, award_id: str, certificate_no: str
    ) -> ExistingAward:
        return cls(
            award_key=decision.award_key,
            award_id=award_id,
            certificate_no=certificate_no,
            award_type=decision.award_type,
            competition=decision.competition,
            event=decision.event,
            recipient=decision.recipient,
            result_version=decision.result_version,
        )

    def revoked_payload(self, *, result_version: int, revoked_at: datetime) -> AwardRevokedPayload:
        return AwardRevokedPayload(
            award_id=self.award_id,
            certificate_no=self.certificate_no,
            award_type=self.award_type,
            competition=self.competition,
            event=self.event,
            recipient=self.recipient,
            reason=revocation_reason(self, result_version),
            result_version=result_version,
            revoked_at=revoked_at,
        )


def revocation_reason(award: ExistingAward, result_version: int) -> AwardReason:
    return AwardReason(
        rule="no-longer-earned",
        facts={
            "award_key": award.award_key,
            "granted_under_version": award.result_version,
            "version": result_version,
            "explanation": f"not earned under result version {result_version}",
        },
    )


@dataclass(frozen=True)
class Withheld:
    """An award a rule did not give, and why: what a chief judge asks about after the ceremony."""

    rule: str
    award_type: AwardType
    entry_id: str | None  # None when the whole rule was withheld (e.g. too few entrants)
    rank: int | None
    reason: str


@dataclass(frozen=True)
class Evaluation:
    """Everything a policy says about one result: the decisions and what was withheld."""

    decisions: list[Decision] = field(default_factory=list)
    withheld: list[Withheld] = field(default_factory=list)


# --- what a person already holds -------------------------------------------------------------


class PriorMedals(Protocol):
    """Answers: has this person already received this award in this year at this level, from
    an event other than the one being decided? (The same event's earlier versions do not count:
    reconciliation takes care of those.)"""

    def already_awarded(
        self,
        award_type: AwardType,
        worker_id: str,
        year: int,
        level: CompetitionLevel,
        *,
        other_than_event_id: str,
    ) -> bool: ...


@dataclass(frozen=True)
class PriorAward:
    award_type: AwardType
    worker_id: str
    year: int
    level: CompetitionLevel
    event_id: str


@dataclass(frozen=True)
class KnownPriorMedals:
    """`PriorMedals` over a known set of awards: for dry runs, tests and preloaded snapshots."""

    awards: frozenset[PriorAward] = frozenset()

    def already_awarded(
        self,
        award_type: AwardType,
        worker_id: str,
        year: int,
        level: CompetitionLevel,
        *,
        other_than_event_id: str,
    ) -> bool:
        return any(
            held.award_type is award_type
            and held.worker_id == worker_id
            and held.year == year
            and held.level is level
            and held.event_id != other_than_event_id
            for held in self.awards
        )


NO_PRIOR_MEDALS = KnownPriorMedals()


# --- deciding one event -----------------------------------------------------------------------


def decide(
    policy: AwardPolicy, result: EventResultsPayload, prior_person_medals: PriorMedals
) -> list[Decision]:
    """The awards ``result`` earns under ``policy`` (organisation awards excluded)."""
    return dry_run(policy, result, prior_person_medals).decisions


def dry_run(
    policy: AwardPolicy,
    result: EventResultsPayload,
    prior_person_medals: PriorMedals = NO_PRIOR_MEDALS,
) -> Evaluation:
    """Evaluate a result without touching any state: decisions plus what was withheld and why."""
    _require_policy_level(policy, result.competition)
    ends_on = publicity_ends_on(result.finalised_at, policy.publicity_days)
    decisions: dict[str, Decision] = {}
    withheld: list[Withheld] = []
    for rule in policy.rules:
        if rule.award_type is AwardType.ORGANISATION_AWARD:
            continue
        if rule.format is not None and rule.format is not result.event.format:
            continue
        rule_decisions, rule_withheld = _apply_rule(
            policy, rule, result, prior_person_medals, ends_on
        )
        for decision in rule_decisions:
            decisions.setdefault(decision.award_key, decision)
        withheld.extend(rule_withheld)
    return Evaluation(decisions=list(decisions.values()), withheld=withheld)


def _apply_rule(
    policy: AwardPolicy,
    rule: AwardRule,
    result: EventResultsPayload,
    prior: PriorMedals,
    ends_on: date,
) -> tuple[list[Decision], list[Withheld]]:
    minimum = policy.minimum_entrants_for(rule)
    if result.entrants < minimum:
        reason = f"event had {result.entrants} entrants; the rule needs at least {minimum}"
        return [], [Withheld(rule.name, rule.award_type, None, None, reason)]

    lines = sorted(result.lines, key=lambda line: (line.rank, line.entry_id))
    failures = {line.entry_id: _ineligibility(rule, line, result, prior) for line in lines}
    eligible_ranks = [line.rank for line in lines if not failures[line.entry_id]]

    withheld: list[Withheld] = []
    candidates: list[tuple[int, ResultLine]] = []  # (position the rule judges by, line)
    for line in lines:
        position = _position(rule, line, eligible_ranks)
        if not rule.rank_from <= position <= rule.rank_to:
            continue
        reasons = failures[line.entry_id]
        if reasons:
            vacancy = (
                "the next eligible entry moves up"
                if rule.ineligible_passes_down
                else "the place stays vacant (no move-up)"
            )
            withheld.append(
                Withheld(
                    rule.name,
                    rule.award_type,
                    line.entry_id,
                    line.rank,
                    f"{'; '.join(reasons)}; {vacancy}",
                )
            )
        else:
            candidates.append((position, line))

    decisions: list[Decision] = []
    quota_closed = False
    for position, tied in groupby(candidates, key=lambda candidate: candidate[0]):
        group = [line for _, line in tied]
        overflow = rule.quota is not None and len(decisions) + len(group) > rule.quota
        if quota_closed or overflow:
            why = (
                f"quota of {rule.quota} per event reached"
                if quota_closed or len(group) == 1
                else f"{len(group)} entries tied at position {position} would exceed the quota "
                f"of {rule.quota}; withheld for the committee"
            )
            withheld.extend(
                Withheld(rule.name, rule.award_type, line.entry_id, line.rank, why)
                for line in group
            )
            quota_closed = True
            continue
        decisions.extend(
            _decision(rule, line, position, len(group), result, minimum, ends_on) for line in group
        )
    return decisions, withheld


def _position(rule: AwardRule, line: ResultLine, eligible_ranks: Sequence[int]) -> int:
    """The rank a rule judges an entry by.

    Without move-up it is the published rank. With move-up, ineligible entries are struck out
    first: 1 + the number of eligible entries strictly ahead (so ties stay ties).
    """
    if not rule.ineligible_passes_down:
        return line.rank
    return 1 + sum(1 for rank in eligible_ranks if rank < line.rank)


def _ineligibility(
    rule: AwardRule, line: ResultLine, result: EventResultsPayload, prior: PriorMedals
) -> list[str]:
    """Why ``line`` cannot earn ``rule``'s award, apart from its rank (empty = eligible)."""
    reasons: list[str] = []
    if rule.qualified and not line.qualified:
        reasons.append("not qualified")
    if not line.members:
        reasons.append("result line names no contestant")
        return reasons
    if result.event.format is EventFormat.INDIVIDUAL and len(line.members) != 1:
        reasons.append(f"individual event line names {len(line.members)} contestants")
        return reasons
    if rule.front_line and not _all_front_line(line.members):
        reasons.append(
            "not a front-line worker"
            if len(line.members) == 1
            else "not every member is a front-line worker"
        )
    if rule.once_per_person_per_year_per_level and result.event.format is EventFormat.INDIVIDUAL:
        competition = result.competition
        person = line.members[0]
        if prior.already_awarded(
            rule.award_type,
            person.worker_id,
            competition.year,
            competition.level,
            other_than_event_id=result.event.event_id,
        ):
            reasons.append(
                f"already received {rule.award_type.value} at {competition.level.value} level "
                f"in {competition.year}"
            )
    return reasons


def _all_front_line(members: Iterable[Member]) -> bool:
    return all(member.front_line for member in members)


def _decision(
    rule: AwardRule,
    line: ResultLine,
    position: int,
    sharing: int,
    result: EventResultsPayload,
    minimum: int,
    ends_on: date,
) -> Decision:
    facts: dict[str, str | int | bool] = {
        "rank": line.rank,
        "qualified": line.qualified,
        "front_line": _all_front_line(line.members),
        "entrants": result.entrants,
        "minimum_entrants": minimum,
        "version": result.version,
        "format": result.event.format.value,
    }
    if sharing > 1:
        facts["shared_with"] = sharing - 1
    if position != line.rank:
        facts["moved_up_to"] = position
    return Decision(
        award_type=rule.award_type,
        competition=result.competition,
        event=result.event,
        recipient=_recipient(line, result.event),
        rank=line.rank,
        reason=AwardReason(rule=rule.name, facts=facts),
        result_version=result.version,
        mark_ids=line.mark_ids,
        publicity_ends_on=ends_on,
    )


def _recipient(line: ResultLine, event: EventRef) -> Recipient:
    if event.format is EventFormat.INDIVIDUAL:
        person = line.members[0]
        return Recipient(
            kind=RecipientKind.PERSON,
            recipient_id=person.worker_id,
            name=person.name,
            union_id=line.union_id,
            union_name=line.union_name,
            members=(person,),
        )
    team_name = line.team_name or f"{line.union_name} · {event.name}"
    return Recipient(
        kind=RecipientKind.TEAM,
        recipient_id=line.entry_id,
        name=team_name[:200],
        union_id=line.union_id,
        union_name=line.union_name,
        members=line.members,
    )


def _require_policy_level(policy: AwardPolicy, competition: CompetitionRef) -> None:
    if policy.level is not competition.level:
        raise ValueError(
            f"policy for {policy.level.value} applied to the {competition.level.value} "
            f"competition {competition.competition_id}"
        )


# --- the organisation award -------------------------------------------------------------------


def decide_organisation_award(
    policy: AwardPolicy,
    competition: CompetitionRef,
    finished_event_results: Iterable[EventResultsPayload],
    *,
    all_event_ids: Collection[str],
) -> list[Decision]:
    """The union(s) with the most qualified contestants, once every event is finalised.

    ``all_event_ids`` is every event of the competition: until each has a result, nothing is
    decided. Several versions of one event may be passed; the newest counts.
    """
    return dry_run_organisation_award(
        policy, competition, finished_event_results, all_event_ids=all_event_ids
    ).decisions


def dry_run_organisation_award(
    policy: AwardPolicy,
    competition: CompetitionRef,
    finished_event_results: Iterable[EventResultsPayload],
    *,
    all_event_ids: Collection[str],
) -> Evaluation:
    _require_policy_level(policy, competition)
    rule = policy.rule_for(AwardType.ORGANISATION_AWARD)
    if rule is None:
        return Evaluation()

    def withheld(reason: str) -> Evaluation:
        return Evaluation(withheld=[Withheld(rule.name, rule.award_type, None, None, reason)])

    newest: dict[str, EventResultsPayload] = {}
    for result in finished_event_results:
        if result.competition.competition_id != competition.competition_id:
            raise ValueError(
                f"result of event {result.event.event_id} belongs to competition "
                f"{result.competition.competition_id}, not {competition.competition_id}"
            )
        known = newest.get(result.event.event_id)
        if known is None or result.version > known.version:
            newest[result.event.event_id] = result
    if not all_event_ids:
        return withheld("the competition has no events")
    unfinished = sorted(set(all_event_ids) - newest.keys())
    if unfinished:
        return withheld(f"competition not finished: no final result for {', '.join(unfinished)}")
    counted = [newest[event_id] for event_id in sorted(set(all_event_ids))]

    # Contestants are people: a qualified team of five counts five.
    contestants: Counter[str] = Counter()
    union_names: dict[str, str] = {}
    for result in counted:
        for line in result.lines:
            union_names.setdefault(line.union_id, line.union_name)
            if line.qualified or not rule.qualified:
                contestants[line.union_id] += len(line.members)
    most = max(contestants.values(), default=0)
    if most == 0:
        return withheld("no union had a qualified contestant")
    winners = sorted(union for union, count in contestants.items() if count == most)
    runner_up = max((c for c in contestants.values() if c < most), default=0)

    # A competition-wide "version" that grows whenever any event is amended, so reconciliation
    # can tell a newer evaluation from a stale one just as it does for a single event.
    version = sum(result.version for result in counted)
    ends_on = publicity_ends_on(
        max(result.finalised_at for result in counted), policy.publicity_days
    )
    per_event_versions = ",".join(f"{r.event.event_id}@v{r.version}" for r in counted)
    decisions = [
        Decision(
            award_type=AwardType.ORGANISATION_AWARD,
            competition=competition,
            event=None,
            recipient=Recipient(
                kind=RecipientKind.UNION,
                recipient_id=union_id,
                name=union_names[union_id],
                union_id=union_id,
                union_name=union_names[union_id],
            ),
            rank=None,
            reason=AwardReason(
                rule=rule.name,
                facts={
                    "qualified_contestants": most,
                    "runner_up_contestants": runner_up,
                    "tied_unions": len(winners),
                    "events": len(counted),
                    "event_versions": per_event_versions[:1000],
                    "version": version,
                },
            ),
            result_version=version,
            mark_ids=(),
            publicity_ends_on=ends_on,
        )
        for union_id in winners
    ]
    return Evaluation(decisions=decisions)


# --- reconciliation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """What to change so the standing awards match the newest decisions."""

    grants: list[Decision] = field(default_factory=list)
    revocations: list[ExistingAward] = field(default_factory=list)
    unchanged: list[Decision] = field(default_factory=list)
    ignored: bool = False  # True when the incoming version was stale or already applied
    note: str = ""

    @property
    def changes_nothing(self) -> bool:
        return not self.grants and not self.revocations


def reconcile(
    current_awards: Iterable[ExistingAward],
    decisions: Sequence[Decision],
    *,
    incoming_version: int,
    applied_version: int | None,
) -> Reconciliation:
    """Compare standing awards of one scope (an event, or a competition for the organisation
    award) with the decisions for ``incoming_version``, by award key.

    ``applied_version`` is the newest result version already applied to this scope (None if
    none). It must come from the award store, not be inferred from standing awards: a version
    that revoked everything leaves no award to remember it by.
    """
    current = list(current_awards)
    stray = [d for d in decisions if d.result_version != incoming_version]
    if stray:
        raise ValueError(
            f"decision {stray[0].award_key} is for version {stray[0].result_version}, "
            f"not {incoming_version}"
        )
    known = max(
        [v for v in (applied_version, *(a.result_version for a in current)) if v is not None],
        default=None,
    )
    wanted: dict[str, Decision] = {}
    for decision in decisions:
        wanted.setdefault(decision.award_key, decision)
    if known is not None and incoming_version < known:
        return Reconciliation(
            ignored=True,
            note=f"result version {incoming_version} is older than version {known} "
            "already applied; ignored",
        )
    if known is not None and incoming_version == known:
        standing = {award.award_key for award in current}
        return Reconciliation(
            unchanged=[d for key, d in wanted.items() if key in standing],
            ignored=True,
            note=f"result version {incoming_version} already applied; nothing to change",
        )

    standing_by_key: dict[str, ExistingAward] = {}
    revocations: list[ExistingAward] = []
    for award in current:
        if award.award_key in standing_by_key:
            revocations.append(award)  # a duplicate should not exist; never let two stand
        else:
            standing_by_key[award.award_key] = award
    revocations.extend(award for key, award in standing_by_key.items() if key not in wanted)
    return Reconciliation(
        grants=[d for key, d in wanted.items() if key not in standing_by_key],
        revocations=revocations,
        unchanged=[d for key, d in wanted.items() if key in standing_by_key],
        note=f"applied result version {incoming_version}",
    )


def group_by_scope(awards: Iterable[ExistingAward]) -> dict[str, list[ExistingAward]]:
    """Standing awards per event (or competition): the unit `reconcile` works on."""
    grouped: dict[str, list[ExistingAward]] = defaultdict(list)
    for award in awards:
        scope = award.event.event_id if award.event else award.competition.competition_id
        grouped[scope].append(award)
    return dict(grouped)


# --- certificate numbers ----------------------------------------------------------------------

LEVEL_CODES: dict[CompetitionLevel, str] = {
    CompetitionLevel.NATIONAL: "NAT",
    CompetitionLevel.PROVINCIAL: "PRV",
    CompetitionLevel.CITY: "CTY",
    CompetitionLevel.DISTRICT: "DIS",
    CompetitionLevel.ENTERPRISE: "ENT",
}
AWARD_CODES: dict[AwardType, str] = {
    AwardType.MAY_DAY_LABOUR_MEDAL: "MDL",
    AwardType.WORKER_PIONEER: "WPN",
    AwardType.TECHNICAL_EXPERT: "TEX",
    AwardType.EXCELLENT_CONTESTANT: "EXC",
    AwardType.ORGANISATION_AWARD: "ORG",
}
MAX_CERTIFICATE_SEQUENCE = 999_999


def certificate_number(
    level: CompetitionLevel, year: int, award_type: AwardType, sequence: int
) -> str:
    """E.g. ``JC-2026-DIS-MDL-000001``; the sequence counts per level, year and award type."""
    if not 2000 <= year <= 2100:
        raise ValueError(f"year {year} is outside 2000..2100")
    if not 1 <= sequence <= MAX_CERTIFICATE_SEQUENCE:
        raise ValueError(f"sequence {sequence} is outside 1..{MAX_CERTIFICATE_SEQUENCE}")
    return f"JC-{year}-{LEVEL_CODES[level]}-{AWARD_CODES[award_type]}-{sequence:06d}"
