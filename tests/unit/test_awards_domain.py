"""The immediate-awarding engine, tested directly: decide, reconcile, organisation award."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.awards.domain import (
    NO_PRIOR_MEDALS,
    Decision,
    ExistingAward,
    KnownPriorMedals,
    PriorAward,
    Reconciliation,
    certificate_number,
    decide,
    decide_organisation_award,
    dry_run,
    dry_run_organisation_award,
    group_by_scope,
    publicity_ends_on,
    reconcile,
)
from services.awards.policy import AwardPolicy, AwardRule, load_policies
from shared.events import (
    AwardGrantedPayload,
    AwardRevokedPayload,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    EventFormat,
    EventRef,
    EventResultsPayload,
    Member,
    RecipientKind,
    ResultLine,
)

MDL = AwardType.MAY_DAY_LABOUR_MEDAL
WPN = AwardType.WORKER_PIONEER
TEX = AwardType.TECHNICAL_EXPERT
EXC = AwardType.EXCELLENT_CONTESTANT
ORG = AwardType.ORGANISATION_AWARD

DISTRICT = load_policies()[CompetitionLevel.DISTRICT]
COMPETITION = CompetitionRef(
    competition_id="c-2026-district",
    name="2026 District Vocational Skills Competition",
    year=2026,
    level=CompetitionLevel.DISTRICT,
)
WELDING = EventRef(
    event_id="ev-weld", name="Welding", trade="welder", format=EventFormat.INDIVIDUAL
)
BIM = EventRef(event_id="ev-bim", name="BIM modelling", trade="bim", format=EventFormat.TEAM)
FINALISED_AT = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def person(worker_id: str, *, front_line: bool = True) -> Member:
    return Member(worker_id=worker_id, name=f"Worker {worker_id}", front_line=front_line)


def line(
    entry: str,
    rank: int,
    *,
    qualified: bool = True,
    front_line: bool = True,
    union: str = "u-rail",
    members: tuple[Member, ...] | None = None,
) -> ResultLine:
    return ResultLine(
        entry_id=entry,
        rank=rank,
        total=Decimal("80.00"),
        components={"theory": Decimal("80.00"), "practical": Decimal("80.00")},
        qualified=qualified,
        union_id=union,
        union_name=f"Union {union}",
        members=members if members is not None else (person(f"w-{entry}", front_line=front_line),),
        mark_ids=(f"m-{entry}-1", f"m-{entry}-2"),
    )


def results(
    lines: Sequence[ResultLine],
    *,
    version: int = 1,
    entrants: int = 20,
    event: EventRef = WELDING,
    competition: CompetitionRef = COMPETITION,
    finalised_at: datetime = FINALISED_AT,
) -> EventResultsPayload:
    return EventResultsPayload(
        competition=competition,
        event=event,
        version=version,
        entrants=entrants,
        lines=tuple(lines),
        finalised_by="chief-judge-1",
        finalised_at=finalised_at,
    )


def with_rule(policy: AwardPolicy, award_type: AwardType, **changes: object) -> AwardPolicy:
    """A copy of ``policy`` whose rule for ``award_type`` has ``changes`` (re-validated)."""
    rules = [
        AwardRule.model_validate({**rule.model_dump(), **changes})
        if rule.award_type is award_type
        else rule
        for rule in policy.rules
    ]
    return AwardPolicy.model_validate({**policy.model_dump(), "rules": rules})


def winners(decisions: Sequence[Decision], award_type: AwardType) -> list[str]:
    return sorted(d.recipient.recipient_id for d in decisions if d.award_type is award_type)


def top_six(**overrides: dict[str, object]) -> list[ResultLine]:
    """Entries e1..e6 ranked 1..6 and e7 ranked 7; ``overrides`` changes chosen entries."""
    built = []
    for n in range(1, 8):
        entry = f"e{n}"
        built.append(line(entry, n, **overrides.get(entry, {})))  # type: ignore[arg-type]
    return built


# --- ranks ---------------------------------------------------------------------------------------


def test_ranks_one_to_three_are_technical_experts_and_four_to_six_excellent() -> None:
    decisions = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)

    assert winners(decisions, MDL) == ["w-e1"]
    assert winners(decisions, TEX) == ["w-e1", "w-e2", "w-e3"]
    assert winners(decisions, EXC) == ["w-e4", "w-e5", "w-e6"]
    assert winners(decisions, WPN) == []
    assert all(d.recipient.kind is RecipientKind.PERSON for d in decisions)


def test_a_decision_records_rule_facts_version_marks_and_publicity() -> None:
    result = results(top_six(), version=3, entrants=25)

    medal = next(d for d in decide(DISTRICT, result, NO_PRIOR_MEDALS) if d.award_type is MDL)

    assert medal.award_key == "may_day_labour_medal:ev-weld:w-e1"
    assert medal.rank == 1
    assert medal.result_version == 3
    assert medal.mark_ids == ("m-e1-1", "m-e1-2")
    assert medal.reason.rule == "district-may-day-labour-medal"
    assert medal.reason.facts == {
        "rank": 1,
        "qualified": True,
        "front_line": True,
        "entrants": 25,
        "minimum_entrants": 10,
        "version": 3,
        "format": "individual",
    }
    assert medal.publicity_ends_on == date(2026, 5, 8)
    assert medal.recipient.union_id == "u-rail"
    assert medal.competition == COMPETITION and medal.event == WELDING


def test_entries_tied_at_first_place_both_earn_the_medal() -> None:
    tied = [line("a", 1), line("b", 1), line("c", 3), line("d", 4)]

    decisions = decide(DISTRICT, results(tied), NO_PRIOR_MEDALS)

    assert winners(decisions, MDL) == ["w-a", "w-b"]
    assert winners(decisions, TEX) == ["w-a", "w-b", "w-c"]
    medal = next(d for d in decisions if d.award_type is MDL)
    assert medal.reason.facts["shared_with"] == 1


def test_tied_first_place_where_only_one_is_eligible_gives_only_that_one() -> None:
    tied = [line("a", 1, front_line=False), line("b", 1), line("c", 3)]

    decisions = decide(DISTRICT, results(tied), NO_PRIOR_MEDALS)

    assert winners(decisions, MDL) == ["w-b"]


# --- ineligible entries: vacant by default, move-up when the policy says so -------------------


@pytest.mark.parametrize(
    ("first_place", "why"),
    [
        ({"qualified": False}, "not qualified"),
        ({"front_line": False}, "not a front-line worker"),
    ],
)
def test_ineligible_winner_leaves_the_medal_vacant_by_default(
    first_place: dict[str, object], why: str
) -> None:
    evaluation = dry_run(DISTRICT, results(top_six(e1=first_place)))

    assert winners(evaluation.decisions, MDL) == []
    withheld = [w for w in evaluation.withheld if w.award_type is MDL]
    assert len(withheld) == 1
    assert withheld[0].entry_id == "e1" and withheld[0].rank == 1
    assert why in withheld[0].reason and "stays vacant" in withheld[0].reason


@pytest.mark.parametrize("first_place", [{"qualified": False}, {"front_line": False}])
def test_ineligible_winner_passes_the_medal_down_when_the_policy_says_so(
    first_place: dict[str, object],
) -> None:
    policy = with_rule(DISTRICT, MDL, ineligible_passes_down=True)

    decisions = decide(policy, results(top_six(e1=first_place)), NO_PRIOR_MEDALS)

    assert winners(decisions, MDL) == ["w-e2"]
    medal = next(d for d in decisions if d.award_type is MDL)
    assert medal.rank == 2
    assert medal.reason.facts["moved_up_to"] == 1


def test_an_unqualified_expert_place_stays_vacant_and_nobody_moves_into_it() -> None:
    decisions = decide(DISTRICT, results(top_six(e2={"qualified": False})), NO_PRIOR_MEDALS)

    assert winners(decisions, TEX) == ["w-e1", "w-e3"]
    assert winners(decisions, EXC) == ["w-e4", "w-e5", "w-e6"]


def test_with_move_up_every_later_entry_moves_one_place() -> None:
    policy = with_rule(
        with_rule(DISTRICT, TEX, ineligible_passes_down=True), EXC, ineligible_passes_down=True
    )

    decisions = decide(policy, results(top_six(e2={"qualified": False})), NO_PRIOR_MEDALS)

    assert winners(decisions, TEX) == ["w-e1", "w-e3", "w-e4"]
    assert winners(decisions, EXC) == ["w-e5", "w-e6", "w-e7"]


def test_not_front_line_does_not_stop_a_technical_expert_title() -> None:
    decisions = decide(DISTRICT, results(top_six(e1={"front_line": False})), NO_PRIOR_MEDALS)

    assert winners(decisions, MDL) == []
    assert "w-e1" in winners(decisions, TEX)


# --- entrants ------------------------------------------------------------------------------------


def test_too_few_entrants_withholds_the_medal_and_titles_but_not_certificates() -> None:
    evaluation = dry_run(DISTRICT, results(top_six(), entrants=9))

    assert winners(evaluation.decisions, MDL) == []
    assert winners(evaluation.decisions, TEX) == []
    assert winners(evaluation.decisions, EXC) == ["w-e4", "w-e5", "w-e6"]
    reasons = {w.award_type: w.reason for w in evaluation.withheld if w.entry_id is None}
    assert reasons[MDL] == "event had 9 entrants; the rule needs at least 10"


def test_exactly_the_minimum_entrants_is_enough() -> None:
    decisions = decide(DISTRICT, results(top_six(), entrants=10), NO_PRIOR_MEDALS)

    assert winners(decisions, MDL) == ["w-e1"]


# --- once per person per year per level --------------------------------------------------------


def prior(level: CompetitionLevel, year: int = 2026, event_id: str = "ev-cnc") -> KnownPriorMedals:
    return KnownPriorMedals(frozenset({PriorAward(MDL, "w-e1", year, level, event_id)}))


def test_a_second_medal_in_the_same_year_and_level_is_blocked() -> None:
    evaluation = dry_run(DISTRICT, results(top_six()), prior(CompetitionLevel.DISTRICT))

    assert winners(evaluation.decisions, MDL) == []
    assert "w-e1" in winners(evaluation.decisions, TEX)
    (withheld,) = [w for w in evaluation.withheld if w.award_type is MDL]
    assert "already received may_day_labour_medal at district level in 2026" in withheld.reason


def test_blocked_second_medal_passes_down_only_with_move_up() -> None:
    policy = with_rule(DISTRICT, MDL, ineligible_passes_down=True)

    decisions = decide(policy, results(top_six()), prior(CompetitionLevel.DISTRICT))

    assert winners(decisions, MDL) == ["w-e2"]


@pytest.mark.parametrize(
    "held",
    [
        prior(CompetitionLevel.CITY),  # another level
        prior(CompetitionLevel.DISTRICT, year=2025),  # another year
        prior(CompetitionLevel.DISTRICT, event_id="ev-weld"),  # this event's earlier version
    ],
)
def test_a_medal_at_another_level_year_or_from_this_event_does_not_block(
    held: KnownPriorMedals,
) -> None:
    decisions = decide(DISTRICT, results(top_six()), held)

    assert winners(decisions, MDL) == ["w-e1"]


# --- team events ---------------------------------------------------------------------------------


def team(entry: str, rank: int, *, qualified: bool = True, front_line: bool = True) -> ResultLine:
    members = (person(f"{entry}-1"), person(f"{entry}-2", front_line=front_line))
    return line(entry, rank, qualified=qualified, members=members)


def test_rank_one_team_of_a_team_event_is_a_worker_pioneer() -> None:
    teams = [team(f"t{n}", n, front_line=n != 1) for n in range(1, 6)]

    decisions = decide(DISTRICT, results(teams, event=BIM, entrants=5), NO_PRIOR_MEDALS)

    assert winners(decisions, WPN) == ["t1"]
    assert winners(decisions, MDL) == []  # individual events only
    assert winners(decisions, TEX) == []  # individual events only
    assert winners(decisions, EXC) == ["t4", "t5"]
    pioneer = next(d for d in decisions if d.award_type is WPN)
    assert pioneer.recipient.kind is RecipientKind.TEAM
    assert [m.worker_id for m in pioneer.recipient.members] == ["t1-1", "t1-2"]
    assert pioneer.recipient.name == "Union u-rail · BIM modelling"
    assert pioneer.award_key == "worker_pioneer:ev-bim:t1"


def test_an_unqualified_first_team_is_no_worker_pioneer() -> None:
    teams = [team("t1", 1, qualified=False), team("t2", 2)]

    decisions = decide(DISTRICT, results(teams, event=BIM), NO_PRIOR_MEDALS)

    assert winners(decisions, WPN) == []


# --- quotas --------------------------------------------------------------------------------------


def test_quota_caps_awards_per_event() -> None:
    policy = with_rule(DISTRICT, TEX, quota=2)

    evaluation = dry_run(policy, results(top_six()))

    assert winners(evaluation.decisions, TEX) == ["w-e1", "w-e2"]
    (withheld,) = [w for w in evaluation.withheld if w.award_type is TEX]
    assert withheld.entry_id == "e3" and "quota of 2" in withheld.reason


def test_a_tie_that_would_overflow_the_quota_is_withheld_whole() -> None:
    policy = with_rule(DISTRICT, TEX, quota=2)
    lines = [line("a", 1), line("b", 2), line("c", 2), line("d", 4)]

    evaluation = dry_run(policy, results(lines))

    assert winners(evaluation.decisions, TEX) == ["w-a"]
    withheld = sorted(w.entry_id or "" for w in evaluation.withheld if w.award_type is TEX)
    assert withheld == ["b", "c"]
    assert all("tied" in w.reason for w in evaluation.withheld if w.award_type is TEX)


def test_a_tie_that_fits_the_quota_is_awarded_whole() -> None:
    policy = with_rule(DISTRICT, TEX, quota=3)
    lines = [line("a", 1), line("b", 2), line("c", 2), line("d", 4)]

    assert winners(decide(policy, results(lines), NO_PRIOR_MEDALS), TEX) == ["w-a", "w-b", "w-c"]


# --- guards --------------------------------------------------------------------------------------


def test_a_policy_for_another_level_is_refused() -> None:
    city = load_policies()[CompetitionLevel.CITY]

    with pytest.raises(ValueError, match="policy for city applied to the district competition"):
        decide(city, results(top_six()), NO_PRIOR_MEDALS)


def test_a_line_without_members_earns_nothing_and_says_why() -> None:
    evaluation = dry_run(DISTRICT, results([line("a", 1, members=())]))

    assert evaluation.decisions == []
    assert any("names no contestant" in w.reason for w in evaluation.withheld)


def test_publicity_period_counts_calendar_days_in_china() -> None:
    late_evening_utc = datetime(2026, 5, 1, 18, 30, tzinfo=UTC)  # 02:30 on 2 May in Beijing

    assert publicity_ends_on(late_evening_utc, 7) == date(2026, 5, 9)
    assert publicity_ends_on(FINALISED_AT, 0) == date(2026, 5, 1)


# --- reconciliation ------------------------------------------------------------------------------


def stand(decisions: Sequence[Decision]) -> list[ExistingAward]:
    return [
        ExistingAward.from_decision(d, award_id=f"a-{d.award_key}", certificate_no=f"c-{n}")
        for n, d in enumerate(decisions, start=1)
    ]


def apply(current: Sequence[ExistingAward], change: Reconciliation) -> list[ExistingAward]:
    revoked = {id(award) for award in change.revocations}
    kept = [award for award in current if id(award) not in revoked]
    return kept + stand(change.grants)


def test_first_result_grants_everything_it_earns() -> None:
    decisions = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)

    change = reconcile([], decisions, incoming_version=1, applied_version=None)

    assert change.grants == decisions and change.revocations == [] and not change.ignored


def test_an_amendment_that_moves_first_place_revokes_the_old_winner_and_grants_the_new() -> None:
    v1 = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)
    current = stand(v1)
    amended_lines = [line("e2", 1), line("e1", 2), *top_six()[2:]]
    v2 = decide(DISTRICT, results(amended_lines, version=2), NO_PRIOR_MEDALS)

    change = reconcile(current, v2, incoming_version=2, applied_version=1)

    assert [g.award_key for g in change.grants] == ["may_day_labour_medal:ev-weld:w-e2"]
    assert [r.award_key for r in change.revocations] == ["may_day_labour_medal:ev-weld:w-e1"]
    assert {d.award_key for d in change.unchanged} == {d.award_key for d in v1} - {
        "may_day_labour_medal:ev-weld:w-e1"
    }
    assert change.grants[0].result_version == 2


def test_redelivery_of_the_same_version_changes_nothing() -> None:
    decisions = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)
    current = stand(decisions)

    change = reconcile(current, decisions, incoming_version=1, applied_version=1)

    assert change.changes_nothing
    assert change.ignored and "already applied" in change.note
    assert len(change.unchanged) == len(decisions)


def test_an_older_version_after_a_newer_one_is_ignored() -> None:
    v1 = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)
    amended = top_six(e1={"qualified": False})
    current = stand(decide(DISTRICT, results(amended, version=2), NO_PRIOR_MEDALS))

    change = reconcile(current, v1, incoming_version=1, applied_version=2)

    assert change == Reconciliation(
        ignored=True, note="result version 1 is older than version 2 already applied; ignored"
    )


def test_an_older_version_is_ignored_even_when_the_newer_one_left_no_awards() -> None:
    v1 = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)

    change = reconcile([], v1, incoming_version=1, applied_version=2)

    assert change.ignored and change.grants == []


def test_a_duplicate_standing_award_is_revoked_so_nothing_stands_twice() -> None:
    decisions = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)
    medal = next(d for d in decisions if d.award_type is MDL)
    current = [*stand(decisions), *stand([medal])]
    restated = decide(DISTRICT, results(top_six(), version=2), NO_PRIOR_MEDALS)

    change = reconcile(current, restated, incoming_version=2, applied_version=1)

    assert change.grants == []
    assert [r.award_key for r in change.revocations] == [medal.award_key]


def test_decisions_of_another_version_are_a_caller_bug() -> None:
    decisions = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)

    with pytest.raises(ValueError, match="not 2"):
        reconcile([], decisions, incoming_version=2, applied_version=1)


def test_grant_and_revocation_payloads_are_valid_contracts() -> None:
    decisions = decide(DISTRICT, results(top_six()), NO_PRIOR_MEDALS)
    medal = next(d for d in decisions if d.award_type is MDL)
    at = datetime(2026, 5, 1, 3, 0, 1, tzinfo=UTC)

    granted = medal.granted_payload(award_id="a1", certificate_no="JC-1", granted_at=at)
    (standing,) = stand([medal])
    revoked = standing.revoked_payload(result_version=2, revoked_at=at)

    assert AwardGrantedPayload.model_validate_json(granted.model_dump_json()) == granted
    assert AwardRevokedPayload.model_validate_json(revoked.model_dump_json()) == revoked
    assert revoked.reason.facts["granted_under_version"] == 1
    assert group_by_scope([standing]) == {"ev-weld": [standing]}


# --- organisation award --------------------------------------------------------------------------


CNC = EventRef(event_id="ev-cnc", name="CNC", trade="cnc", format=EventFormat.INDIVIDUAL)


def organisation_results(version: int = 1) -> list[EventResultsPayload]:
    welding = [
        line("w1", 1, union="u-rail"),
        line("w2", 2, union="u-port"),
        line("w3", 3, union="u-port", qualified=False),
    ]
    cnc = [line("c1", 1, union="u-port"), line("c2", 2, union="u-rail")]
    return [
        results(welding, version=version),
        results(cnc, event=CNC, finalised_at=datetime(2026, 5, 3, 3, 0, tzinfo=UTC)),
    ]


def test_organisation_award_goes_to_every_tied_union() -> None:
    decisions = decide_organisation_award(
        DISTRICT, COMPETITION, organisation_results(), all_event_ids={"ev-weld", "ev-cnc"}
    )

    assert [d.recipient.recipient_id for d in decisions] == ["u-port", "u-rail"]
    assert all(d.recipient.kind is RecipientKind.UNION for d in decisions)
    assert decisions[0].award_key == "organisation_award:c-2026-district:u-port"
    assert decisions[0].reason.facts["qualified_contestants"] == 2
    assert decisions[0].reason.facts["tied_unions"] == 2
    assert decisions[0].result_version == 2  # sum of the event versions
    assert decisions[0].publicity_ends_on == date(2026, 5, 10)  # from the last finalisation


def test_organisation_award_counts_the_newest_version_of_each_event() -> None:
    amended_welding = results(
        [line("w1", 1, union="u-rail"), line("w3", 2, union="u-port")], version=2
    )

    decisions = decide_organisation_award(
        DISTRICT,
        COMPETITION,
        [*organisation_results(), amended_welding, line_up_team_event()],
        all_event_ids={"ev-weld", "ev-cnc", "ev-bim"},
    )

    # u-port: w3 (2), c1, bim team of 3; u-rail: w1, c2.
    assert [d.recipient.recipient_id for d in decisions] == ["u-port"]
    assert decisions[0].reason.facts["qualified_contestants"] == 5
    assert decisions[0].result_version == 2 + 1 + 1


def line_up_team_event() -> EventResultsPayload:
    members = (person("b-1"), person("b-2"), person("b-3"))
    return results([line("b", 1, union="u-port", members=members)], event=BIM)


def test_organisation_award_waits_until_every_event_is_final() -> None:
    evaluation = dry_run_organisation_award(
        DISTRICT, COMPETITION, organisation_results(), all_event_ids={"ev-weld", "ev-cnc", "ev-bim"}
    )

    assert evaluation.decisions == []
    assert evaluation.withheld[0].reason == "competition not finished: no final result for ev-bim"


def test_organisation_award_needs_a_qualified_contestant() -> None:
    nobody = [results([line("w1", 1, qualified=False)])]

    assert decide_organisation_award(DISTRICT, COMPETITION, nobody, all_event_ids={"ev-weld"}) == []


def test_organisation_award_amendment_reconciles_like_an_event() -> None:
    v1 = decide_organisation_award(
        DISTRICT, COMPETITION, organisation_results(), all_event_ids={"ev-weld", "ev-cnc"}
    )
    amended = [
        *organisation_results(),
        results(
            [line("w1", 1, union="u-rail"), line("w2", 2, union="u-port", qualified=False)],
            version=2,
        ),
    ]
    v2 = decide_organisation_award(
        DISTRICT, COMPETITION, amended, all_event_ids={"ev-weld", "ev-cnc"}
    )

    change = reconcile(stand(v1), v2, incoming_version=3, applied_version=2)

    assert [r.recipient.recipient_id for r in change.revocations] == ["u-port"]
    assert [d.recipient.recipient_id for d in change.unchanged] == ["u-rail"]
    assert change.grants == []


# --- certificate numbers -------------------------------------------------------------------------


def test_certificate_number_format() -> None:
    assert certificate_number(CompetitionLevel.DISTRICT, 2026, MDL, 1) == "JC-2026-DIS-MDL-000001"
    assert (
        certificate_number(CompetitionLevel.NATIONAL, 2027, TEX, 123456) == "JC-2027-NAT-TEX-123456"
    )


@pytest.mark.parametrize(("year", "sequence"), [(2026, 0), (2026, 1_000_000), (1999, 1)])
def test_certificate_number_refuses_out_of_range_parts(year: int, sequence: int) -> None:
    with pytest.raises(ValueError):
        certificate_number(CompetitionLevel.CITY, year, WPN, sequence)


@given(
    st.sampled_from(list(CompetitionLevel)),
    st.sampled_from(list(AwardType)),
    st.integers(1, 999_999),
)
def test_certificate_numbers_are_distinct_per_level_type_and_sequence(
    level: CompetitionLevel, award_type: AwardType, sequence: int
) -> None:
    number = certificate_number(level, 2026, award_type, sequence)
    other = certificate_number(level, 2026, award_type, sequence % 999_999 + 1)

    assert number != other
    assert len(number) == len("JC-2026-DIS-MDL-000001")


# --- properties ----------------------------------------------------------------------------------


@st.composite
def event_results(draw: st.DrawFn, version: int = 1) -> EventResultsPayload:
    """A plausible final result: competition ranking (ties share a rank, the next is skipped)."""
    count = draw(st.integers(0, 9))
    scores = sorted(draw(st.lists(st.integers(0, 4), min_size=count, max_size=count)), reverse=True)
    lines = []
    for index, score in enumerate(scores):
        rank = 1 + sum(1 for other in scores if other > score)
        lines.append(
            line(
                f"e{index}",
                rank,
                qualified=draw(st.booleans()),
                front_line=draw(st.booleans()),
                union=draw(st.sampled_from(["u-rail", "u-port", "u-grid"])),
            )
        )
    entrants = draw(st.integers(count, count + 15))
    return results(lines, version=version, entrants=entrants)


@st.composite
def amended_series(draw: st.DrawFn) -> list[EventResultsPayload]:
    """Versions 1..n of one event's result, each independently ranked."""
    return [draw(event_results(version=v)) for v in range(1, draw(st.integers(1, 4)) + 1)]


PRIORS = st.sampled_from(
    [NO_PRIOR_MEDALS, prior(CompetitionLevel.DISTRICT), prior(CompetitionLevel.CITY)]
)


@given(event_results(), PRIORS)
def test_every_decision_meets_its_rule(result: EventResultsPayload, held: KnownPriorMedals) -> None:
    decisions = decide(DISTRICT, result, held)

    assert len({d.award_key for d in decisions}) == len(decisions)
    for decision in decisions:
        rule = DISTRICT.rule_for(decision.award_type)
        assert rule is not None and decision.rank is not None
        assert rule.rank_from <= decision.rank <= rule.rank_to
        assert result.entrants >= DISTRICT.minimum_entrants_for(rule)
        source = next(ln for ln in result.lines if decision.recipient.members[0] in ln.members)
        assert source.qualified
        if decision.award_type is MDL:
            assert source.members[0].front_line
            assert not held.already_awarded(
                MDL,
                source.members[0].worker_id,
                2026,
                CompetitionLevel.DISTRICT,
                other_than_event_id=WELDING.event_id,
            )


@given(event_results())
def test_move_up_never_gives_fewer_top_titles(result: EventResultsPayload) -> None:
    moving = with_rule(DISTRICT, TEX, ineligible_passes_down=True)

    vacant = set(winners(decide(DISTRICT, result, NO_PRIOR_MEDALS), TEX))
    moved = set(winners(decide(moving, result, NO_PRIOR_MEDALS), TEX))

    assert vacant <= moved


@given(event_results())
def test_reconcile_is_idempotent(result: EventResultsPayload) -> None:
    decisions = decide(DISTRICT, result, NO_PRIOR_MEDALS)
    state = apply([], reconcile([], decisions, incoming_version=1, applied_version=None))
    # The same facts arriving again as a newer version must change nothing either.
    restated = decide(DISTRICT, result.model_copy(update={"version": 2}), NO_PRIOR_MEDALS)

    again = reconcile(state, decisions, incoming_version=1, applied_version=1)
    diffed = reconcile(state, restated, incoming_version=2, applied_version=1)

    assert again.changes_nothing
    assert diffed.changes_nothing
    assert len(diffed.unchanged) == len(state)


@settings(max_examples=150)
@given(amended_series(), st.data())
def test_any_delivery_order_ends_with_the_newest_versions_awards(
    versions: list[EventResultsPayload], data: st.DataObject
) -> None:
    deliveries = data.draw(
        st.lists(st.sampled_from(versions), min_size=1, max_size=8).map(
            lambda drawn: [*drawn, versions[-1]]  # the newest version arrives at some point
        )
    )
    state: list[ExistingAward] = []
    applied: int | None = None
    for result in deliveries:
        decisions = decide(DISTRICT, result, NO_PRIOR_MEDALS)
        change = reconcile(
            state, decisions, incoming_version=result.version, applied_version=applied
        )
        standing = {award.award_key for award in state}
        assert not any(grant.award_key in standing for grant in change.grants)  # never twice
        state = apply(state, change)
        applied = max(applied or 0, result.version)

    expected = {d.award_key for d in decide(DISTRICT, versions[-1], NO_PRIOR_MEDALS)}
    assert sorted(award.award_key for award in state) == sorted(expected)
