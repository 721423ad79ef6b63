"""The scoring service against real Kafka and MongoDB: roster from registration events, mark
validation, corrections, flags, finalisation and amendment through the outbox, theory import,
the WebSocket stream, standings (GET, SSE, Kafka) and the competition report."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets
from pydantic import TypeAdapter

from services.scoring.repository import MARKS
from shared import topics
from shared.auth import Role
from shared.events import ResultsEvent, StandingsUpdated
from shared.runtime import AUDIT
from tests.topic_reader import read_records

from .conftest import (
    Contest,
    ScoringHarness,
    practical_only_scheme,
    set_up_contest,
    standings_of,
    wait_for,
    withdrawal,
)

pytestmark = pytest.mark.integration


def judge(harness: ScoringHarness, contest: Contest, n: int) -> dict[str, str]:
    judge_id = f"{contest.event_id}-j{n}"
    return harness.auth(Role.JUDGE, judge_id, [f"event:{contest.event_id}"])


def chief(harness: ScoringHarness, contest: Contest) -> dict[str, str]:
    return harness.auth(Role.CHIEF_JUDGE, contest.chief, [f"event:{contest.event_id}"])


async def mark(
    harness: ScoringHarness, contest: Contest, judge_no: int, **body: Any
) -> httpx.Response:
    body.setdefault("component", "practical")
    return await harness.http.post(
        f"/events/{contest.event_id}/marks", headers=judge(harness, contest, judge_no), json=body
    )


def mark_id() -> str:
    return "m-" + uuid.uuid4().hex[:10]


async def test_roster_follows_registration_events(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b", "U-c"))
    withdrawn = contest.entry(3)
    await scoring.publish(withdrawal(contest, withdrawn))

    async def withdrawn_gone() -> dict[str, Any] | None:
        standings = await standings_of(scoring, contest.event_id)
        return standings if len(standings["lines"]) == 2 else None

    standings = await wait_for(withdrawn_gone)
    lines = {line["entry_id"]: line for line in standings["lines"]}
    assert set(lines) == {contest.entry(1), contest.entry(2)}
    # Unmarked entries are listed, share rank 1 at 0.00, incomplete and not qualified.
    first = lines[contest.entry(1)]
    assert (first["rank"], first["total"], first["complete"], first["qualified"]) == (
        1,
        "0.00",
        False,
        False,
    )
    assert first["union_id"] == "U-a" and first["union_name"] == "U-a工会"
    assert first["members"][0]["worker_id"] == f"{contest.entry(1)}-w0"
    assert first["members"][0]["front_line"] is True
    assert standings["can_finalise"] is True and standings["marks_counted"] == 0

    response = await mark(scoring, contest, 1, mark_id=mark_id(), entry_id=withdrawn, value="80")
    assert response.status_code == 422
    assert response.json()["error"]["rule"] == "mark.entry_withdrawn"


async def test_every_rejection_names_its_rule(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b"))
    own_union_entry, other_entry = contest.entry(1), contest.entry(2)

    async def rejected(judge_no: int, status: int, rule: str, **body: Any) -> None:
        body.setdefault("mark_id", mark_id())
        body.setdefault("entry_id", other_entry)
        body.setdefault("value", "75")
        response = await mark(scoring, contest, judge_no, **body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["rule"] == rule

    await rejected(9, 403, "judge.not_assigned")
    coi_id = mark_id()
    await rejected(3, 403, "judge.conflict_of_interest", mark_id=coi_id, entry_id=own_union_entry)
    await rejected(1, 422, "mark.unknown_component", component="speed")
    await rejected(1, 422, "mark.value_out_of_range", value="100.01")
    await rejected(1, 422, "mark.value_out_of_range", value="-1")
    await rejected(1, 422, "mark.value_out_of_range", value="70.123")
    await rejected(1, 422, "mark.entry_not_registered", entry_id=f"{contest.event_id}-nobody")
    await rejected(1, 422, "mark.invalid_target", member_id="someone")

    # The conflict of interest was refused and audited.
    audit = await scoring.service.runtime.db[AUDIT].find_one(
        {"details.mark_id": coi_id, "outcome": "rejected"}
    )
    assert audit is not None
    assert audit["actor"] == f"{contest.event_id}-j3"
    assert audit["details"]["error"]["rule"] == "judge.conflict_of_interest"

    # A token for another event is refused before anything else.
    response = await scoring.http.post(
        f"/events/{contest.event_id}/marks",
        headers=scoring.auth(Role.JUDGE, f"{contest.event_id}-j1", ["event:elsewhere"]),
        json={"mark_id": mark_id(), "entry_id": other_entry, "component": "practical", "value": 1},
    )
    assert response.status_code == 403
    assert response.json()["error"]["rule"] == "out_of_scope"

    # Resubmission: same content is a no-op, different content a 409.
    first = mark_id()
    response = await mark(scoring, contest, 1, mark_id=first, entry_id=other_entry, value="75.5")
    assert (response.status_code, response.json()) == (201, {"mark_id": first, "outcome": "added"})
    response = await mark(scoring, contest, 1, mark_id=first, entry_id=other_entry, value=75.5)
    assert (response.status_code, response.json()["outcome"]) == (200, "duplicate")
    await rejected(1, 409, "mark.id_conflict", mark_id=first, value="76")
    # A second plain mark for the same slot must be a correction; a correction needs a reason.
    await rejected(1, 422, "mark.invalid_correction")
    await rejected(1, 422, "mark.invalid_correction", supersedes=first, reason="  ")
    stored = await scoring.service.runtime.db[MARKS].count_documents({"entry_id": other_entry})
    assert stored == 1


async def test_corrections_keep_the_full_history(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b"), scheme=practical_only_scheme())
    entry = contest.entry(2)
    original, correction = mark_id(), mark_id()
    assert (
        await mark(scoring, contest, 1, mark_id=original, entry_id=entry, value="62")
    ).is_success
    response = await mark(
        scoring,
        contest,
        1,
        mark_id=correction,
        entry_id=entry,
        value="68.5",
        supersedes=original,
        reason="mis-keyed on the tablet",
    )
    assert response.status_code == 201, response.text

    history = await scoring.http.get(f"/entries/{entry}/marks", headers=chief(scoring, contest))
    assert history.status_code == 200
    marks = history.json()["marks"]
    assert [(m["mark_id"], m["value"], m["current"]) for m in marks] == [
        (original, "62.00", False),
        (correction, "68.50", True),
    ]
    assert marks[0]["superseded_by"] == correction
    assert marks[1]["reason"] == "mis-keyed on the tablet"
    standings = await standings_of(scoring, contest.event_id)
    line = next(line for line in standings["lines"] if line["entry_id"] == entry)
    assert line["total"] == "68.50" and line["qualified"] is True

    # A judge of another event may not read it.
    response = await scoring.http.get(
        f"/entries/{entry}/marks", headers=scoring.auth(Role.JUDGE, "x", ["event:other"])
    )
    assert response.status_code == 403

    # The state is rebuilt from Mongo alone to the same standings.
    scoring.service._states.clear()
    assert (await standings_of(scoring, contest.event_id))["lines"] == standings["lines"]


async def test_flags_block_finalisation_until_resolved_then_results_are_published(
    scoring: ScoringHarness,
) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b", "U-c"), scheme=practical_only_scheme())
    e1, e2, e3 = contest.entry(1), contest.entry(2), contest.entry(3)
    # j1 and j2 mark everything; j3 (union U-a) marks the others. e2 diverges 50 vs 90.
    plan = [(1, e1, "90"), (2, e1, "88"), (1, e2, "50"), (2, e2, "90"), (3, e2, "70")]
    plan += [(1, e3, "85"), (2, e3, "85"), (3, e3, "85")]
    for judge_no, entry, value in plan:
        response = await mark(
            scoring, contest, judge_no, mark_id=mark_id(), entry_id=entry, value=value
        )
        assert response.status_code == 201, response.text

    standings = await standings_of(scoring, contest.event_id)
    assert standings["flagged_entries"] == [e2]
    assert standings["can_finalise"] is False
    assert "tolerance" in standings["blocking_reasons"][0]

    finalise_url = f"/events/{contest.event_id}/finalise"
    response = await scoring.http.post(finalise_url, headers=chief(scoring, contest), json={})
    assert response.status_code == 422
    assert response.json()["error"]["rule"] == "result.divergence_unresolved"
    # Only this event's chief judge may finalise or resolve.
    not_chief = scoring.auth(Role.CHIEF_JUDGE, "someone-else", [f"event:{contest.event_id}"])
    response = await scoring.http.post(finalise_url, headers=not_chief, json={})
    assert response.status_code == 403
    resolve_url = f"/events/{contest.event_id}/flags/{e2}/resolve"
    body = {"component": "practical", "note": "video review: both marks stand"}
    assert (await scoring.http.post(resolve_url, headers=not_chief, json=body)).status_code == 403

    response = await scoring.http.post(resolve_url, headers=chief(scoring, contest), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["still_flagged"] is False
    assert (await standings_of(scoring, contest.event_id))["can_finalise"] is True

    response = await scoring.http.post(finalise_url, headers=chief(scoring, contest), json={})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    response = await scoring.http.post(finalise_url, headers=chief(scoring, contest), json={})
    assert response.status_code == 409
    assert response.json()["error"]["rule"] == "result.already_finalised"

    # Appeal: e1's mark from j2 is corrected after finalisation, then the result is amended.
    history = (
        await scoring.http.get(f"/entries/{e1}/marks", headers=chief(scoring, contest))
    ).json()["marks"]
    j2_mark = next(m for m in history if m["judge_id"] == f"{contest.event_id}-j2")
    response = await mark(
        scoring,
        contest,
        2,
        mark_id=mark_id(),
        entry_id=e1,
        value="72",
        supersedes=j2_mark["mark_id"],
        reason="appeal upheld: safety violation missed",
    )
    assert response.status_code == 201, response.text
    amend_url = f"/events/{contest.event_id}/amend"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    amend_body = {"reason": "appeal upheld"}
    response = await scoring.http.post(
        amend_url, headers=chief(scoring, contest) | key, json=amend_body
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    again = await scoring.http.post(
        amend_url, headers=chief(scoring, contest) | key, json=amend_body
    )
    assert again.json() == response.json(), "same Idempotency-Key, same answer, no version 3"
    other = await scoring.http.post(
        amend_url, headers=chief(scoring, contest) | key, json={"reason": "something else"}
    )
    assert other.status_code == 409

    records = await read_records(scoring.bootstrap, topics.SCORING_RESULTS, 2, key=contest.event_id)
    results = [TypeAdapter(ResultsEvent).validate_json(r.value) for r in records]
    assert [(r.event_type, r.payload.version) for r in results] == [
        ("EventFinalized", 1),
        ("EventResultsAmended", 2),
    ]
    finalised, amended = results[0].payload, results[1].payload
    # e1: (90+88)/2 = 89.00; e3: 85.00; e2: (50+90+70)/3 = 70.00
    assert [(line.entry_id, line.rank, str(line.total)) for line in finalised.lines] == [
        (e1, 1, "89.00"),
        (e3, 2, "85.00"),
        (e2, 3, "70.00"),
    ]
    assert finalised.entrants == 3 and finalised.finalised_by == contest.chief
    assert finalised.lines[0].members[0].worker_id == f"{e1}-w0"
    # After the appeal e1 = (90+72)/2 = 81.00 and drops to second.
    assert [(line.entry_id, line.rank) for line in amended.lines] == [(e3, 1), (e1, 2), (e2, 3)]
    assert amended.reason == "appeal upheld"


async def test_theory_import_from_the_exam_system(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b"))
    e1, e2 = contest.entry(1), contest.entry(2)
    csv_text = (
        "entry_id,member_id,score\n"
        f"{e1},,88.5\n"
        f"{e2},,abc\n"
        f"{contest.event_id}-ghost,,70\n"
        f"{e2},,101\n"
    )
    url = f"/events/{contest.event_id}/theory-import"
    headers = chief(scoring, contest) | {"Content-Type": "text/csv"}
    response = await scoring.http.post(url, headers=headers, content=csv_text)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["imported"] == 1
    assert [(e["row"], e["field"]) for e in body["errors"]] == [
        (3, "score"),
        (4, "entry_id"),
        (5, "value"),
    ]
    # A judge may not import; the same file again changes nothing; a new score supersedes.
    judge_headers = judge(scoring, contest, 1) | {"Content-Type": "text/csv"}
    assert (
        await scoring.http.post(url, headers=judge_headers, content=csv_text)
    ).status_code == 403
    again = (await scoring.http.post(url, headers=headers, content=csv_text)).json()
    assert (again["imported"], again["unchanged"]) == (0, 1)
    changed = f"entry_id,member_id,score\n{e1},,90\n"
    assert (await scoring.http.post(url, headers=headers, content=changed)).json()["imported"] == 1

    history = (
        await scoring.http.get(f"/entries/{e1}/marks", headers=chief(scoring, contest))
    ).json()
    assert [
        (m["judge_id"], m["component"], m["value"], m["current"]) for m in history["marks"]
    ] == [
        ("exam-system", "theory", "88.50", False),
        ("exam-system", "theory", "90.00", True),
    ]
    line = next(
        line
        for line in (await standings_of(scoring, contest.event_id))["lines"]
        if line["entry_id"] == e1
    )
    assert line["components"] == {"theory": "90.00"} and line["total"] == "27.00"


async def test_batch_and_websocket_stream(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b", "U-c"), scheme=practical_only_scheme())
    e1, e2, e3 = contest.entry(1), contest.entry(2), contest.entry(3)
    batch = {
        "marks": [
            {"mark_id": "b1-" + e1, "entry_id": e1, "component": "practical", "value": "70"},
            {"mark_id": "b1-" + e2, "entry_id": e2, "component": "practical", "value": "171"},
        ]
    }
    response = await scoring.http.post(
        f"/events/{contest.event_id}/marks/batch", headers=judge(scoring, contest, 1), json=batch
    )
    assert response.status_code == 200
    assert [
        (r["mark_id"], r.get("outcome"), r.get("status")) for r in response.json()["results"]
    ] == [
        ("b1-" + e1, "added", None),
        ("b1-" + e2, None, 422),
    ]

    token = scoring.token(Role.JUDGE, f"{contest.event_id}-j2", [f"event:{contest.event_id}"])
    url = f"{scoring.ws_base}/events/{contest.event_id}/marks/stream?token={token}"
    async with websockets.connect(url) as ws:
        marks = [
            {"mark_id": f"ws-{e}", "entry_id": e, "component": "practical", "value": v}
            for e, v in ((e1, "72"), (e2, "80"), (e3, "91.25"))
        ]
        await ws.send(json.dumps(marks))
        replies = json.loads(await ws.recv())
        assert [r["outcome"] for r in replies] == ["added", "added", "added"]
        await ws.send(json.dumps(marks[0]))
        assert json.loads(await ws.recv()) == {"mark_id": f"ws-{e1}", "outcome": "duplicate"}
        await ws.send(json.dumps([{"mark_id": "x", "entry_id": e1, "component": "practical"}]))
        reply = json.loads(await ws.recv())
        assert reply[0]["mark_id"] == "x" and reply[0]["error"]["rule"] == "invalid_input"

    # A bad token is refused before the socket opens.
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(url.replace(token, "nonsense")):
            pass

    standings = await standings_of(scoring, contest.event_id)
    assert [(line["entry_id"], line["total"]) for line in standings["lines"]] == [
        (e3, "91.25"),
        (e2, "80.00"),
        (e1, "71.00"),
    ]
    assert standings["marks_counted"] == 4


async def test_standings_stream_and_kafka_follow_marks(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-b"), scheme=practical_only_scheme())
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async with (
            httpx.AsyncClient(base_url=scoring.base_url, timeout=30.0) as client,
            client.stream(
                "GET",
                f"/events/{contest.event_id}/standings/stream",
                headers=scoring.auth(Role.LEADER, "leader"),
            ) as response,
        ):
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "standings":
                    seen.append(json.loads(line[5:]))
                    if seen[-1]["marks_counted"] >= 1:
                        return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    response = await mark(
        scoring, contest, 1, mark_id=mark_id(), entry_id=contest.entry(2), value="66"
    )
    assert response.status_code == 201
    await asyncio.wait_for(follower, 10)
    assert seen[0]["marks_counted"] == 0
    assert seen[-1]["lines"][0]["entry_id"] == contest.entry(2)

    records = await read_records(
        scoring.bootstrap, topics.SCORING_STANDINGS, 1, key=contest.event_id
    )
    updates = [StandingsUpdated.model_validate_json(r.value) for r in records]
    assert updates and updates[-1].payload.event.event_id == contest.event_id
    latest = await wait_for(
        lambda: _latest_standings_counted(scoring, contest.event_id), timeout=10
    )
    assert latest.payload.lines[0].entry_id == contest.entry(2)
    marks = await read_records(scoring.bootstrap, topics.SCORING_MARKS, 1, key=contest.event_id)
    assert len(marks) == 1


async def _latest_standings_counted(scoring: ScoringHarness, event_id: str) -> Any:
    records = await read_records(
        scoring.bootstrap, topics.SCORING_STANDINGS, 99, key=event_id, timeout=1
    )
    updates = [StandingsUpdated.model_validate_json(r.value) for r in records]
    counted = [u for u in updates if u.payload.marks_counted >= 1]
    return counted[-1] if counted else None


async def test_competition_report_json_and_png(scoring: ScoringHarness) -> None:
    contest = await set_up_contest(scoring, ("U-a", "U-a", "U-b"), scheme=practical_only_scheme())
    for n, value in ((1, "90"), (2, "40"), (3, "75")):
        response = await mark(
            scoring, contest, 1, mark_id=mark_id(), entry_id=contest.entry(n), value=value
        )
        assert response.status_code == 201
    leader = scoring.auth(Role.LEADER, "leader")
    report = await scoring.http.get(
        f"/competitions/{contest.competition_id}/report", headers=leader
    )
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["totals"] == {
        "entries": 3,
        "people": 3,
        "marked": 3,
        "qualified": 2,
        "pass_rate": "66.67",
    }
    unions = {u["union_id"]: u for u in body["unions"]}
    assert (unions["U-a"]["entries"], unions["U-a"]["pass_rate"]) == (2, "50.00")
    assert (unions["U-b"]["entries"], unions["U-b"]["pass_rate"]) == (1, "100.00")
    assert body["events"][0]["event_id"] == contest.event_id

    png = await scoring.http.get(
        f"/competitions/{contest.competition_id}/report.png", headers=leader
    )
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    judge_only = judge(scoring, contest, 1)
    denied = await scoring.http.get(
        f"/competitions/{contest.competition_id}/report", headers=judge_only
    )
    assert denied.status_code == 403


async def test_report_command_writes_the_chart(scoring: ScoringHarness, tmp_path: Any) -> None:
    import typer
    from typer.testing import CliRunner

    from services.scoring import report

    contest = await set_up_contest(scoring, ("U-a", "U-b"), scheme=practical_only_scheme())
    await mark(scoring, contest, 1, mark_id=mark_id(), entry_id=contest.entry(2), value="61")
    cli = typer.Typer()
    cli.add_typer(report.app, name="report")  # as `jinchui report` registers it
    out = tmp_path / "chart.png"
    args = ["report", contest.competition_id, "--url", scoring.base_url, "--out", str(out)]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "pass rate 50.00 %" in result.output
