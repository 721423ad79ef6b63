"""The awards service against a real Kafka broker and a real MongoDB replica set: final results
in on `scoring.results`, award decisions out on `awards.decisions`, awards readable over HTTP."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from services.awards.app import POLICY_DIR_ENV, create_app
from services.awards.handlers import AwardsService
from services.awards.policy import DEFAULT_POLICY_DIR, PolicyError, load_policies
from services.awards.repository import AWARDS, AwardsRepository
from shared.auth import Role
from shared.events import AwardGranted, AwardType, EventFormat, Member, ResultLine
from tests.awards.conftest import (
    AwardsUnderTest,
    competition,
    event_ref,
    finalized,
    grants,
    person_line,
    results,
    revocations,
    summary,
    unique,
)

pytestmark = pytest.mark.integration

MDL = AwardType.MAY_DAY_LABOUR_MEDAL
TEX = AwardType.TECHNICAL_EXPERT
EXC = AwardType.EXCELLENT_CONTESTANT
WPN = AwardType.WORKER_PIONEER
ORG = AwardType.ORGANISATION_AWARD


def held(decisions: list[Any]) -> Counter[tuple[str, str]]:
    """(award type, recipient) of every award that stands after these decisions."""
    standing: Counter[tuple[str, str]] = Counter()
    for d in decisions:
        key = (d.payload.award_type.value, d.payload.recipient.recipient_id)
        standing[key] += 1 if isinstance(d, AwardGranted) else -1
    return +standing


async def settle(awards: AwardsUnderTest, event_id: str, version: int = 1) -> None:
    """Until the result is applied and the relay had time to publish what it wrote."""
    await awards.wait_applied(event_id, version)
    await asyncio.sleep(0.3)


async def test_award_granted_within_a_second_of_finalisation(
    awards: AwardsUnderTest,
) -> None:
    latencies: list[float] = []
    for _ in range(3):
        cid, union = unique("c-lat"), unique("u")
        comp, event = competition(cid), event_ref(unique("ev"))
        payload = results(comp, event, [person_line(unique("en"), 1, unique("w"), union_id=union)])
        started = time.time()
        await awards.finalise(payload)
        found = await awards.decisions.wait(cid, lambda d: any(grants(d)), timeout=5.0)
        arrived = min(at for at, e in awards.decisions.arrivals(cid) if e in found)
        latencies.append(arrived - started)
    print(
        f"\nEventFinalized -> AwardGranted on awards.decisions: "
        f"{', '.join(f'{s * 1000:.0f} ms' for s in latencies)} "
        f"(median {statistics.median(latencies) * 1000:.0f} ms)"
    )
    assert max(latencies) < 1.0, latencies


async def test_a_tie_at_first_place_gives_both_the_first_place_awards(
    awards: AwardsUnderTest,
) -> None:
    cid, union = unique("c-tie"), unique("u")
    comp, event = competition(cid), event_ref(unique("ev"))
    a, b, c = unique("w-a"), unique("w-b"), unique("w-c")
    payload = results(
        comp,
        event,
        [
            person_line(unique("en"), 1, a, union_id=union),
            person_line(unique("en"), 1, b, union_id=union),
            person_line(unique("en"), 3, c, union_id=union),
        ],
    )
    await awards.finalise(payload)
    decisions = await awards.decisions.wait(cid, lambda d: len(d) >= 5)
    await settle(awards, event.event_id)
    assert held(awards.decisions.of(cid)) == Counter(
        {(MDL, a): 1, (MDL, b): 1, (TEX, a): 1, (TEX, b): 1, (TEX, c): 1}
    )
    medals = [g for g in grants(decisions) if g.payload.award_type is MDL]
    assert all(m.payload.reason.facts["shared_with"] == 1 for m in medals)
    assert len({g.payload.certificate_no for g in grants(decisions)}) == 5
    assert all(m.payload.rank == 1 for m in medals)

    listed = (
        await awards.http.get(
            "/awards", params={"competition_id": cid}, headers=awards.token(Role.ADMIN, "*")
        )
    ).json()
    assert len(listed) == 5
    medal = next(x for x in listed if x["award_type"] == "may_day_labour_medal")
    assert medal["status"] == "granted"
    assert medal["certificate_no"].startswith(f"JC-{comp.year}-DIS-MDL-")
    assert medal["recipient"]["union_id"] == union and medal["recipient"]["union_name"]
    assert medal["competition"]["competition_id"] == cid
    assert medal["reason"]["rule"] == "district-may-day-labour-medal"
    assert medal["reason"]["facts"]["rank"] == 1
    assert medal["result_version"] == 1 and len(medal["mark_ids"]) == 2
    assert medal["publicity_ends_on"]
    one = await awards.http.get(
        f"/awards/{medal['award_id']}", headers=awards.token(Role.LEADER, "*")
    )
    assert one.status_code == 200 and one.json()["award_id"] == medal["award_id"]


async def test_an_ineligible_entry_ranked_first_leaves_the_medal_vacant(
    awards: AwardsUnderTest,
) -> None:
    cid, union = unique("c-inel"), unique("u")
    comp, event = competition(cid), event_ref(unique("ev"))
    office_worker, second = unique("w-office"), unique("w-second")
    payload = results(
        comp,
        event,
        [
            person_line(unique("en"), 1, office_worker, union_id=union, front_line=False),
            person_line(unique("en"), 2, second, union_id=union),
        ],
    )
    await awards.finalise(payload)
    await awards.decisions.wait(cid, lambda d: len(d) >= 2)
    await settle(awards, event.event_id)
    # The office worker is still a technical expert; nobody moves up into the medal.
    assert held(awards.decisions.of(cid)) == Counter({(TEX, office_worker): 1, (TEX, second): 1})


async def test_too_few_entrants_withholds_titles_but_not_certificates(
    awards: AwardsUnderTest,
) -> None:
    cid, union = unique("c-few"), unique("u")
    comp, event = competition(cid), event_ref(unique("ev"))
    workers = [unique("w") for _ in range(4)]
    lines = [person_line(unique("en"), i + 1, w, union_id=union) for i, w in enumerate(workers)]
    await awards.finalise(results(comp, event, lines, entrants=4))  # district needs 10
    await awards.decisions.wait(cid, lambda d: len(d) >= 1)
    await settle(awards, event.event_id)
    assert held(awards.decisions.of(cid)) == Counter({(EXC, workers[3]): 1})


async def test_a_person_gets_the_medal_once_per_year_and_level(awards: AwardsUnderTest) -> None:
    cid, union = unique("c-twice"), unique("u")
    comp = competition(cid)
    first_event, second_event = event_ref(unique("ev-1")), event_ref(unique("ev-2"))
    champion = unique("w-champ")
    for event in (first_event, second_event):
        await awards.finalise(
            results(comp, event, [person_line(unique("en"), 1, champion, union_id=union)])
        )
        await settle(awards, event.event_id)
    decisions = awards.decisions.of(cid)
    medals = [g for g in grants(decisions) if g.payload.award_type is MDL]
    assert [m.payload.event.event_id for m in medals if m.payload.event] == [first_event.event_id]
    experts = {
        g.payload.event.event_id
        for g in grants(decisions)
        if g.payload.award_type is TEX and g.payload.event
    }
    assert experts == {first_event.event_id, second_event.event_id}
    assert not revocations(decisions)


async def test_an_amendment_moving_first_place_revokes_and_grants(
    awards: AwardsUnderTest,
) -> None:
    cid, union = unique("c-amend"), unique("u")
    comp, event = competition(cid), event_ref(unique("ev"))
    a, b = unique("w-a"), unique("w-b")
    entry_a, entry_b = unique("en-a"), unique("en-b")
    await awards.finalise(
        results(
            comp,
            event,
            [
                person_line(entry_a, 1, a, union_id=union),
                person_line(entry_b, 2, b, union_id=union),
            ],
        )
    )
    await awards.decisions.wait(cid, lambda d: len(d) >= 3)
    await settle(awards, event.event_id)

    amended = results(
        comp,
        event,
        [person_line(entry_b, 1, b, union_id=union), person_line(entry_a, 2, a, union_id=union)],
        version=2,
    )
    await awards.finalise(amended)
    decisions = await awards.decisions.wait(cid, lambda d: len(d) >= 5)
    await settle(awards, event.event_id, version=2)
    decisions = awards.decisions.of(cid)
    # Keyed by recipient, so only each recipient's own decisions are ordered on the topic.
    assert sorted(summary(decisions[3:])) == [("grant", MDL, b), ("revoke", MDL, a)]
    assert held(decisions) == Counter({(MDL, b): 1, (TEX, a): 1, (TEX, b): 1})
    revoked = revocations(decisions)[0].payload
    assert revoked.result_version == 2 and revoked.reason.rule == "no-longer-earned"
    assert grants(decisions)[-1].payload.result_version == 2

    # A replay of the old version (a new envelope) is older than the applied one: ignored.
    await awards.finalise(results(comp, event, list(amended.lines), version=1))
    await awards.finalise(amended)  # the same version again, in a new envelope: ignored too
    sentinel = event_ref(unique("ev-sentinel"))
    await awards.publish(
        "scoring.results",
        finalized(results(comp, sentinel, [], entrants=0)),
        event.event_id,  # same key, same partition: processed after the replays
    )
    await settle(awards, sentinel.event_id)
    assert len(awards.decisions.of(cid)) == 5

    listed = (
        await awards.http.get(
            "/awards",
            params={"event_id": event.event_id, "status": "revoked"},
            headers=awards.token(Role.ADMIN, "*"),
        )
    ).json()
    assert [(x["award_type"], x["recipient"]["union_id"]) for x in listed] == [(MDL, union)]
    assert listed[0]["revocation"]["result_version"] == 2


async def test_the_same_result_delivered_twice_decides_once(awards: AwardsUnderTest) -> None:
    cid, union = unique("c-dup"), unique("u")
    comp, event = competition(cid), event_ref(unique("ev"))
    winner = unique("w")
    envelope = finalized(
        results(comp, event, [person_line(unique("en"), 1, winner, union_id=union)])
    )
    await awards.publish("scoring.results", envelope, event.event_id)
    await awards.publish("scoring.results", envelope, event.event_id)
    sentinel = event_ref(unique("ev-sentinel"))
    await awards.publish(
        "scoring.results",
        finalized(results(comp, sentinel, [], entrants=0)),
        event.event_id,
    )
    await settle(awards, sentinel.event_id)
    assert sorted(summary(awards.decisions.of(cid))) == [
        ("grant", MDL, winner),
        ("grant", TEX, winner),
    ]
    assert await awards.db[AWARDS].count_documents({"competition.competition_id": cid}) == 2


async def test_the_organisation_award_waits_for_every_event_and_follows_amendments(
    awards: AwardsUnderTest,
) -> None:
    cid = unique("c-org")
    comp = competition(cid)
    strong, weak = unique("u-strong"), unique("u-weak")
    welding, bim = event_ref(unique("ev-weld")), event_ref(unique("ev-bim"), EventFormat.TEAM)
    await awards.publish_event(comp, welding)
    await awards.publish_event(comp, bim)
    await asyncio.sleep(0.5)  # both published events recorded before any result
    welding_lines = [
        person_line(unique("en"), 1, unique("w"), union_id=strong),
        person_line(unique("en"), 2, unique("w"), union_id=strong),
        person_line(unique("en"), 3, unique("w"), union_id=weak),
    ]
    await awards.finalise(results(comp, welding, welding_lines))
    await settle(awards, welding.event_id)
    assert not [g for g in grants(awards.decisions.of(cid)) if g.payload.award_type is ORG]

    team = ResultLine(
        entry_id=unique("en-team"),
        rank=1,
        total=welding_lines[0].total,
        components=dict(welding_lines[0].components),
        qualified=True,
        union_id=weak,
        union_name=f"工会 {weak}",
        team_name="BIM 突击队",
        members=tuple(
            Member(worker_id=unique("w"), name="队员", front_line=True) for _ in range(3)
        ),
    )
    await awards.finalise(results(comp, bim, [team], entrants=8))
    await awards.decisions.wait(cid, lambda d: any(g.payload.award_type is ORG for g in grants(d)))
    await settle(awards, bim.event_id)
    standing = held(awards.decisions.of(cid))
    # weak: 1 welder + 3 team members = 4 qualified people; strong: 2.
    assert standing[(ORG, weak)] == 1 and standing[(ORG, strong)] == 0
    assert standing[(WPN, team.entry_id)] == 1

    disqualified = team.model_copy(update={"qualified": False})
    await awards.finalise(results(comp, bim, [disqualified], entrants=8, version=2))
    await awards.decisions.wait(cid, lambda d: held(d)[(ORG, strong)] == 1)
    await settle(awards, bim.event_id, version=2)
    standing = held(awards.decisions.of(cid))
    assert standing[(ORG, strong)] == 1 and standing[(ORG, weak)] == 0
    assert standing[(WPN, team.entry_id)] == 0


async def test_a_union_officer_sees_only_its_own_unions_awards(awards: AwardsUnderTest) -> None:
    cid = unique("c-scope")
    comp, event = competition(cid), event_ref(unique("ev"))
    mine, theirs = unique("u-mine"), unique("u-theirs")
    await awards.finalise(
        results(
            comp,
            event,
            [
                person_line(unique("en"), 1, unique("w"), union_id=theirs),
                person_line(unique("en"), 2, unique("w"), union_id=mine),
            ],
        )
    )
    await settle(awards, event.event_id)
    officer = awards.token(Role.UNION_OFFICER, f"union:{mine}")
    own = (await awards.http.get("/awards", params={"competition_id": cid}, headers=officer)).json()
    assert own and {x["recipient"]["union_id"] for x in own} == {mine}

    everything = (
        await awards.http.get(
            "/awards", params={"competition_id": cid}, headers=awards.token(Role.LEADER, "*")
        )
    ).json()
    assert {x["recipient"]["union_id"] for x in everything} == {mine, theirs}
    foreign = next(x for x in everything if x["recipient"]["union_id"] == theirs)

    asked = await awards.http.get(
        "/awards", params={"competition_id": cid, "union_id": theirs}, headers=officer
    )
    assert asked.status_code == 403 and asked.json()["error"]["field"] == "union"
    direct = await awards.http.get(f"/awards/{foreign['award_id']}", headers=officer)
    assert direct.status_code == 403
    judge = await awards.http.get(
        "/awards", params={"competition_id": cid}, headers=awards.token(Role.JUDGE, "*")
    )
    assert judge.status_code == 403
    assert (await awards.http.get("/awards")).status_code == 401
    missing = await awards.http.get("/awards/aw-nope", headers=awards.token(Role.ADMIN, "*"))
    assert missing.status_code == 404


async def test_dry_run_decides_and_stores_nothing(awards: AwardsUnderTest) -> None:
    cid, union = unique("c-dry"), unique("u")
    comp, event = competition(cid), event_ref(unique("ev"))
    lines = [
        person_line(unique("en"), 1, unique("w"), union_id=union, qualified=False),
        person_line(unique("en"), 2, unique("w"), union_id=union),
    ]
    body = {"result": results(comp, event, lines).model_dump(mode="json")}
    awards_before = await awards.db[AWARDS].count_documents({})
    answer = await awards.http.post(
        "/policies/dry-run",
        json=body,
        headers=awards.token(Role.CHIEF_JUDGE, f"event:{event.event_id}"),
    )
    assert answer.status_code == 200, answer.text
    dry = answer.json()
    assert [(d["award_type"], d["rank"]) for d in dry["decisions"]] == [(TEX, 2)]
    assert {w["award_type"] for w in dry["withheld"]} == {MDL, TEX}
    assert all("not qualified" in w["reason"] for w in dry["withheld"])

    await asyncio.sleep(0.3)
    assert await awards.db[AWARDS].count_documents({}) == awards_before
    assert awards.decisions.of(cid) == []

    forbidden = await awards.http.post(
        "/policies/dry-run", json=body, headers=awards.token(Role.UNION_OFFICER, f"union:{union}")
    )
    assert forbidden.status_code == 403
    broken = {"result": {**body["result"], "version": 0}}
    invalid = await awards.http.post(
        "/policies/dry-run", json=broken, headers=awards.token(Role.ADMIN, "*")
    )
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "result.version"

    policies = await awards.http.get("/policies", headers=awards.token(Role.JUDGE))
    assert policies.status_code == 200
    assert {p["level"] for p in policies.json()["policies"]} == {
        "national",
        "provincial",
        "city",
        "district",
        "enterprise",
    }


def test_a_broken_policy_file_stops_the_service(
    infra: Any, db_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(DEFAULT_POLICY_DIR, tmp_path, dirs_exist_ok=True)
    district = tmp_path / "district.yaml"
    text = district.read_text(encoding="utf-8")
    broken_line = next(
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() == "rank_to: 3"
    )
    district.write_text(text.replace("rank_to: 3", "rank_to: three", 1), encoding="utf-8")
    monkeypatch.setenv(POLICY_DIR_ENV, str(tmp_path))
    settings = infra.settings(
        mongodb_db_prefix=db_prefix,
    )
    with pytest.raises(PolicyError) as refused:
        create_app(settings)
    message = str(refused.value)
    assert message.startswith(f"district.yaml line {broken_line}, field rules[2].rank_to:"), message
    assert refused.value.line == broken_line and refused.value.field == "rules[2].rank_to"


async def test_concurrent_results_cannot_give_a_person_two_medals_in_a_year(
    awards: AwardsUnderTest,
) -> None:
    """Two instances deciding two events at once: the level/year lock serialises them."""
    runtime = awards.app.state.runtime
    service = AwardsService(runtime, AwardsRepository(runtime.db), load_policies())
    cid, union, champion = unique("c-race"), unique("u"), unique("w-champ")
    comp = competition(cid)
    envelopes = [
        finalized(
            results(
                comp,
                event_ref(unique("ev")),
                [person_line(unique("en"), 1, champion, union_id=union)],
            )
        )
        for _ in range(2)
    ]

    async def decide(envelope: Any) -> Any:
        async def work(session: Any) -> Any:
            return await service.apply_result(envelope, session)

        return await runtime.transact(work)

    outcomes = await asyncio.gather(*(decide(e) for e in envelopes))
    assert sum(len(o.granted) for o in outcomes) == 3  # one medal, two technical experts
    medals = await awards.db[AWARDS].count_documents(
        {"competition.competition_id": cid, "award_type": MDL.value, "status": "granted"}
    )
    assert medals == 1


async def test_the_store_refuses_a_second_standing_award_with_the_same_key(
    awards: AwardsUnderTest,
) -> None:
    existing = await awards.db[AWARDS].find_one({"status": "granted"})
    assert existing is not None
    duplicate = {**existing, "_id": unique("aw"), "award_id": "copy", "once_key": unique("k")}
    with pytest.raises(DuplicateKeyError):
        await awards.db[AWARDS].insert_one(duplicate)
