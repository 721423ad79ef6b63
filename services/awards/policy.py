"""Immediate-awarding (即时授予) policies: data files, validated on load.

One YAML file per competition level (``national.yaml`` … ``enterprise.yaml``) says which awards an
event's final result earns. A broken file must never reach the engine half-understood, so every
problem is reported as a `PolicyError` naming the file, the line and the field, e.g.
``district.yaml line 12, field rules[1].rank_to: must be >= rank_from (4)``.

Line numbers come from YAML's node marks: the text is composed into a node tree, the plain data is
validated with pydantic, and each error's ``loc`` path is walked back through the node tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from shared.events import AwardType, CompetitionLevel, EventFormat

DEFAULT_POLICY_DIR = Path(__file__).parent / "policies"

# Config files are written by people: "yes" must not silently become True, nor "7" become 7.
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
RuleName = Annotated[str, Strict(), Field(min_length=1, max_length=200)]


class AwardRule(BaseModel):
    """One award and the conditions an entry must meet to earn it.

    Rank conditions use the published ranks; entries sharing a rank share it (two entries tied at
    rank 1 are both rank 1 and both can earn a rank-1 award). For ``organisation_award`` the rank
    range, ``front_line``, ``quota`` and ``ineligible_passes_down`` do not apply: it goes to the
    union(s) with the most qualified contestants once every event of the competition is final.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RuleName
    award_type: AwardType
    rank_from: Annotated[StrictInt, Field(ge=1)] = 1
    rank_to: Annotated[StrictInt, Field(ge=1)] = 1
    format: EventFormat | None = Field(
        default=None, description="Only events of this format; null for any format."
    )
    qualified: StrictBool = Field(default=True, description="Entry must have qualified.")
    front_line: StrictBool = Field(
        default=False, description="Every member must be a front-line worker."
    )
    minimum_entrants: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None,
        description="Fewest entrants the event needs; null = the policy's minimum_entrants, "
        "0 = no minimum.",
    )
    once_per_person_per_year_per_level: StrictBool = False
    quota: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="Most awards of this type per event; null = no cap."
    )
    ineligible_passes_down: StrictBool = Field(
        default=False,
        description="False (default): an ineligible entry's place stays vacant. True: ineligible "
        "entries are struck from the ranking first, so the next eligible entries move up.",
    )

    @field_validator("rank_to")
    @classmethod
    def _rank_range_is_ordered(cls, rank_to: int, info: ValidationInfo) -> int:
        rank_from = info.data.get("rank_from")
        if isinstance(rank_from, int) and rank_to < rank_from:
            raise ValueError(f"must be >= rank_from ({rank_from})")
        return rank_to

    @field_validator("once_per_person_per_year_per_level")
    @classmethod
    def _once_per_person_needs_individual_events(cls, once: bool, info: ValidationInfo) -> bool:
        # The limit is about a person; a team award has no single person to count it against.
        if once and info.data.get("format") is not EventFormat.INDIVIDUAL:
            raise ValueError("only applies to rules with format: individual")
        return once


class AwardPolicy(BaseModel):
    """The awarding policy of one competition level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: CompetitionLevel
    publicity_days: Annotated[StrictInt, Field(ge=0, le=90)] = 7
    minimum_entrants: Annotated[StrictInt, Field(ge=0)] = 0
    rules: Annotated[list[AwardRule], Field(min_length=1)]

    @field_validator("rules")
    @classmethod
    def _one_rule_per_award_type(cls, rules: list[AwardRule]) -> list[AwardRule]:
        # One rule per award type keeps "this award for this recipient in this event" unique
        # and makes a quota mean exactly "awards of this type per event".
        for field in ("award_type", "name"):
            first_seen: dict[str, int] = {}
            for index, rule in enumerate(rules):
                value = str(getattr(rule, field))
                if value in first_seen:
                    raise PydanticCustomError(
                        "duplicate_rule",
                        "repeats {value} (already in rules[{first}])",
                        {
                            "index": index,
                            "field": field,
                            "value": value,
                            "first": first_seen[value],
                        },
                    )
                first_seen[value] = index
        return rules

    def rule_for(self, award_type: AwardType) -> AwardRule | None:
        return next((rule for rule in self.rules if rule.award_type is award_type), None)

    def minimum_entrants_for(self, rule: AwardRule) -> int:
        return self.minimum_entrants if rule.minimum_entrants is None else rule.minimum_entrants


class PolicyError(ValueError):
    """A policy file that cannot be used, with where and why."""

    def __init__(self, file: str, line: int | None, field: str | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        where = file if line is None else f"{file} line {line}"
        if field:
            where += f", field {field}"
        super().__init__(f"{where}: {reason}")


# --- loading ----------------------------------------------------------------------------------


def load_policy(path: Path | str) -> AwardPolicy:
    """Read and validate one policy file; raises `PolicyError` naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path.name, None, None, f"cannot read: {exc}") from exc
    return parse_policy(text, file=path.name)


def parse_policy(text: str, *, file: str) -> AwardPolicy:
    """Validate policy YAML given as text; ``file`` is the name used in error messages."""
    root = _compose(text, file)
    if not isinstance(root, yaml.MappingNode):
        line = 1 if root is None else root.start_mark.line + 1
        raise PolicyError(file, line, None, "expected a mapping of policy fields")
    _reject_duplicate_keys(root, file, path=())
    data = yaml.safe_load(text)
    try:
        return AwardPolicy.model_validate(data)
    except ValidationError as exc:
        raise _policy_error_from(exc, root, file) from exc


def load_policies(
    directory: Path | str = DEFAULT_POLICY_DIR,
) -> dict[CompetitionLevel, AwardPolicy]:
    """Load the five level files from ``directory``: every level present, nothing unexpected."""
    directory = Path(directory)
    expected = {f"{level.value}.yaml": level for level in CompetitionLevel}
    for stray in sorted(p.name for p in directory.glob("*.y*ml")):
        if stray not in expected:
            raise PolicyError(
                stray,
                None,
                None,
                f"not a competition level file (expected one of {sorted(expected)})",
            )
    policies: dict[CompetitionLevel, AwardPolicy] = {}
    for file_name, level in expected.items():
        path = directory / file_name
        if not path.is_file():
            raise PolicyError(file_name, None, None, f"missing from {directory}")
        policy = load_policy(path)
        if policy.level is not level:
            line = _line_of_top_level_key(path.read_text(encoding="utf-8"), "level")
            raise PolicyError(
                file_name,
                line,
                "level",
                f"is {policy.level.value}, but the file is for {level.value}",
            )
        policies[level] = policy
    return policies


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        opened = exc.context_mark
        if opened is not None and mark is not None and opened.line != mark.line:
            problem += f" (the structure began on line {opened.line + 1})"
        field = None if line is None else _nearest_key(text, line)
        raise PolicyError(file, line, field, f"invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(file, None, None, f"invalid YAML: {exc}") from exc


_KEY_AT_LINE_START = re.compile(r"^\s*(?:-\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*:")


def _nearest_key(text: str, line: int) -> str | None:
    """The key written on ``line`` or the closest line above it: where a syntax error sits."""
    lines = text.splitlines()
    for number in range(min(line, len(lines)), 0, -1):
        match = _KEY_AT_LINE_START.match(lines[number - 1])
        if match:
            return match.group(1)
    return None


def _line_of_top_level_key(text: str, key: str) -> int | None:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        for key_node, _value in root.value:
            if key_node.value == key:
                return int(key_node.start_mark.line) + 1
    return None


def _reject_duplicate_keys(node: yaml.Node, file: str, path: tuple[str | int, ...]) -> None:
    # PyYAML keeps the last of two equal keys without a word; in a policy that hides a mistake.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise PolicyError(
                    file, key_node.start_mark.line + 1, _format_loc((*path, key)), "duplicate key"
                )
            seen.add(key)
            _reject_duplicate_keys(value_node, file, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, file, (*path, index))


def _policy_error_from(exc: ValidationError, root: yaml.Node, file: str) -> PolicyError:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "duplicate_rule":
            # Point at the repeating rule's own field rather than at the whole list.
            loc = (*loc, error["ctx"]["index"], error["ctx"]["field"])
        line = _line_for(root, loc, point_at_key=error["type"] == "extra_forbidden")
        reason = _reason(error)
        problems.append((line, _format_loc(loc) or None, reason))
    problems.sort(key=lambda problem: problem[0])
    line, field, reason = problems[0]
    if len(problems) > 1:
        reason += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return PolicyError(file, line, field, reason)


def _reason(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    # Custom validators' messages arrive as "Value error, <ours>"; the prefix is noise here.
    return message.removeprefix("Value error, ")


def _line_for(root: yaml.Node, loc: Sequence[str | int], *, point_at_key: bool) -> int:
    """Line (1-based) of the node ``loc`` names, or of its deepest ancestor present in the file."""
    node = root
    line = int(root.start_mark.line) + 1
    for step in loc:
        child_key: yaml.Node | None = None
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            for key_node, value_node in node.value:
                if key_node.value == step:
                    child_key, child = key_node, value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if 0 <= step < len(node.value):
                child = node.value[step]
        if child is None:
            break  # e.g. a missing required field: point at the mapping that lacks it
        anchor = child_key if (point_at_key and child_key is not None) else child
        line = int(anchor.start_mark.line) + 1
        node = child
    return line


def _format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for step in loc:
        if isinstance(step, int):
            text += f"[{step}]"
        else:
            text += step if not text else f".{step}"
    return text
