"""Bulk import: parsing CSV/JSON, row-by-row rules with in-file interactions, speed."""

from __future__ import annotations

import codecs
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.registration.bulk import (
    MAX_IMPORT_ROWS,
    EntryRow,
    ImportFileRejected,
    ImportMode,
    ImportPlan,
    ParseReport,
    RegistrationSnapshot,
    RowError,
    parse_csv,
    parse_entries_file,
    parse_json,
    plan_import,
    validate_rows,
)
from services.registration.domain import Competition, EntryStatus, Event, Worker
from shared.events import CompetitionLevel, EventFormat

NOW = datetime(2026, 3, 15, tzinfo=UTC)
HEADER = "event_id,union_id,team_name,worker_ids\n"


def make_worker(worker_id: str, union_id: str) -> Worker:
    # Bulk validation never looks at the id hash; a placeholder keeps the fixture cheap.
    return Worker(worker_id, union_id, f"工人{worker_id}", True, "hash", "110***********1234")


@pytest.fixture
def snapshot() -> RegistrationSnapshot:
    competition = Competition(
        "C1",
        "大赛",
        2026,
        CompetitionLevel.CITY,
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 3, 31, tzinfo=UTC),
    )
    starts = datetime(2026, 4, 10, tzinfo=UTC)
    solo = Event("SOLO", "C1", "焊工", "welding", EventFormat.INDIVIDUAL, starts, quota_per_union=2)
    team = Event(
        "TEAM",
        "C1",
        "砌筑",
        "bricklaying",
        EventFormat.TEAM,
        starts,
        quota_per_union=1,
        min_team_size=2,
        max_team_size=3,
    )
    workers = {f"A{i}": make_worker(f"A{i}", "UA") for i in range(1, 10)}
    workers |= {f"B{i}": make_worker(f"B{i}", "UB") for i in range(1, 10)}
    return RegistrationSnapshot(
        competitions={"C1": competition},
        events={"SOLO": solo, "TEAM": team},
        union_ids=frozenset({"UA", "UB"}),
        workers=workers,
        active_entries={("SOLO", "UB"): 1},
        entered_workers={"SOLO": frozenset({"B9"})},
    )


def csv_bytes(*lines: str) -> bytes:
    return (HEADER + "".join(line + "\n" for line in lines)).encode()


def plan_csv(
    snapshot: RegistrationSnapshot, *lines: str, mode: ImportMode = ImportMode.VALID_ROWS_ONLY
) -> ImportPlan:
    return plan_import(parse_csv(csv_bytes(*lines)), snapshot, now=NOW, mode=mode)


def only_error(errors: list[RowError]) -> RowError:
    assert len(errors) == 1, errors
    return errors[0]


# --- parsing CSV ----------------------------------------------------------------------------


def test_csv_rows_are_parsed_with_spreadsheet_row_numbers() -> None:
    report = parse_csv(csv_bytes("SOLO,UA,,A1", "TEAM, UA ,一队 , A2; A3 ;；A4；"))
    assert report.errors == []
    assert report.rows == [
        EntryRow(2, "SOLO", "UA", "", ("A1",)),
        EntryRow(3, "TEAM", "UA", "一队", ("A2", "A3", "A4")),
    ]


def test_csv_columns_in_any_order_and_case_with_bom() -> None:
    data = codecs.BOM_UTF8 + b"Worker_IDs,team_name,UNION_ID,event_id\r\nA1,,UA,SOLO\r\n"
    assert parse_csv(data).rows == [EntryRow(2, "SOLO", "UA", "", ("A1",))]


def test_csv_blank_lines_are_skipped_but_counted() -> None:
    report = parse_csv(csv_bytes("SOLO,UA,,A1", "", "SOLO,UA,,A2"))
    assert [row.row_number for row in report.rows] == [2, 4]


def test_csv_quoted_field_with_newline_is_one_row() -> None:
    report = parse_csv(csv_bytes('TEAM,UA,"一\n队",A1;A2', "SOLO,UA,,A3"))
    assert [row.row_number for row in report.rows] == [2, 3]
    assert report.rows[0].team_name == "一\n队"


def test_csv_missing_column_rejects_the_file() -> None:
    with pytest.raises(ImportFileRejected) as caught:
        parse_csv(b"event_id,union_id,worker_ids\nSOLO,UA,A1\n")
    assert caught.value.rule == "missing_columns"
    assert caught.value.field == "file"
    assert "team_name" in caught.value.reason


def test_csv_unknown_column_rejects_the_file() -> None:
    with pytest.raises(ImportFileRejected, match="'remarks'") as caught:
        parse_csv(b"event_id,union_id,team_name,worker_ids,remarks\n")
    assert caught.value.rule == "unknown_columns"


def test_csv_repeated_column_rejects_the_file() -> None:
    with pytest.raises(ImportFileRejected, match="repeated"):
        parse_csv(b"event_id,union_id,team_name,worker_ids,event_id\n")


def test_csv_empty_file_rejected() -> None:
    with pytest.raises(ImportFileRejected, match="empty"):
        parse_csv(b"")


def test_csv_row_with_wrong_field_count_is_a_row_error() -> None:
    report = parse_csv(csv_bytes("SOLO,UA,A1", "SOLO,UA,,A2"))
    error = only_error(report.errors)
    assert (error.row, error.field, error.rule) == (2, "row", "malformed_row")
    assert "3 fields" in error.reason
    assert [row.row_number for row in report.rows] == [3]


def test_csv_broken_quoting_rejects_the_file() -> None:
    with pytest.raises(ImportFileRejected) as caught:
        parse_csv(csv_bytes('SOLO,UA,"unterminated,A1'))
    assert caught.value.rule == "malformed_csv"


def test_csv_field_errors_name_row_and_field() -> None:
    report = parse_csv(csv_bytes("SOLO,UA,,A1", ",UA,,A2", "SOLO,,,", "SOLO,UA,," + "W" * 129))
    assert [(e.row, e.field, e.rule) for e in report.errors] == [
        (3, "event_id", "required"),
        (4, "union_id", "required"),
        (4, "worker_ids", "required"),
        (5, "worker_ids", "too_long"),
    ]
    assert [row.row_number for row in report.rows] == [2]


@pytest.mark.parametrize("team_name", ["=cmd|' /C calc'!A0", "+1", "-1", "@SUM(1)"])
def test_csv_formula_injection_in_team_name_rejected(team_name: str) -> None:
    report = parse_csv(csv_bytes(f'TEAM,UA,"{team_name}",A1;A2'))
    error = only_error(report.errors)
    assert (error.row, error.field, error.rule) == (2, "team_name", "unsafe_text")
    assert report.rows == []


def test_non_utf8_rejected_with_clear_error() -> None:
    gbk = (HEADER + "TEAM,UA,第一队,A1;A2\n").encode("gbk")
    with pytest.raises(ImportFileRejected) as caught:
        parse_csv(gbk)
    assert caught.value.rule == "not_utf8"
    assert "UTF-8" in caught.value.reason
    assert caught.value.status_code == 415
    with pytest.raises(ImportFileRejected, match="UTF-8"):
        parse_json('[{"team_name": "第一队"}]'.encode("gbk"))


def test_too_large_file_rejected() -> None:
    data = csv_bytes("SOLO,UA,,A1")
    with pytest.raises(ImportFileRejected) as caught:
        parse_csv(data, max_bytes=len(data) - 1)
    assert caught.value.rule == "file_too_large"
    assert caught.value.status_code == 413
    assert parse_csv(data, max_bytes=len(data)).rows  # exactly at the limit is fine
    with pytest.raises(ImportFileRejected, match="limit"):
        parse_json(b"[]" + b" " * 100, max_bytes=50)


def test_too_many_rows_rejected() -> None:
    with pytest.raises(ImportFileRejected) as caught:
        parse_csv(csv_bytes("SOLO,UA,,A1", "SOLO,UA,,A2", "SOLO,UA,,A3"), max_rows=2)
    assert caught.value.rule == "too_many_rows"
    rows = orjson.dumps([{"event_id": "SOLO", "union_id": "UA", "worker_ids": ["A1"]}] * 3)
    with pytest.raises(ImportFileRejected, match="at most 2"):
        parse_json(rows, max_rows=2)


# --- parsing JSON ---------------------------------------------------------------------------


def test_json_rows_numbered_from_one() -> None:
    data = orjson.dumps(
        [
            {"event_id": "SOLO", "union_id": "UA", "worker_ids": ["A1"]},
            {
                "event_id": "TEAM",
                "union_id": "UA",
                "team_name": " 一队",
                "worker_ids": ["A2", "A3"],
            },
            {"event_id": "SOLO", "union_id": "UA", "team_name": None, "worker_ids": ["A4"]},
        ]
    )
    report = parse_json(data)
    assert report.errors == []
    assert report.rows == [
        EntryRow(1, "SOLO", "UA", "", ("A1",)),
        EntryRow(2, "TEAM", "UA", "一队", ("A2", "A3")),
        EntryRow(3, "SOLO", "UA", "", ("A4",)),
    ]


def test_json_with_bom_is_accepted() -> None:
    data = codecs.BOM_UTF8 + b'[{"event_id":"SOLO","union_id":"UA","worker_ids":["A1"]}]'
    assert len(parse_json(data).rows) == 1


@pytest.mark.parametrize("data", [b'[{"event_id": "SOLO",}]', b"", b"[1, 2", b"{'a': 1}"], ids=str)
def test_malformed_json_rejected(data: bytes) -> None:
    with pytest.raises(ImportFileRejected) as caught:
        parse_json(data)
    assert caught.value.rule == "malformed_json"
    assert "line" in caught.value.reason


def test_json_top_level_must_be_an_array() -> None:
    with pytest.raises(ImportFileRejected, match="array"):
        parse_json(b'{"event_id": "SOLO"}')


def test_json_row_errors_name_row_and_field() -> None:
    data = orjson.dumps(
        [
            "not an object",
            {"event_id": 7, "union_id": "UA", "worker_ids": ["A1"]},
            {"event_id": "SOLO", "union_id": "UA", "worker_ids": "A1;A2"},
            {"event_id": "SOLO", "union_id": "UA", "worker_ids": ["A1"], "remarks": "x"},
            {"event_id": "SOLO", "union_id": "UA"},
            {"event_id": "TEAM", "union_id": "UA", "team_name": "@x", "worker_ids": ["A1", "A2"]},
            {"event_id": "SOLO", "union_id": "UA", "worker_ids": ["A1"]},
        ]
    )
    report = parse_json(data)
    assert [(e.row, e.field, e.rule) for e in report.errors] == [
        (1, "row", "malformed_row"),
        (2, "event_id", "wrong_type"),
        (3, "worker_ids", "wrong_type"),
        (4, "remarks", "unknown_field"),
        (5, "worker_ids", "required"),
        (6, "team_name", "unsafe_text"),
    ]
    assert [row.row_number for row in report.rows] == [7]


def test_parse_entries_file_dispatches_and_rejects_other_formats() -> None:
    assert parse_entries_file(csv_bytes("SOLO,UA,,A1"), "csv").rows[0].worker_ids == ("A1",)
    assert parse_entries_file(b"[]", "json").rows == []
    with pytest.raises(ImportFileRejected) as caught:
        parse_entries_file(b"", "xlsx")
    assert caught.value.rule == "unsupported_format"


# --- validating rows ------------------------------------------------------------------------


def test_valid_rows_become_entries(snapshot: RegistrationSnapshot) -> None:
    plan = plan_csv(snapshot, "SOLO,UA,,A1", "TEAM,UA,一队,A2;A3")
    assert plan.ok
    assert plan.valid_row_numbers == [2, 3]
    assert [(e.event_id, e.union_id, e.team_name, e.member_ids) for e in plan.valid] == [
        ("SOLO", "UA", "", ("A1",)),
        ("TEAM", "UA", "一队", ("A2", "A3")),
    ]
    assert all(e.status is EntryStatus.REGISTERED and e.registered_at == NOW for e in plan.valid)
    assert len({e.entry_id for e in plan.valid}) == 2


@pytest.mark.parametrize(
    ("line", "field", "rule"),
    [
        ("NOPE,UA,,A1", "event_id", "unknown_event"),
        ("SOLO,UZ,,A1", "union_id", "unknown_union"),
        ("SOLO,UA,,A404", "worker_ids", "unknown_worker"),
        ("SOLO,UA,,B1", "worker_ids", "worker_not_of_union"),
        ("SOLO,UA,,A1;A2", "worker_ids", "team_size"),
        ("SOLO,UA,一队,A1", "team_name", "team_name"),
        ("TEAM,UA,,A1;A2", "team_name", "team_name"),
        ("TEAM,UA,一队,A1", "worker_ids", "team_size"),
        ("TEAM,UA,一队,A1;A2;A3;A4", "worker_ids", "team_size"),
        ("TEAM,UA,一队,A1;A1", "worker_ids", "duplicate_member"),
        ("SOLO,UB,,B9", "worker_ids", "worker_already_entered"),
    ],
)
def test_each_rule_reports_row_and_field(
    snapshot: RegistrationSnapshot, line: str, field: str, rule: str
) -> None:
    plan = plan_csv(snapshot, "SOLO,UA,,A5", line)
    error = only_error(plan.errors)
    assert (error.row, error.field, error.rule) == (3, field, rule)
    assert error.reason
    assert plan.valid_row_numbers == [2]


def test_existing_entries_count_towards_the_quota(snapshot: RegistrationSnapshot) -> None:
    # UB already has 1 of its 2 SOLO places.
    plan = plan_csv(snapshot, "SOLO,UB,,B1", "SOLO,UB,,B2")
    error = only_error(plan.errors)
    assert (error.row, error.field, error.rule) == (3, "union_id", "quota_full")


def test_window_closed_for_every_row(snapshot: RegistrationSnapshot) -> None:
    report = parse_csv(csv_bytes("SOLO,UA,,A1", "TEAM,UA,一队,A2;A3"))
    plan = plan_import(report, snapshot, now=datetime(2026, 4, 1, tzinfo=UTC))
    assert [(e.row, e.field, e.rule) for e in plan.errors] == [
        (2, "event_id", "window_closed"),
        (3, "event_id", "window_closed"),
    ]
    assert plan.valid == []


def test_in_file_duplicate_worker_fails_on_the_second_row(snapshot: RegistrationSnapshot) -> None:
    plan = plan_csv(snapshot, "SOLO,UA,,A1", "TEAM,UA,一队,A1;A2", "SOLO,UA,,A1")
    error = only_error(plan.errors)
    assert (error.row, error.field, error.rule) == (4, "worker_ids", "worker_already_entered")
    assert "row 2 of this file" in error.reason
    # the same worker in a different event is fine
    assert plan.valid_row_numbers == [2, 3]


def test_in_file_quota_counts_rows_already_accepted(snapshot: RegistrationSnapshot) -> None:
    plan = plan_csv(snapshot, "SOLO,UA,,A1", "SOLO,UA,,A2", "SOLO,UA,,A3", "SOLO,UB,,B1")
    error = only_error(plan.errors)
    assert (error.row, error.rule) == (4, "quota_full")
    assert plan.valid_row_numbers == [2, 3, 5]


def test_a_failed_row_consumes_nothing(snapshot: RegistrationSnapshot) -> None:
    # Row 2 fails (A1 twice in the team), so A1 and UA's single TEAM place stay free for row 3.
    plan = plan_csv(snapshot, "TEAM,UA,一队,A1;A1", "TEAM,UA,二队,A1;A2")
    assert only_error(plan.errors).row == 2
    assert plan.valid_row_numbers == [3]


def test_snapshot_is_not_mutated(snapshot: RegistrationSnapshot) -> None:
    plan_csv(snapshot, "SOLO,UB,,B1")
    assert snapshot.entered_workers == {"SOLO": frozenset({"B9"})}
    assert snapshot.active_entries == {("SOLO", "UB"): 1}


def test_all_or_nothing_accepts_nothing_when_a_row_fails(snapshot: RegistrationSnapshot) -> None:
    lines = ("SOLO,UA,,A1", "SOLO,UA,,A1", "TEAM,UA,一队,A2;A3")
    plan = plan_csv(snapshot, *lines, mode=ImportMode.ALL_OR_NOTHING)
    assert plan.valid == []
    assert plan.valid_row_numbers == []
    assert [(e.row, e.rule) for e in plan.errors] == [(3, "worker_already_entered")]
    assert not plan.ok
    valid_only = plan_csv(snapshot, *lines, mode=ImportMode.VALID_ROWS_ONLY)
    assert valid_only.valid_row_numbers == [2, 4]
    assert valid_only.errors == plan.errors


def test_all_or_nothing_accepts_everything_when_all_rows_pass(
    snapshot: RegistrationSnapshot,
) -> None:
    plan = plan_csv(snapshot, "SOLO,UA,,A1", "SOLO,UA,,A2", mode=ImportMode.ALL_OR_NOTHING)
    assert plan.ok
    assert plan.valid_row_numbers == [2, 3]


def test_parse_errors_block_all_or_nothing_and_are_merged_in_row_order(
    snapshot: RegistrationSnapshot,
) -> None:
    lines = ("SOLO,UA,,A1", "SOLO,UA", "NOPE,UA,,A2", "SOLO,UA,,A3")
    strict = plan_csv(snapshot, *lines, mode=ImportMode.ALL_OR_NOTHING)
    assert strict.valid == []
    assert [(e.row, e.rule) for e in strict.errors] == [(3, "malformed_row"), (4, "unknown_event")]
    assert strict.rows_checked == 4
    lenient = plan_csv(snapshot, *lines, mode=ImportMode.VALID_ROWS_ONLY)
    assert lenient.valid_row_numbers == [2, 5]


def test_acting_union_may_import_only_its_own_entries(snapshot: RegistrationSnapshot) -> None:
    report = parse_csv(csv_bytes("SOLO,UA,,A1", "SOLO,UB,,B1"))
    plan = plan_import(report, snapshot, now=NOW, acting_union_id="UA")
    error = only_error(plan.errors)
    assert (error.row, error.field, error.rule) == (3, "union_id", "forbidden_union")


def test_entry_ids_can_be_injected(snapshot: RegistrationSnapshot) -> None:
    ids = iter(["X1", "X2"])
    plan = validate_rows(
        parse_csv(csv_bytes("SOLO,UA,,A1", "SOLO,UA,,A2")).rows,
        snapshot,
        now=NOW,
        new_entry_id=lambda: next(ids),
    )
    assert [entry.entry_id for entry in plan.valid] == ["X1", "X2"]


def test_json_import_follows_the_same_rules(snapshot: RegistrationSnapshot) -> None:
    data = orjson.dumps(
        [
            {"event_id": "TEAM", "union_id": "UB", "team_name": "乙队", "worker_ids": ["B1", "B2"]},
            {"event_id": "TEAM", "union_id": "UB", "team_name": "丙队", "worker_ids": ["B3", "B4"]},
        ]
    )
    plan = plan_import(parse_json(data), snapshot, now=NOW)
    assert plan.valid_row_numbers == [1]
    assert (only_error(plan.errors).row, only_error(plan.errors).rule) == (2, "quota_full")


# --- performance sanity ---------------------------------------------------------------------


def test_hundred_thousand_rows_parse_and_validate(capsys: pytest.CaptureFixture[str]) -> None:
    rows = MAX_IMPORT_ROWS
    competition = Competition(
        "C1", "大赛", 2026, CompetitionLevel.CITY, NOW - timedelta(days=1), NOW + timedelta(days=1)
    )
    events = {
        f"E{i}": Event(
            f"E{i}",
            "C1",
            f"项目{i}",
            "trade",
            EventFormat.INDIVIDUAL,
            NOW + timedelta(days=10),
            quota_per_union=rows,
        )
        for i in range(10)
    }
    workers = {f"W{i}": make_worker(f"W{i}", f"U{i % 50}") for i in range(rows)}
    snapshot = RegistrationSnapshot(
        competitions={"C1": competition},
        events=events,
        union_ids=frozenset(f"U{i}" for i in range(50)),
        workers=workers,
    )
    # Every 1,000th row repeats the previous row's worker in the same event: it must fail.
    lines = [
        f"E{i % 10},U{i % 50},,W{i}" if i % 1000 != 999 else f"E{(i - 1) % 10},U{i % 50},,W{i - 1}"
        for i in range(rows)
    ]
    data = csv_bytes(*lines)

    started = time.perf_counter()
    report: ParseReport = parse_csv(data)
    parsed = time.perf_counter()
    plan = plan_import(report, snapshot, now=NOW, mode=ImportMode.VALID_ROWS_ONLY)
    validated = time.perf_counter()

    assert len(report.rows) == rows
    assert len(plan.errors) == rows // 1000
    assert len(plan.valid) == rows - rows // 1000
    with capsys.disabled():
        print(
            f"\n[bulk import] {rows:,} CSV rows ({len(data):,} bytes): "
            f"parse {parsed - started:.3f}s, validate {validated - parsed:.3f}s"
        )
