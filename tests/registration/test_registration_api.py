"""The registration HTTP API against real MongoDB and Kafka: every rule as an HTTP call."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from services.registration.domain import hash_national_id
from shared import topics
from shared.auth import Role, issue_token
from shared.events import decode_event, utc_now
from shared.runtime import AUDIT
from shared.settings import get_settings
from tests.registration.conftest import (
    Api,
    admin_token,
    competition_body,
    individual_event,
    make_world,
    officer_token,
    uid,
)
from tests.topic_reader import read_records

pytestmark = pytest.mark.integration


def rule_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["rule"]


async def register(api: Api, union_id: str, event_id: str, worker_ids: list[str], **kw: Any):
    body = {"event_id": event_id, "union_id": union_id, "worker_ids": worker_ids, **kw}
    return await api.post("/entries", officer_token(union_id), body)


async def test_office_sets_up_and_officers_register_view_and_list(api: Api) -> None:
    world = await make_world(api)
    admin = admin_token()
    u1, u2 = world.unions
    shown = await api.get(f"/competitions/{world.competition_id}", officer_token(u1))
    assert shown.status_code == 200
    assert {e["event_id"] for e in shown.json()["events"]} == {world.individual, world.team}
    team = next(e for e in shown.json()["events"] if e["event_id"] == world.team)
    assert (team["team_min_size"], team["team_max_size"]) == (2, 3)
    assert team["scheme"]["team_marked_as_unit"] is True

    single = await register(api, u1, world.individual, [world.workers[u1][0]])
    assert single.status_code == 201, single.text
    assert single.json()["status"] == "registered"
    squad = await register(
        api, u1, world.team, world.workers[u1][1:4], team_name="港务焊接一队", entry_id=uid("e")
    )
    assert squad.status_code == 201, squad.text

    got = await api.get(f"/entries/{single.json()['entry_id']}", officer_token(u1))
    assert got.status_code == 200 and got.json()["worker_ids"] == [world.workers[u1][0]]
    other = await api.get(f"/entries/{single.json()['entry_id']}", officer_token(u2))
    assert rule_of(other) == (403, "out_of_scope")
    listed = await api.get("/entries", officer_token(u1), params={"event_id": world.team})
    assert [e["entry_id"] for e in listed.json()] == [squad.json()["entry_id"]]
    assert (
        await api.get("/entries", officer_token(u2), params={"event_id": world.team})
    ).json() == []
    forbidden = await api.get("/entries", officer_token(u2), params={"union_id": u1})
    assert rule_of(forbidden) == (403, "out_of_scope")
    leader = issue_token(get_settings(), subject="lead", role=Role.LEADER, scopes=["*"])
    everything = await api.get("/entries", leader, params={"event_id": world.individual})
    assert len(everything.json()) == 1
    assert (await api.get("/entries/nope", admin)).status_code == 404

    # Admin edits the event (quota) and the competition: EventPublished each time.
    edited = await api.put(
        f"/competitions/{world.competition_id}/events/{world.individual}",
        admin,
        {k: v for k, v in individual_event(world.individual, quota=9).items() if k != "event_id"},
    )
    assert edited.status_code == 200 and edited.json()["quota_per_union"] == 9
    body = competition_body(
        world.competition_id, utc_now() - timedelta(days=1), utc_now() + timedelta(days=1)
    )
    body.pop("competition_id")
    body["name"] = "改名后的大赛"
    assert (await api.put(f"/competitions/{world.competition_id}", admin, body)).status_code == 200
    audited = await api.app.state.runtime.db[AUDIT].count_documents(
        {"target": {"$in": [single.json()["entry_id"], world.individual]}}
    )
    assert audited >= 3  # entry.register, event.create, event.edit


async def test_every_rule_is_refused_with_its_name(api: Api) -> None:
    world = await make_world(api, quota=2)
    u1, u2 = world.unions
    w1 = world.workers[u1]
    assert (await register(api, u1, world.individual, [w1[0]])).status_code == 201
    assert rule_of(await register(api, u1, world.individual, [w1[0]])) == (
        409,
        "worker_already_entered",
    )
    assert rule_of(await register(api, u1, world.individual, [world.workers[u2][0]])) == (
        422,
        "worker_not_of_union",
    )
    assert (await register(api, u1, world.individual, [w1[1]])).status_code == 201
    assert rule_of(await register(api, u1, world.individual, [w1[2]])) == (409, "quota_full")
    assert rule_of(await register(api, u1, world.team, [w1[3]], team_name="一队")) == (
        422,
        "team_size",
    )
    assert rule_of(await register(api, u1, world.team, w1[3:7], team_name="一队")) == (
        422,
        "team_size",
    )
    assert rule_of(await register(api, u1, world.team, [w1[3], w1[4]])) == (422, "team_name")
    assert rule_of(await register(api, u1, world.individual, [w1[3], w1[4]])) == (422, "team_size")
    assert rule_of(await register(api, u1, "no-such-event", [w1[3]])) == (404, "unknown_event")
    assert rule_of(await register(api, u1, world.individual, ["ghost"])) == (404, "unknown_worker")
    assert rule_of(
        await api.post(
            "/entries",
            admin_token(),
            {"event_id": world.individual, "union_id": "no-union", "worker_ids": [w1[3]]},
        )
    ) == (404, "unknown_union")
    # Officer of another union, and a role that may not register.
    foreign = await api.post(
        "/entries",
        officer_token(u2),
        {"event_id": world.individual, "union_id": u1, "worker_ids": [w1[3]]},
    )
    assert rule_of(foreign) == (403, "out_of_scope")
    judge = issue_token(get_settings(), subject="j", role=Role.JUDGE, scopes=["*"])
    assert rule_of(await api.post("/entries", judge, {"event_id": "x"})) == (
        403,
        "role_not_allowed",
    )
    assert (
        await api.post("/entries", "", {"event_id": "x"}, headers={"Authorization": ""})
    ).status_code == 401
    # Bad input.
    missing = await api.post(
        "/entries", officer_token(u1), {"event_id": world.individual, "union_id": u1}
    )
    assert rule_of(missing) == (422, "invalid_input")
    assert missing.json()["error"]["field"] == "worker_ids"
    bad_id = await api.post(
        "/entries", officer_token(u1), {"event_id": "a b", "union_id": u1, "worker_ids": ["x"]}
    )
    assert rule_of(bad_id) == (422, "invalid_input")
    bad_worker = await api.post(
        f"/unions/{u1}/workers",
        admin_token(),
        {
            "workers": [
                {
                    "worker_id": "bad-nid",
                    "name": "张",
                    "front_line": True,
                    "national_id": "110105198001010000",
                }
            ]
        },
    )
    assert rule_of(bad_worker) == (422, "invalid_national_id")
    assert bad_worker.json()["error"]["field"] == "workers.0.national_id"
    unsafe = await api.post(
        f"/unions/{u1}/workers",
        admin_token(),
        {
            "workers": [
                {
                    "worker_id": "evil",
                    "name": "=cmd()",
                    "front_line": True,
                    "national_id": world.national_ids[w1[0]],
                }
            ]
        },
    )
    assert rule_of(unsafe) == (422, "unsafe_text")
    again = await api.post("/unions", admin_token(), {"union_id": u1, "name": "x"})
    assert rule_of(again) == (409, "union_exists")

    # Window closed: a competition whose registration ended yesterday.
    closed = await make_world(api, open_window=False, workers_per_union=1)
    c1 = closed.unions[0]
    assert rule_of(await register(api, c1, closed.individual, closed.workers[c1])) == (
        409,
        "window_closed",
    )


async def test_withdraw_frees_the_worker_and_is_refused_once_started(api: Api) -> None:
    world = await make_world(api, quota=1)
    u1, u2 = world.unions
    worker = world.workers[u1][0]
    entry = (await register(api, u1, world.individual, [worker])).json()
    path = f"/entries/{entry['entry_id']}/withdraw"
    assert rule_of(await api.post(path, officer_token(u2), {"reason": "x"})) == (
        403,
        "not_entry_owner",
    )
    done = await api.post(path, officer_token(u1), {"reason": "受伤"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["withdrawal_reason"]) == ("withdrawn", "受伤")
    assert rule_of(await api.post(path, officer_token(u1), {"reason": "again"})) == (
        409,
        "entry_not_registered",
    )
    # Slot and quota were freed: the same worker can enter again.
    again = await register(api, u1, world.individual, [worker])
    assert again.status_code == 201, again.text
    assert rule_of(await api.post("/entries/none/withdraw", officer_token(u1), {})) == (
        404,
        "unknown_entry",
    )
    # The event has started (admin moves its start into the past): no more withdrawals.
    past = utc_now() - timedelta(minutes=5)
    started = individual_event(world.individual, quota=1, starts=past)
    started.pop("event_id")
    moved = await api.put(
        f"/competitions/{world.competition_id}/events/{world.individual}", admin_token(), started
    )
    assert moved.status_code == 200, moved.text
    late = await api.post(f"/entries/{again.json()['entry_id']}/withdraw", officer_token(u1), {})
    assert rule_of(late) == (409, "event_started")
    assert rule_of(await register(api, u1, world.individual, [world.workers[u1][1]])) == (
        409,
        "event_started",
    )


async def test_idempotency_key_replays_and_refuses_another_body(api: Api) -> None:
    world = await make_world(api)
    u1 = world.unions[0]
    token = officer_token(u1)
    body = {"event_id": world.individual, "union_id": u1, "worker_ids": [world.workers[u1][0]]}
    key = uid("key")
    first = await api.post("/entries", token, body, key=key)
    replay = await api.post("/entries", token, body, key=key)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers.get("Idempotent-Replay") == "true"
    other = {**body, "worker_ids": [world.workers[u1][1]]}
    assert rule_of(await api.post("/entries", token, other, key=key)) == (
        409,
        "idempotency_key_reused",
    )
    listed = await api.get("/entries", token, params={"event_id": world.individual})
    assert len(listed.json()) == 1  # the replay stored nothing new
    # Concurrent requests with one key: one write, the same answer for both.
    key2 = uid("key")
    body2 = {**body, "worker_ids": [world.workers[u1][2]]}
    both = await asyncio.gather(*(api.post("/entries", token, body2, key=key2) for _ in range(3)))
    assert {r.status_code for r in both} == {201}
    assert len({r.json()["entry_id"] for r in both}) == 1


async def test_concurrent_registrations_of_one_worker_and_quota_hold(api: Api) -> None:
    world = await make_world(api, quota=3)
    u1 = world.unions[0]
    worker = world.workers[u1][0]
    results = await asyncio.gather(
        *(register(api, u1, world.individual, [worker], entry_id=uid("e")) for _ in range(4))
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [201, 409, 409, 409], [r.text for r in results]
    assert {r.json()["error"]["rule"] for r in results if r.status_code == 409} == {
        "worker_already_entered"
    }
    # Quota 3 with one used: of five different workers at once, exactly two get in.
    results = await asyncio.gather(
        *(register(api, u1, world.individual, [w]) for w in world.workers[u1][1:6])
    )
    assert sorted(r.status_code for r in results) == [201, 201, 409, 409, 409]
    assert {r.json()["error"]["rule"] for r in results if r.status_code == 409} == {"quota_full"}
    listed = await api.get("/entries", officer_token(u1), params={"event_id": world.individual})
    assert len(listed.json()) == 3


async def test_events_reach_the_topic_and_national_ids_stay_masked(api: Api, infra: Any) -> None:
    world = await make_world(api)
    u1 = world.unions[0]
    worker = world.workers[u1][0]
    entry = (await register(api, u1, world.individual, [worker])).json()
    withdrawn = await api.post(f"/entries/{entry['entry_id']}/withdraw", officer_token(u1), {})
    assert withdrawn.status_code == 200
    records = await read_records(
        infra.kafka_bootstrap, topics.REGISTRATION_ENTRIES, 3, key=world.individual
    )
    events = [decode_event(r.value) for r in records]
    assert [e.event_type for e in events] == ["EventPublished", "EntryRegistered", "EntryWithdrawn"]
    registered = events[1]
    member = registered.payload.members[0]
    raw = world.national_ids[worker]
    assert member.national_id_masked == raw[:3] + "*" * 11 + raw[-4:]
    assert registered.payload.union_id == u1 and registered.payload.entry_id == entry["entry_id"]
    assert events[2].payload.entry_id == entry["entry_id"]
    hashed = hash_national_id(raw, get_settings().national_id_pepper)
    roster = await api.get(f"/unions/{u1}/workers", officer_token(u1))
    assert roster.status_code == 200
    texts = [r.value.decode() for r in records] + [roster.text, json.dumps(entry)]
    for text in texts:
        assert raw not in text and hashed not in text
    assert roster.json()[0]["national_id_masked"].count("*") == 11


async def test_asyncapi_and_openapi_document_the_service(api: Api) -> None:
    spec = (await api.client.get("/asyncapi.json")).json()
    text = json.dumps(spec)
    for name in ("EventPublished", "EntryRegistered", "EntryWithdrawn", "registration.entries"):
        assert name in text
    openapi = (await api.client.get("/openapi.json")).json()
    post = openapi["paths"]["/entries"]["post"]
    assert post["summary"].startswith("Register")
    assert "409" in post["responses"] and "201" in post["responses"]
    assert "/entries/import" in openapi["paths"]
