"""Policy files: the shipped ones load, and every broken one names its file, line and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.awards.policy import (
    DEFAULT_POLICY_DIR,
    AwardPolicy,
    AwardRule,
    PolicyError,
    load_policies,
    load_policy,
)
from shared.events import AwardType, CompetitionLevel, EventFormat

DISTRICT_TEXT = (DEFAULT_POLICY_DIR / "district.yaml").read_text(encoding="utf-8")


def line_of(text: str, fragment: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``fragment``."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(hits) >= occurrence, f"{fragment!r} not in the text"
    return hits[occurrence - 1]


def broken_district(tmp_path: Path, old: str, new: str, count: int = 1) -> tuple[Path, str]:
    assert old in DISTRICT_TEXT
    text = DISTRICT_TEXT.replace(old, new, count)
    path = tmp_path / "district.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_shipped_policies_load_for_every_level() -> None:
    policies = load_policies()

    assert set(policies) == set(CompetitionLevel)
    for level, policy in policies.items():
        assert policy.level is level
        assert policy.publicity_days == 7
        assert {rule.award_type for rule in policy.rules} == set(AwardType)
        assert all(not rule.ineligible_passes_down for rule in policy.rules)


def test_shipped_minimum_entrants_grow_with_the_level() -> None:
    policies = load_policies()
    order = [
        CompetitionLevel.ENTERPRISE,
        CompetitionLevel.DISTRICT,
        CompetitionLevel.CITY,
        CompetitionLevel.PROVINCIAL,
        CompetitionLevel.NATIONAL,
    ]
    minimums = [policies[level].minimum_entrants for level in order]

    assert minimums == sorted(minimums)
    assert len(set(minimums)) == len(minimums)
    assert policies[CompetitionLevel.DISTRICT].minimum_entrants == 10


def test_shipped_may_day_rule_matches_the_design() -> None:
    rule = load_policies()[CompetitionLevel.DISTRICT].rule_for(AwardType.MAY_DAY_LABOUR_MEDAL)

    assert rule is not None
    assert (rule.rank_from, rule.rank_to) == (1, 1)
    assert rule.format is EventFormat.INDIVIDUAL
    assert rule.qualified and rule.front_line and rule.once_per_person_per_year_per_level
    assert rule.minimum_entrants is None  # inherits the policy-wide minimum


def test_shipped_files_state_the_no_move_up_default_in_comments() -> None:
    for path in DEFAULT_POLICY_DIR.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert "does NOT" in text and "move up" in text, path.name
        assert "ineligible_passes_down: false" in text, path.name


def test_bad_yaml_syntax_names_file_line_and_field(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "publicity_days: 7", "publicity_days: [7")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    error = caught.value
    assert error.file == "district.yaml"
    assert error.line is not None and error.line >= line_of(text, "publicity_days: [7")
    assert "invalid YAML" in error.reason
    assert f"began on line {line_of(text, 'publicity_days: [7')}" in str(error)
    assert str(error).startswith(f"district.yaml line {error.line}, field ")


def test_bad_indentation_points_at_the_offending_line(tmp_path: Path) -> None:
    path, text = broken_district(
        tmp_path, "  - name: district-worker-pioneer", "- name: district-worker-pioneer"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, "- name: district-worker-pioneer")
    assert caught.value.field == "name"
    assert f"district.yaml line {caught.value.line}, field name: invalid YAML" in str(caught.value)


def test_unknown_field_names_file_line_and_field(tmp_path: Path) -> None:
    path, text = broken_district(
        tmp_path, "    minimum_entrants: 4  #", "    colour: red\n    minimum_entrants: 4  #"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    line = line_of(text, "colour: red")
    assert str(caught.value) == f"district.yaml line {line}, field rules[1].colour: unknown field"


def test_wrong_type_names_file_line_and_field(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "publicity_days: 7", "publicity_days: seven")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    line = line_of(text, "publicity_days: seven")
    assert str(caught.value).startswith(f"district.yaml line {line}, field publicity_days: ")
    assert "integer" in caught.value.reason


def test_quoted_boolean_is_a_wrong_type_not_a_yes(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "    front_line: true", '    front_line: "yes"')

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, 'front_line: "yes"')
    assert caught.value.field == "rules[0].front_line"


def test_rank_to_below_rank_from_names_file_line_and_field(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "rank_to: 6", "rank_to: 2")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    line = line_of(text, "rank_to: 2")
    assert str(caught.value) == (
        f"district.yaml line {line}, field rules[3].rank_to: must be >= rank_from (4)"
    )


def test_unknown_award_type_names_the_allowed_values(tmp_path: Path) -> None:
    path, text = broken_district(
        tmp_path, "award_type: worker_pioneer", "award_type: golden_hammer"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, "award_type: golden_hammer")
    assert caught.value.field == "rules[1].award_type"
    assert "worker_pioneer" in caught.value.reason


def test_missing_required_field_points_at_the_rule_that_lacks_it(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "    award_type: worker_pioneer\n", "")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, "name: district-worker-pioneer")
    assert caught.value.field == "rules[1].award_type"
    assert caught.value.reason == "Field required"


def test_two_rules_for_one_award_type_point_at_the_second(tmp_path: Path) -> None:
    path, text = broken_district(
        tmp_path, "award_type: excellent_contestant", "award_type: technical_expert"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, "award_type: technical_expert", occurrence=2)
    assert caught.value.field == "rules[3].award_type"
    assert "already in rules[2]" in caught.value.reason


def test_duplicate_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path, text = broken_district(
        tmp_path, "publicity_days: 7", "publicity_days: 7\npublicity_days: 9"
    )

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, "publicity_days: 9")
    assert caught.value.field == "publicity_days"
    assert caught.value.reason == "duplicate key"


def test_once_per_person_needs_an_individual_rule(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "format: individual", "format: team")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.line == line_of(text, "once_per_person_per_year_per_level: true")
    assert caught.value.field == "rules[0].once_per_person_per_year_per_level"


def test_several_problems_report_the_first_by_line_and_count_the_rest(tmp_path: Path) -> None:
    path, text = broken_district(tmp_path, "rank_to: 3", "rank_to: 0")
    text = text.replace("publicity_days: 7", "publicity_days: -1")
    path.write_text(text, encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert caught.value.field == "publicity_days"
    assert caught.value.line == line_of(text, "publicity_days: -1")
    assert caught.value.reason.endswith("(and 1 more problem)")


def test_empty_file_is_rejected_at_line_one(tmp_path: Path) -> None:
    path = tmp_path / "city.yaml"
    path.write_text("", encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert str(caught.value) == "city.yaml line 1: expected a mapping of policy fields"


def test_load_policies_rejects_a_file_whose_level_does_not_match_its_name(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_POLICY_DIR, tmp_path, dirs_exist_ok=True)
    text = (
        (tmp_path / "city.yaml")
        .read_text(encoding="utf-8")
        .replace("level: city", "level: district")
    )
    (tmp_path / "city.yaml").write_text(text, encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)

    assert str(caught.value) == (
        f"city.yaml line {line_of(text, 'level: district')}, field level: "
        "is district, but the file is for city"
    )


def test_load_policies_rejects_a_missing_level_and_a_stray_file(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_POLICY_DIR, tmp_path / "missing")
    (tmp_path / "missing" / "national.yaml").unlink()
    shutil.copytree(DEFAULT_POLICY_DIR, tmp_path / "stray")
    (tmp_path / "stray" / "distrct.yaml").write_text(DISTRICT_TEXT, encoding="utf-8")

    with pytest.raises(PolicyError, match=r"^national\.yaml: missing from"):
        load_policies(tmp_path / "missing")
    with pytest.raises(PolicyError, match=r"^distrct\.yaml: not a competition level file"):
        load_policies(tmp_path / "stray")


def test_policy_built_in_code_is_validated_too() -> None:
    with pytest.raises(ValueError, match="must be >= rank_from"):
        AwardRule(name="r", award_type=AwardType.TECHNICAL_EXPERT, rank_from=3, rank_to=1)

    policy = AwardPolicy(
        level=CompetitionLevel.CITY,
        minimum_entrants=20,
        rules=[AwardRule(name="te", award_type=AwardType.TECHNICAL_EXPERT, minimum_entrants=0)],
    )
    rule = policy.rules[0]
    assert policy.publicity_days == 7
    assert policy.minimum_entrants_for(rule) == 0
    assert policy.minimum_entrants_for(rule.model_copy(update={"minimum_entrants": None})) == 20
