"""Bulk import over HTTP and through the CLI, against real MongoDB and Kafka."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from typer.testing import CliRunner

from jinchui.stack import free_port
from services.registration.cli import app as registration_cli
from services.registration.handlers import EntryEventFactory
from shared.events import EntryRegistered, decode_event
from tests.registration.conftest import Api, make_world, officer_token

pytestmark = pytest.mark.integration


def csv_of(rows: list[tuple[str, str, str, str]]) -> bytes:
    lines = ["event_id,union_id,team_name,worker_ids"] + [",".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode()


async def test_csv_valid_rows_only_stores_good_rows_and_reports_bad(api: Api) -> None:
    world = await make_world(api, quota=3)
    u1, u2 = world.unions
    w1 = world.workers[u1]
    data = csv_of(
        [
            (world.individual, u1, "", w1[0]),  # row 2 ok
            (world.individual, u1, "", w1[0]),  # row 3 same worker again
            (world.individual, u1, "", world.workers[u2][0]),  # row 4 not on the roster
            ("ghost-event", u1, "", w1[1]),  # row 5
            (world.team, u1, "焊接一队", f"{w1[2]};{w1[3]}"),  # row 6 ok
            (world.team, u1, "=HYPERLINK()", f"{w1[4]};{w1[5]}"),  # row 7 unsafe
            (world.individual, u1, "", "nobody"),  # row 8
        ]
    )
    response = await api.post(
        "/entries/import?mode=valid_rows_only&format=csv",
        officer_token(u1),
        content=data,
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["accepted"], report["rejected"]) == (2, 5)
    by_row = {e["row"]: (e["field"], e["rule"]) for e in report["errors"]}
    assert by_row == {
        3: ("worker_ids", "worker_already_entered"),
        4: ("worker_ids", "worker_not_of_union"),
        5: ("event_id", "unknown_event"),
        7: ("team_name", "unsafe_text"),
        8: ("worker_ids", "unknown_worker"),
    }
    listed = await api.get("/entries", officer_token(u1))
    assert len(listed.json()) == 2


async def test_json_all_or_nothing_stores_nothing_on_any_error_then_all(api: Api) -> None:
    world = await make_world(api, quota=5)
    u1 = world.unions[0]
    w1 = world.workers[u1]
    rows: list[dict[str, Any]] = [
        {"event_id": world.individual, "union_id": u1, "worker_ids": [w]} for w in w1[:6]
    ]
    refused = await api.post(
        "/entries/import?mode=all_or_nothing&format=json",
        officer_token(u1),
        content=json.dumps(rows).encode(),
        headers={"Content-Type": "application/json"},
    )
    report = refused.json()
    assert (report["accepted"], report["rejected"]) == (0, 1)
    assert report["errors"][0] == {
        "row": 6,
        "field": "union_id",
        "rule": "quota_full",
        "reason": report["errors"][0]["reason"],
    }
    assert (await api.get("/entries", officer_token(u1))).json() == []
    accepted = await api.post(
        "/entries/import?mode=all_or_nothing&format=json",
        officer_token(u1),
        content=json.dumps(rows[:5]).encode(),
        key="imp-" + world.competition_id,
    )
    assert accepted.json()["accepted"] == 5 and accepted.json()["errors"] == []
    replay = await api.post(
        "/entries/import?mode=all_or_nothing&format=json",
        officer_token(u1),
        content=json.dumps(rows[:5]).encode(),
        key="imp-" + world.competition_id,
    )
    assert replay.json() == accepted.json()
    assert len((await api.get("/entries", officer_token(u1))).json()) == 5


async def test_import_route_has_its_own_body_limit(api: Api) -> None:
    world = await make_world(api, workers_per_union=1)
    u1 = world.unions[0]
    big = b"event_id,union_id,team_name,worker_ids\n" + b"e,u,,w\n" * 400_000  # 2.8 MB
    over_rows = await api.post(
        "/entries/import?format=csv",
        officer_token(u1),
        content=big,
        headers={"Content-Type": "text/csv"},
    )
    # Past the 2 MiB global limit, stopped by the row limit instead of the body limit.
    assert (over_rows.status_code, over_rows.json()["error"]["rule"]) == (413, "too_many_rows")
    elsewhere = await api.post(
        "/entries", officer_token(u1), content=big, headers={"Content-Type": "application/json"}
    )
    assert (elsewhere.status_code, elsewhere.json()["error"]["rule"]) == (413, "body_too_large")
    bad = await api.post(
        "/entries/import?format=csv",
        officer_token(u1),
        content=b"\xff\xfe\x00",
        headers={"Content-Type": "text/csv"},
    )
    assert (bad.status_code, bad.json()["error"]["rule"]) == (415, "not_utf8")


async def test_fast_event_json_decodes_to_the_contract(api: Api) -> None:
    world = await make_world(api, workers_per_union=2)
    u1 = world.unions[0]
    service = api.app.state.runtime
    from services.registration.handlers import RegistrationService
    from services.registration.repository import RegistrationRepository

    svc = RegistrationService(service, RegistrationRepository(service.db))
    from services.registration.bulk import EntryRow, validate_rows
    from shared.events import utc_now

    rows = [EntryRow(2, world.individual, u1, "", (world.workers[u1][0],))]
    snapshot = await svc.snapshot(rows)
    plan = validate_rows(rows, snapshot, now=utc_now())
    union = await svc.repo.union(u1)
    assert union is not None
    item = EntryEventFactory(snapshot, {u1: union}, "corr").build(plan.valid)[0]
    decoded = decode_event(item.value)
    assert isinstance(decoded, EntryRegistered)
    assert str(decoded.event_id) == item.event_id and decoded.correlation_id == "corr"
    from services.registration.domain import entry_registered_payload

    event = snapshot.events[world.individual]
    expected = entry_registered_payload(
        plan.valid[0], snapshot.competitions[event.competition_id], event, union, snapshot.workers
    )
    assert decoded.payload == expected
    assert world.national_ids[world.workers[u1][0]] not in item.value


async def test_cli_imports_a_file_with_progress_and_error_table(api: Api, tmp_path: Path) -> None:
    world = await make_world(api, quota=5)
    u1 = world.unions[0]
    w1 = world.workers[u1]
    file = tmp_path / "entries.csv"
    file.write_bytes(
        csv_of([(world.individual, u1, "", w) for w in w1[:3]] + [("nope", u1, "", w1[3])])
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn offers no start event; poll its flag
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            registration_cli,
            [
                "import",
                str(file),
                "--url",
                f"http://127.0.0.1:{port}",
                "--token",
                officer_token(u1),
                "--mode",
                "valid_rows_only",
            ],
        )
    finally:
        server.should_exit = True
        await task
    assert result.exit_code == 2, result.output  # 2: some rows were rejected
    assert "3 accepted" in result.output and "1 rejected" in result.output
    assert "unknown_event" in result.output and "Rejected rows" in result.output
    assert "entries.csv" in result.output  # the progress line
    stored = (await api.get("/entries", officer_token(u1))).json()
    assert sorted(e["worker_ids"][0] for e in stored) == sorted(w1[:3])
    assert orjson.loads(orjson.dumps(stored))  # plain JSON
