"""Plays a `Scenario` through the four services' HTTP APIs, as the people would.

Each step reports progress through a `Reporter`, so the demo can draw it with rich and the
end-to-end test can stay quiet and assert.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn
import websockets
from fastapi import FastAPI, Request, Response

from jinchui.client import ApiError, Platform, Tokens
from jinchui.scenario import PlannedMark, Scenario
from jinchui.stack import free_port
from services.notifications.channels import verify_signature


class Reporter(Protocol):
    def step(self, title: str) -> None: ...
    def progress(self, label: str, total: int) -> Callable[[int], None]: ...
    def info(self, text: str) -> None: ...
    def feed_item(self, item: dict[str, Any]) -> None: ...


class QuietReporter:
    def step(self, title: str) -> None:
        pass

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        return lambda _n: None

    def info(self, text: str) -> None:
        pass

    def feed_item(self, item: dict[str, Any]) -> None:
        pass


@dataclass
class WebhookReceiver:
    """A leader's system receiving signed webhooks (a real HTTP server on loopback)."""

    secret: str
    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            if not verify_signature(self.secret, body, request.headers.get("X-Jinchui-Signature")):
                self.bad_signatures += 1
                return Response(status_code=401)
            self.received.append(
                {"key": request.headers.get("X-Jinchui-Delivery"), "body": json.loads(body)}
            )
            return Response(status_code=204)

        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
        if self._task:
            with contextlib.suppress(Exception):
                await self._task


@dataclass
class PlayResult:
    entries: int = 0
    entrants: int = 0
    marks: int = 0
    conflict_rejected: bool = False
    conflict_error: str = ""
    standings: dict[str, Any] = field(default_factory=dict)
    finalised_at: dict[str, float] = field(default_factory=dict)
    awards: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    expected_deliveries: int = 0
    feed: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    def award_counts(self) -> dict[str, int]:
        counts = {
            "may_day_labour_medal": 0,
            "worker_pioneer": 0,
            "technical_expert": 0,
            "excellent_contestant": 0,
            "organisation_award": 0,
        }
        for award in self.awards:
            if award.get("status", "granted") == "granted":
                counts[award["award_type"]] = counts.get(award["award_type"], 0) + 1
        return counts

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "entries": self.entries,
            "entrants": self.entrants,
            "marks": self.marks,
            "awards": self.award_counts(),
            "notifications_expected": self.expected_deliveries,
            "notifications_delivered": sum(
                1 for d in self.deliveries if d.get("status") == "delivered"
            ),
            "webhooks_received": len(self.webhooks),
            "conflict_of_interest_rejected": self.conflict_rejected,
            "finalisation_to_notification_ms": {
                "p50": round(statistics.median(lat), 1) if lat else None,
                "max": round(lat[-1], 1) if lat else None,
                "samples": len(lat),
            },
        }


def subscriptions_for(scenario: Scenario, webhook_url: str) -> list[dict[str, Any]]:
    subs: list[dict[str, Any]] = [
        {
            "leader_id": f"{scenario.competition_id}-federation-chair",
            "name": "区总工会主席",
            "role": "federation",
            "channels": {"webhook": webhook_url, "live_feed": True},
            "language": "zh",
        },
        {
            "leader_id": f"{scenario.competition_id}-committee",
            "name": "Competition committee",
            "role": "committee",
            "scope": scenario.competition_id,
            "channels": {"live_feed": True},
            "language": "en",
        },
    ]
    for union_id, union_name in scenario.unions.items():
        subs.append(
            {
                "leader_id": f"{union_id}-chair",
                "name": f"{union_name}主席",
                "role": "union_chair",
                "scope": union_id,
                "channels": {"live_feed": True},
                "language": "zh",
            }
        )
    return subs


def expected_delivery_count(subs: list[dict[str, Any]], awards: list[dict[str, Any]]) -> int:
    total = 0
    for award in awards:
        for sub in subs:
            role = sub["role"]
            wants = (
                role == "federation"
                or (role == "union_chair" and award["recipient"]["union_id"] == sub["scope"])
                or (role == "committee" and award["competition"]["competition_id"] == sub["scope"])
            )
            if wants:
                total += len(sub["channels"])
    return total


async def gather_limited(jobs: list[Callable[[], Awaitable[Any]]], limit: int = 16) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(j) for j in jobs))


class Player:
    def __init__(
        self,
        platform: Platform,
        tokens: Tokens,
        scenario: Scenario,
        reporter: Reporter | None = None,
        *,
        webhook_secret: str,
    ) -> None:
        self.p = platform
        self.tokens = tokens
        self.s = scenario
        self.r = reporter or QuietReporter()
        self.result = PlayResult()
        self.admin = tokens.admin()
        self.webhook = WebhookReceiver(webhook_secret)
        self._feed_task: asyncio.Task[None] | None = None

    # --- set-up ---------------------------------------------------------------------------

    async def set_up(self) -> None:
        s, admin = self.s, self.admin
        self.r.step("竞赛办公室 · Competition office sets up the competition")
        await self.p.registration.post(
            "/competitions",
            admin,
            {
                "competition_id": s.competition_id,
                "name": s.competition_name,
                "year": s.year,
                "level": s.level,
                "registration_opens_at": s.opens_at.isoformat(),
                "registration_closes_at": s.closes_at.isoformat(),
            },
        )
        for event in s.events:
            await self.p.registration.post(f"/competitions/{s.competition_id}/events", admin, event)
        for union_id, name in s.unions.items():
            await self.p.registration.post("/unions", admin, {"union_id": union_id, "name": name})
            workers = [w for w in s.workers.values() if w.union_id == union_id]
            await self.p.registration.post(
                f"/unions/{union_id}/workers",
                admin,
                {
                    "workers": [
                        {
                            "worker_id": w.worker_id,
                            "name": w.name,
                            "employer": w.employer,
                            "job": w.job,
                            "front_line": w.front_line,
                            "national_id": w.national_id,
                        }
                        for w in workers
                    ]
                },
            )
        for event_id, panel in s.judges.items():
            await self.p.scoring.put(
                f"/events/{event_id}/panel",
                admin,
                {
                    "chief_judge_id": s.chief_judges[event_id],
                    "judges": [{"judge_id": j.judge_id, "union_id": j.union_id} for j in panel],
                },
            )
        await self.webhook.start()
        subs = subscriptions_for(s, self.webhook.url)
        s.subscriptions = subs
        for sub in subs:
            body = {k: v for k, v in sub.items() if k != "leader_id"}
            await self.p.notifications.put(f"/subscriptions/{sub['leader_id']}", admin, body)
        self.r.info(
            f"{len(s.unions)} unions, {len(s.workers)} workers, {len(s.events)} events, "
            f"{sum(len(p) for p in s.judges.values())} judges, {len(subs)} leaders subscribed"
        )

    # --- registration ---------------------------------------------------------------------

    async def register(self) -> None:
        self.r.step("二级工会 · Unions register their entries")
        advance = self.r.progress("registering entries", len(self.s.entries))

        async def one(entry_index: int) -> None:
            entry = self.s.entries[entry_index]
            body: dict[str, Any] = {
                "entry_id": entry.entry_id,
                "event_id": entry.event_id,
                "union_id": entry.union_id,
                "worker_ids": list(entry.worker_ids),
            }
            if entry.team_name:
                body["team_name"] = entry.team_name
            await self.p.registration.post("/entries", self.tokens.officer(entry.union_id), body)
            advance(1)

        jobs: list[Callable[[], Awaitable[Any]]] = [
            functools.partial(one, i) for i in range(len(self.s.entries))
        ]
        await gather_limited(jobs, limit=8)
        self.result.entries = len(self.s.entries)
        self.result.entrants = self.s.entrant_count
        await self._wait_for_roster()

    async def _wait_for_roster(self, timeout: float = 60.0) -> None:
        """Scoring learns the roster from Kafka; wait until every entry is known there."""
        deadline = time.monotonic() + timeout
        expected = {e.event_id: 0 for e in self.s.entries}
        for e in self.s.entries:
            expected[e.event_id] += 1
        while time.monotonic() < deadline:
            counts = {}
            for event_id in expected:
                standings = await self.p.scoring.get(f"/events/{event_id}/standings", self.admin)
                counts[event_id] = len(standings.get("lines", []))
            if counts == expected:
                return
            await asyncio.sleep(0.3)
        raise TimeoutError(f"scoring roster incomplete after {timeout}s: {counts} vs {expected}")

    # --- scoring --------------------------------------------------------------------------

    async def import_theory(self) -> None:
        self.r.step("考试系统 · Theory scores imported from the exam system (CSV)")
        for event in self.s.events:
            event_id = str(event["event_id"])
            lines = ["entry_id,member_id,score"]
            lines += [
                f"{entry.entry_id},,{entry.theory}"
                for entry in self.s.entries
                if entry.event_id == event_id
            ]
            await self.p.scoring.call(
                "POST",
                f"/events/{event_id}/theory-import",
                self.tokens.chief_judge(self.s.chief_judges[event_id], [event_id]),
                content="\n".join(lines) + "\n",
                headers={"Content-Type": "text/csv"},
            )

    def _mark_body(self, mark: PlannedMark) -> dict[str, Any]:
        # Individual entries and teams marked as a unit take no member id (the scenario's teams
        # are marked as a unit).
        return {
            "mark_id": mark.mark_id,
            "entry_id": mark.entry_id,
            "component": "practical",
            "value": str(mark.value),
        }

    async def stream_marks(self) -> None:
        self.r.step("裁判 · Judges stream practical marks from their tablets (WebSocket)")
        by_judge: dict[tuple[str, str], list[PlannedMark]] = {}
        for mark in self.s.marks:
            by_judge.setdefault((mark.event_id, mark.judge_id), []).append(mark)
        advance = self.r.progress("marks", len(self.s.marks))
        accepted = 0

        async def judge_session(event_id: str, judge_id: str, marks: list[PlannedMark]) -> int:
            token = self.tokens.judge(judge_id, [event_id])
            url = self.p.ws_url(f"/events/{event_id}/marks/stream?token={token}")
            ok = 0
            async with websockets.connect(url, open_timeout=20) as ws:
                for chunk_start in range(0, len(marks), 10):
                    chunk = marks[chunk_start : chunk_start + 10]
                    await ws.send(json.dumps([self._mark_body(m) for m in chunk]))
                    for _ in chunk:
                        reply = json.loads(await ws.recv())
                        replies = reply if isinstance(reply, list) else [reply]
                        for item in replies:
                            if "error" in item:
                                raise RuntimeError(f"mark rejected: {item}")
                            ok += 1
                        advance(len(replies))
                        if len(replies) == len(chunk):
                            break
            return ok

        counts = await asyncio.gather(
            *(judge_session(ev, j, ms) for (ev, j), ms in by_judge.items())
        )
        accepted = sum(counts)
        self.result.marks = accepted

    async def attempt_conflict_of_interest(self) -> None:
        mark = self.s.conflict_attempt
        self.r.step("回避 · A judge tries to mark an entry from their own union")
        try:
            await self.p.scoring.post(
                f"/events/{mark.event_id}/marks",
                self.tokens.judge(mark.judge_id, [mark.event_id]),
                self._mark_body(mark),
            )
        except ApiError as exc:
            self.result.conflict_rejected = exc.status_code in (403, 409, 422)
            self.result.conflict_error = f"HTTP {exc.status_code} {exc.rule}: " + str(
                exc.body.get("error", {}).get("reason") if isinstance(exc.body, dict) else exc.body
            )
            self.r.info(f"rejected as it must be — {self.result.conflict_error}")
            return
        self.r.info("!! the conflicting mark was accepted")

    async def standings(self) -> None:
        for event in self.s.events:
            event_id = str(event["event_id"])
            self.result.standings[event_id] = await self.p.scoring.get(
                f"/events/{event_id}/standings", self.admin
            )

    # --- finalisation and awards ----------------------------------------------------------

    async def _follow_feed(self) -> None:
        federation = f"{self.s.competition_id}-federation-chair"
        with contextlib.suppress(asyncio.CancelledError):
            async for name, item in self.p.notifications.sse("/feed"):
                if name != "award" or not isinstance(item, dict):
                    continue
                if item.get("competition_id") not in (None, self.s.competition_id):
                    continue
                item["_seen_at"] = time.monotonic()
                self.result.feed.append(item)
                if item.get("leader_id") == federation:
                    event_id = item.get("event_id")
                    started = self.result.finalised_at.get(str(event_id))
                    if started is not None and item.get("kind", "granted") == "granted":
                        self.result.latencies_ms.append((item["_seen_at"] - started) * 1000)
                    self.r.feed_item(item)

    async def start_feed(self) -> None:
        self._feed_task = asyncio.create_task(self._follow_feed())
        await asyncio.sleep(0.5)

    async def finalise(self) -> None:
        self.r.step("总裁判长 · The chief judges finalise; awards follow at once (即时授予)")
        for event in self.s.events:
            event_id = str(event["event_id"])
            token = self.tokens.chief_judge(self.s.chief_judges[event_id], [event_id])
            self.result.finalised_at[event_id] = time.monotonic()
            answer = await self.p.scoring.post(f"/events/{event_id}/finalise", token, {})
            self.r.info(f"{event['name']} finalised, result version {answer.get('version')}")

    async def wait_for_awards_and_deliveries(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        stable_since = time.monotonic()
        last_signature: tuple[int, int] = (-1, -1)
        while time.monotonic() < deadline:
            awards = await self.p.awards.get(
                "/awards", self.admin, params={"competition_id": self.s.competition_id}
            )
            self.result.awards = awards if isinstance(awards, list) else awards.get("awards", [])
            granted = [a for a in self.result.awards if a.get("status", "granted") == "granted"]
            self.result.expected_deliveries = expected_delivery_count(self.s.subscriptions, granted)
            deliveries = await self.p.notifications.get(
                "/deliveries", self.admin, params={"competition_id": self.s.competition_id}
            )
            self.result.deliveries = (
                deliveries if isinstance(deliveries, list) else deliveries.get("deliveries", [])
            )
            delivered = sum(1 for d in self.result.deliveries if d.get("status") == "delivered")
            signature = (len(granted), delivered)
            if signature != last_signature:
                last_signature, stable_since = signature, time.monotonic()
            settled = granted and delivered >= self.result.expected_deliveries
            if settled and time.monotonic() - stable_since > 1.5:
                break
            await asyncio.sleep(0.3)
        self.result.webhooks = list(self.webhook.received)

    async def close(self) -> None:
        if self._feed_task:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feed_task
        await self.webhook.stop()

    async def play(self) -> PlayResult:
        try:
            await self.set_up()
            await self.register()
            await self.import_theory()
            await self.stream_marks()
            await self.attempt_conflict_of_interest()
            await self.standings()
            await self.start_feed()
            await self.finalise()
            await self.wait_for_awards_and_deliveries()
        finally:
            await self.close()
        return self.result
