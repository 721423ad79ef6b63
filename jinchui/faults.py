"""`jinchui faults`: crash, restart and poison the platform while a contest runs, then prove
that no mark was lost and no award or notification happened twice.

The contest is the demo's scripted one (jinchui.scenario), played over the HTTP and WebSocket
APIs by clients that behave as real ones must: judges' tablets reconnect after a dropped
connection and resend every mark not yet acknowledged (a resent mark id is a no-op), HTTP
clients retry with the same Idempotency-Key. Faults come at fixed points of progress, so a
run is repeatable: kill -9 and SIGTERM of each service at its busiest moment, a Kafka broker
restart, a mongod restart (readiness must say 503 meanwhile), verbatim redelivery of consumed
events, and poison messages on every consumed topic. The verdict reads the databases and the
topics directly (a test tool may).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import websockets
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from rich.console import Console
from rich.table import Table

from jinchui import infra as infra_mod
from jinchui.client import ApiError, Platform, Tokens
from jinchui.dlq import read_dead_letters, read_topic
from jinchui.play import Player, expected_delivery_count
from jinchui.scenario import PlannedMark, Scenario, build_scenario
from jinchui.stack import Stack
from shared import topics
from shared.events import utc_now
from shared.mongo import Doc
from shared.settings import Settings

app = typer.Typer(help="Fault injection: crashes, restarts, redelivery and poison messages.")

POISON_BYTES = 1_010_000  # above the consumers' 1,000,000-byte limit, below the broker's
RETRY_DEADLINE_S = 120.0
# A kill -9 in the middle of a MongoDB transaction leaves it open, holding its document locks,
# until mongod aborts it after transactionLifetimeLimitSeconds (default 60): writers touching
# the same documents (a union's quota counter, the outbox counter) stall that long. The suite
# shortens it on the mongod it runs so that a run takes minutes; production should too.
TRANSACTION_LIFETIME_S = 10


# --- results ----------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0
    skipped: bool = False


@dataclass
class FaultReport:
    scenarios: list[ScenarioResult] = field(default_factory=list)
    accepted_marks: int = 0
    lost_marks: int = 0
    duplicate_marks: int = 0
    duplicate_awards: int = 0
    duplicate_notifications: int = 0
    webhook_raw_repeats: int = 0
    poison_sent: int = 0
    poison_in_dlq: int = 0
    awards: int = 0
    deliveries: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["scenarios"] = [
            {
                "name": s.name,
                "passed": s.passed,
                "detail": s.detail,
                "seconds": round(s.seconds, 2),
                **({"skipped": True} if s.skipped else {}),
            }
            for s in self.scenarios
        ]
        data["seconds"] = round(self.seconds, 1)
        return data


@dataclass(frozen=True)
class FaultOptions:
    short: bool = False
    external: bool = False
    state_dir: Path | None = None
    log_dir: Path | None = None


class Recorder:
    """Collects scenario outcomes and times them."""

    def __init__(self, report: FaultReport, console: Console) -> None:
        self.report = report
        self.console = console

    def add(self, name: str, passed: bool, detail: str, seconds: float = 0.0) -> None:
        self.report.scenarios.append(ScenarioResult(name, passed, detail, seconds))
        mark = "[green]✓" if passed else "[red]✗"
        self.console.print(f"{mark} {name}[/] ({seconds:.1f}s): {detail}")

    def skip(self, name: str, reason: str) -> None:
        self.report.scenarios.append(ScenarioResult(name, True, reason, 0.0, skipped=True))
        self.console.print(f"[yellow]- {name}: skipped: {reason}")

    @contextlib.asynccontextmanager
    async def timed(self, name: str) -> Any:
        """`async with rec.timed(name) as out:` set out["passed"], out["detail"]."""
        started = time.monotonic()
        out: dict[str, Any] = {"passed": False, "detail": ""}
        try:
            yield out
        except Exception as exc:
            out["passed"], out["detail"] = False, f"{type(exc).__name__}: {exc}"
        self.add(name, bool(out["passed"]), str(out["detail"]), time.monotonic() - started)


# --- resilient clients ------------------------------------------------------------------------


async def retrying(
    what: str, call: Callable[[], Awaitable[Any]], deadline_s: float = RETRY_DEADLINE_S
) -> Any:
    """Retry a call through connection errors and 5xx (a service or its store restarting)."""
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            return await call()
        except (httpx.TransportError, ApiError) as exc:
            transient = not isinstance(exc, ApiError) or exc.status_code >= 500
            if not transient or time.monotonic() > deadline:
                raise RuntimeError(f"{what} failed: {exc}") from exc
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)


class MarkGate:
    """How far each judge may go: the fault controller opens it stage by stage."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self._changed = asyncio.Condition()

    async def open_to(self, fraction: float) -> None:
        async with self._changed:
            self.fraction = fraction
            self._changed.notify_all()

    async def wait_allowed(self, index: int, total: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: index < math.ceil(self.fraction * total))


@dataclass
class MarkLedger:
    accepted: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)
    reconnects: int = 0
    resent: int = 0
    per_judge_done: Counter[tuple[str, str]] = field(default_factory=Counter)


def mark_body(mark: PlannedMark) -> dict[str, Any]:
    return {
        "mark_id": mark.mark_id,
        "entry_id": mark.entry_id,
        "component": "practical",
        "value": str(mark.value),
    }


class FaultPlayer(Player):
    """The demo's player with clients that survive crashes, plus gated mark streaming."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = MarkLedger()
        self.gate = MarkGate()
        self.registered = 0

    async def register_resilient(self) -> None:
        """Each entry with its own fixed Idempotency-Key, retried until the service answers."""

        async def one(index: int) -> None:
            entry = self.s.entries[index]
            body: dict[str, Any] = {
                "entry_id": entry.entry_id,
                "event_id": entry.event_id,
                "union_id": entry.union_id,
                "worker_ids": list(entry.worker_ids),
            }
            if entry.team_name:
                body["team_name"] = entry.team_name
            key = f"faults-entry-{entry.entry_id}"
            token = self.tokens.officer(entry.union_id)
            await retrying(
                f"register {entry.entry_id}",
                lambda: self.p.registration.post(
                    "/entries", token, body, headers={"Idempotency-Key": key}
                ),
            )
            self.registered += 1

        semaphore = asyncio.Semaphore(4)

        async def limited(index: int) -> None:
            async with semaphore:
                await one(index)

        await asyncio.gather(*(limited(i) for i in range(len(self.s.entries))))
        self.result.entries = len(self.s.entries)
        await retrying("roster", lambda: self._wait_for_roster(timeout=90.0), 120.0)

    async def import_theory_resilient(self) -> None:
        for event in self.s.events:
            event_id = str(event["event_id"])
            lines = ["entry_id,member_id,score"] + [
                f"{e.entry_id},,{e.theory}" for e in self.s.entries if e.event_id == event_id
            ]
            token = self.tokens.chief_judge(self.s.chief_judges[event_id], [event_id])
            await retrying(
                f"theory {event_id}",
                functools.partial(
                    self.p.scoring.call,
                    "POST",
                    f"/events/{event_id}/theory-import",
                    token,
                    content="\n".join(lines) + "\n",
                    headers={
                        "Content-Type": "text/csv",
                        "Idempotency-Key": f"faults-theory-{event_id}",
                    },
                ),
            )

    def judges(self) -> dict[tuple[str, str], list[PlannedMark]]:
        by_judge: dict[tuple[str, str], list[PlannedMark]] = {}
        for mark in self.s.marks:
            by_judge.setdefault((mark.event_id, mark.judge_id), []).append(mark)
        return by_judge

    async def judge_tablet(self, event_id: str, judge_id: str, marks: list[PlannedMark]) -> None:
        """Send marks as the gate allows; on a dropped connection reconnect and resend."""
        token = self.tokens.judge(judge_id, [event_id])
        url = self.p.ws_url(f"/events/{event_id}/marks/stream?token={token}")
        by_id = {m.mark_id: m for m in marks}
        unacked: list[str] = []  # sent (or to resend) and not yet answered
        next_index = 0
        transient_errors: Counter[str] = Counter()
        deadline = time.monotonic() + 600
        while next_index < len(marks) or unacked:
            if time.monotonic() > deadline:
                raise TimeoutError(f"judge {judge_id} could not finish")
            try:
                async with websockets.connect(url, open_timeout=10, close_timeout=2) as ws:
                    if unacked:
                        self.ledger.resent += len(unacked)
                        await ws.send(json.dumps([mark_body(by_id[m]) for m in unacked]))
                        await self._read_replies(ws, unacked, transient_errors)
                    while next_index < len(marks) or unacked:
                        if unacked:  # errors answered as transient: send them again
                            await asyncio.sleep(0.5)
                            await ws.send(json.dumps([mark_body(by_id[m]) for m in unacked]))
                            await self._read_replies(ws, unacked, transient_errors)
                            continue
                        await self.gate.wait_allowed(next_index, len(marks))
                        chunk = marks[next_index : next_index + 4]
                        allowed = math.ceil(self.gate.fraction * len(marks))
                        chunk = chunk[: max(1, allowed - next_index)]
                        next_index += len(chunk)
                        unacked.extend(m.mark_id for m in chunk)
                        await ws.send(json.dumps([mark_body(m) for m in chunk]))
                        await self._read_replies(ws, unacked, transient_errors)
                        await asyncio.sleep(0.05)  # a judge's pace, so faults land mid-stream
            except (OSError, websockets.WebSocketException, TimeoutError):
                self.ledger.reconnects += 1
                await asyncio.sleep(1.0)  # the service is restarting: a tablet's retry pace

    async def _read_replies(
        self, ws: Any, unacked: list[str], transient_errors: Counter[str]
    ) -> None:
        """Read until every mark of the last send is answered (one reply per message sent)."""
        raw = await asyncio.wait_for(ws.recv(), timeout=30)
        reply = json.loads(raw)
        items = reply if isinstance(reply, list) else [reply]
        for item in items:
            mark_id = item.get("mark_id")
            if mark_id not in unacked:
                continue
            if "error" in item:
                transient_errors[mark_id] += 1
                if transient_errors[mark_id] >= 20:
                    self.ledger.rejected[mark_id] = json.dumps(item["error"], ensure_ascii=False)
                    unacked.remove(mark_id)
                continue
            unacked.remove(mark_id)
            self.ledger.accepted.add(mark_id)

    async def stream_marks_gated(self) -> None:
        await asyncio.gather(
            *(self.judge_tablet(ev, j, ms) for (ev, j), ms in self.judges().items())
        )
        self.result.marks = len(self.ledger.accepted)

    async def wait_acked(self, fraction: float, timeout: float = 120.0) -> None:
        goal = sum(math.ceil(fraction * len(ms)) for ms in self.judges().values())
        deadline = time.monotonic() + timeout
        while len(self.ledger.accepted) + len(self.ledger.rejected) < goal:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.ledger.accepted)} of {goal} marks acknowledged")
            await asyncio.sleep(0.1)

    async def finalise_one(self, event_id: str) -> None:
        token = self.tokens.chief_judge(self.s.chief_judges[event_id], [event_id])
        self.result.finalised_at[event_id] = time.monotonic()
        await retrying(
            f"finalise {event_id}",
            lambda: self.p.scoring.post(
                f"/events/{event_id}/finalise",
                token,
                {},
                headers={"Idempotency-Key": f"faults-finalise-{event_id}"},
            ),
        )

    def webhooks_for(self, event_id: str) -> int:
        return sum(
            1
            for w in self.webhook.received
            if (w["body"].get("event") or {}).get("event_id") == event_id
            or event_id in json.dumps(w["body"], ensure_ascii=False)
        )


# --- infrastructure helpers -------------------------------------------------------------------


@contextlib.contextmanager
def own_infra_environment() -> Iterator[None]:
    """start_infra uses servers named in the environment; the fault suite needs its own."""
    saved = {
        k: os.environ.pop(k) for k in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URL") if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


async def readiness(url: str, timeout: float = 15.0) -> int:
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            return (await client.get(f"{url}/readyz")).status_code
        except httpx.HTTPError:
            return 0


async def wait_status(url: str, wanted: int, timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await readiness(url) == wanted:
            return True, time.monotonic() - started
        await asyncio.sleep(0.25)
    return False, time.monotonic() - started


async def group_lags(bootstrap: str, prefix: str) -> dict[str, int]:
    """Messages not yet committed per consumer group of this stack (0 = caught up)."""
    from aiokafka import AIOKafkaConsumer

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        groups = sorted(
            str(g[0]) for g in await admin.list_consumer_groups() if str(g[0]).startswith(prefix)
        )
        lags: dict[str, int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            tps = list(committed)
            if not tps:
                lags[group] = 0
                continue
            ends = await consumer.end_offsets(tps)
            lags[group] = sum(max(0, ends[tp] - max(committed[tp].offset, 0)) for tp in tps)
        return lags
    finally:
        await consumer.stop()
        await admin.close()


async def group_topics(bootstrap: str, prefix: str) -> dict[str, set[str]]:
    """Topic → the consumer groups of this stack reading it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        found: dict[str, set[str]] = {}
        for g in await admin.list_consumer_groups():
            group = str(g[0])
            if group.startswith(prefix):
                for tp in await admin.list_consumer_group_offsets(group):
                    found.setdefault(tp.topic, set()).add(group)
        return found
    finally:
        await admin.close()


async def wait_caught_up(bootstrap: str, prefix: str, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    lags: dict[str, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            lags = await group_lags(bootstrap, prefix)
            if lags and not any(lags.values()):
                return lags
        await asyncio.sleep(0.5)
    return lags


# --- the run ----------------------------------------------------------------------------------


class FaultRun:
    def __init__(self, options: FaultOptions, console: Console) -> None:
        self.o = options
        self.console = console
        self.report = FaultReport()
        self.rec = Recorder(self.report, console)
        self.tag = "flt" + uuid.uuid4().hex[:6]
        self.state_dir: Path | None = None
        self.handle: infra_mod.InfraHandle | None = None
        self.settings = Settings()
        self.stack: Stack | None = None
        self.player: FaultPlayer | None = None
        self.platform: Platform | None = None

    def topic(self, name: str) -> str:
        """This run's name of a topic: the stack namespaces its topics with its own prefix."""
        return f"{self.tag}." + name.removeprefix(topics.PREFIX)

    async def tune_mongo(self) -> None:
        if not self.can_restart_infra:
            return
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.settings.mongodb_url)
        try:
            await client.admin.command(
                {"setParameter": 1, "transactionLifetimeLimitSeconds": TRANSACTION_LIFETIME_S}
            )
        finally:
            await client.close()

    @property
    def can_restart_infra(self) -> bool:
        return self.handle is not None and {"kafka", "mongo"} <= set(self.handle.managed)

    # infra and stack --------------------------------------------------------------------------

    def start_infra(self) -> None:
        if self.o.external:
            return
        self.state_dir = self.o.state_dir or Path(tempfile.mkdtemp(prefix="jinchui-faults-"))
        with own_infra_environment():
            self.handle = infra_mod.start_infra(self.state_dir, console=self.console)
        self.settings = self.settings.model_copy(
            update={
                "kafka_bootstrap_servers": self.handle.kafka_bootstrap,
                "mongodb_url": self.handle.mongodb_url,
                "kafka_idempotence": self.handle.kafka_idempotence,
            }
        )

    def start_stack(self) -> None:
        if self.o.external:
            from shared.kafka_admin import ensure_topics

            infra_mod.run_coro(
                lambda: ensure_topics(
                    self.settings.kafka_bootstrap_servers,
                    [self.topic(t) for t in topics.ALL_TOPICS],
                )
            )
        self.settings = self.settings.model_copy(update={"mongodb_db_prefix": self.tag})
        log_dir = self.o.log_dir or Path(tempfile.mkdtemp(prefix="jinchui-faults-logs-"))
        self.stack = Stack.create(
            kafka_bootstrap=self.settings.kafka_bootstrap_servers,
            mongodb_url=self.settings.mongodb_url,
            kafka_idempotence=self.settings.kafka_idempotence,
            db_prefix=self.tag,
            topic_prefix=f"{self.tag}.",
            log_dir=log_dir,
        )
        self.stack.start()
        self.console.print(f"services up, logs in {log_dir}")

    def stop_all(self) -> None:
        if self.stack:
            self.stack.stop()
        if self.handle and self.handle.managed:
            self.handle.stop()

    # faults ----------------------------------------------------------------------------------

    async def restart_service(self, name: str, *, hard: bool, when: str) -> None:
        assert self.stack is not None
        kind = "kill -9" if hard else "SIGTERM"
        scenario = f"{kind} {name} {when}"
        started = time.monotonic()
        service = self.stack.services[name]
        try:
            if hard:
                await asyncio.to_thread(service.kill)
                detail = "killed"
            else:
                assert service.process is not None
                stops_before = self.stopped_lines(service.log_path)
                await asyncio.to_thread(service.stop, 20.0)
                code = service.process.returncode
                # uvicorn re-raises the signal after its graceful shutdown: -15 is clean too;
                # -9 means the stop timed out and the process had to be killed.
                stopped_cleanly = code in (0, -15) and (
                    self.stopped_lines(service.log_path) > stops_before
                )
                detail = f"exit code {code}, " + (
                    "lifespan stopped relay and consumers ('service stopped' logged)"
                    if stopped_cleanly
                    else "NOT a clean stop"
                )
                if not stopped_cleanly:
                    await asyncio.to_thread(service.start)
                    await asyncio.to_thread(service.wait_ready, 90.0)
                    self.rec.add(scenario, False, detail, time.monotonic() - started)
                    return
            down_for = time.monotonic()
            await asyncio.to_thread(service.start)
            await asyncio.to_thread(service.wait_ready, 90.0)
            detail += f", ready again after {time.monotonic() - down_for:.1f}s"
            self.rec.add(scenario, True, detail, time.monotonic() - started)
        except Exception as exc:
            self.rec.add(
                scenario, False, f"{type(exc).__name__}: {exc}", time.monotonic() - started
            )

    @staticmethod
    def stopped_lines(path: Path) -> int:
        try:
            return path.read_text(errors="replace").count('"event": "service stopped"')
        except OSError:
            return 0

    async def restart_kafka(self, when: str) -> None:
        name = f"restart Kafka broker {when}"
        if not self.can_restart_infra:
            self.rec.skip(name, "external infrastructure (--external): cannot restart it")
            return
        assert self.state_dir is not None and self.stack is not None
        async with self.rec.timed(name) as out:
            await asyncio.to_thread(infra_mod.restart_kafka, self.state_dir)
            back = await asyncio.gather(
                *(wait_status(s.url, 200, 90) for s in self.stack.services.values())
            )
            out["passed"] = all(ok for ok, _ in back)
            out["detail"] = "broker back on the same port; services ready after " + ", ".join(
                f"{n} {t:.1f}s" for n, (_, t) in zip(self.stack.services, back, strict=True)
            )

    async def restart_mongo(self, when: str) -> None:
        name = f"restart mongod {when}"
        ready_name = "GET /readyz is 503 while mongod is down, 200 after"
        if not self.can_restart_infra:
            self.rec.skip(name, "external infrastructure (--external): cannot restart it")
            self.rec.skip(ready_name, "external infrastructure (--external): cannot stop mongod")
            return
        assert self.state_dir is not None and self.stack is not None
        urls = {n: s.url for n, s in self.stack.services.items()}
        started = time.monotonic()
        async with self.rec.timed(name) as out:
            await asyncio.to_thread(infra_mod.stop_mongo, self.state_dir)
            down = await asyncio.gather(*(wait_status(u, 503, 30) for u in urls.values()))
            await asyncio.to_thread(infra_mod.start_mongo, self.state_dir, None, same_ports=True)
            await self.tune_mongo()
            up = await asyncio.gather(*(wait_status(u, 200, 90) for u in urls.values()))
            out["passed"] = all(ok for ok, _ in up)
            out["detail"] = "same port and data; services ready after " + ", ".join(
                f"{n} {t:.1f}s" for n, (_, t) in zip(urls, up, strict=True)
            )
        self.rec.add(
            ready_name,
            all(ok for ok, _ in down) and all(ok for ok, _ in up),
            "503 while down: "
            + ", ".join(
                f"{n}={'yes' if ok else 'NO'}" for n, (ok, _) in zip(urls, down, strict=True)
            )
            + "; 200 after: "
            + ", ".join(
                f"{n}={'yes' if ok else 'NO'}" for n, (ok, _) in zip(urls, up, strict=True)
            ),
            time.monotonic() - started,
        )

    # phases ----------------------------------------------------------------------------------

    async def registration_phase(self, player: FaultPlayer) -> None:
        task = asyncio.create_task(player.register_resilient())
        total = len(player.s.entries)
        while player.registered < total // 3 and not task.done():  # noqa: ASYNC110 - polls progress
            await asyncio.sleep(0.05)
        await self.restart_service("registration", hard=True, when="during registration")
        await task
        await self.restart_service("registration", hard=False, when="after registration")

    def mark_stages(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        kill = lambda: self.restart_service("scoring", hard=True, when="during mark streaming")  # noqa: E731
        term = lambda: self.restart_service("scoring", hard=False, when="during mark streaming")  # noqa: E731
        kafka = lambda: self.restart_kafka("during mark streaming")  # noqa: E731
        mongo = lambda: self.restart_mongo("during mark streaming")  # noqa: E731
        if self.o.short:
            return [(0.2, kill), (0.4, kafka), (0.6, mongo), (0.8, term)]
        return [(0.1, kill), (0.25, kafka), (0.4, kill), (0.55, mongo), (0.7, term), (0.85, kill)]

    async def marks_phase(self, player: FaultPlayer) -> None:
        stream = asyncio.create_task(player.stream_marks_gated())
        try:
            for fraction, fault in self.mark_stages():
                await player.gate.open_to(fraction)
                await player.wait_acked(fraction)
                await player.gate.open_to(min(1.0, fraction + 0.15))
                await fault()
            await player.gate.open_to(1.0)
            await asyncio.wait_for(stream, timeout=300)
        finally:
            if not stream.done():
                stream.cancel()

    async def finalisation_phase(self, player: FaultPlayer) -> None:
        events = [str(e["event_id"]) for e in player.s.events]
        first, second = events[0], events[1]
        await player.finalise_one(first)
        await self.restart_service("awards", hard=True, when="right after finalisation")
        await self.wait_webhook(player, first)
        await self.restart_service("notifications", hard=True, when="during deliveries")
        await player.finalise_one(second)
        await self.restart_service("awards", hard=False, when="right after finalisation")
        await self.wait_webhook(player, second)
        await self.restart_service("notifications", hard=False, when="during deliveries")

    async def wait_webhook(self, player: FaultPlayer, event_id: str, timeout: float = 60) -> None:
        before = len(player.webhook.received)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if player.webhooks_for(event_id) or len(player.webhook.received) > before:
                return
            await asyncio.sleep(0.01)

    # redelivery ------------------------------------------------------------------------------

    async def snapshot(self, player: FaultPlayer) -> dict[str, int]:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.settings.mongodb_url)
        cid = player.s.competition_id
        try:
            awards = client[self.settings.database_name("awards")]["awards"]
            deliveries = client[self.settings.database_name("notifications")]["deliveries"]
            marks = client[self.settings.database_name("scoring")]["marks"]
            entries = client[self.settings.database_name("scoring")]["entries"]
            events = [str(e["event_id"]) for e in player.s.events]
            return {
                "awards": await awards.count_documents({"competition.competition_id": cid}),
                "deliveries": await deliveries.count_documents({"competition_id": cid}),
                "marks": await marks.count_documents({"event_id": {"$in": events}}),
                "entries": await entries.count_documents({}),
                "webhooks": len(player.webhook.received),
            }
        finally:
            await client.close()

    async def redelivery_phase(self, player: FaultPlayer) -> None:
        bootstrap = self.settings.kafka_bootstrap_servers
        cid = player.s.competition_id
        await wait_caught_up(bootstrap, f"{self.tag}-")
        await asyncio.sleep(1.0)
        before = await self.snapshot(player)
        wanted = {
            self.topic(topics.SCORING_RESULTS): ("EventFinalized",),
            self.topic(topics.AWARDS_DECISIONS): ("AwardGranted",),
            self.topic(topics.REGISTRATION_ENTRIES): ("EntryRegistered",),
        }
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=self.settings.kafka_idempotence,
        )
        await producer.start()
        counts: Counter[str] = Counter()
        try:
            for topic, types in wanted.items():
                for _p, _o, _ts, key, value, headers in await read_topic(bootstrap, topic):
                    try:
                        doc = json.loads(value)
                    except ValueError:
                        continue
                    payload = doc.get("payload") or {} if isinstance(doc, dict) else {}
                    competition = (payload.get("competition") or {}).get("competition_id")
                    if doc.get("event_type") in types and competition == cid:
                        await producer.send_and_wait(topic, value, key=key, headers=headers)
                        counts[doc["event_type"]] += 1
        finally:
            await producer.stop()
        async with self.rec.timed(
            "redeliver consumed EventFinalized, AwardGranted, EntryRegistered verbatim"
        ) as out:
            lags = await wait_caught_up(bootstrap, f"{self.tag}-")
            await asyncio.sleep(2.0)  # deliveries a duplicate might have caused
            after = await self.snapshot(player)
            changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            out["passed"] = not changed and not any(lags.values()) and len(counts) == 3
            out["detail"] = f"re-published {dict(counts)}; " + (
                f"CHANGED {changed}" if changed else f"nothing changed ({before})"
            )

    # poison ----------------------------------------------------------------------------------

    def poison_messages(self, topic: str) -> list[tuple[str, str, bytes]]:
        """(kind, key, body) for one consumed topic; the key is the marker found in the DLQ."""

        def key(kind: str) -> str:
            return f"poison-{self.tag}-{topic}-{kind}"

        envelope = {
            "event_id": str(uuid.uuid4()),
            "event_type": "EntryTeleported",
            "schema_version": 1,
            "occurred_at": utc_now().isoformat(),
            "producer": "faults",
            "correlation_id": key("unknown-type"),
            "payload": {"entry_id": "x"},
        }
        items = [
            ("bad-json", key("bad-json"), b'{"event_id": "not json at all' + key("b").encode()),
            (
                "wrong-schema",
                key("wrong-schema"),
                json.dumps({"event_id": "nope", "marker": key("wrong-schema")}).encode(),
            ),
            ("unknown-event-type", key("unknown-event-type"), json.dumps(envelope).encode()),
            (
                "over-1MB",
                key("over-1MB"),
                b'{"pad": "' + b"x" * POISON_BYTES + b'"}',
            ),
        ]
        domain = self.domain_rule_poison(topic, key("domain-rule"))
        if domain is not None:
            items.append(("domain-rule", key("domain-rule"), domain))
        return items

    def domain_rule_poison(self, topic: str, marker: str) -> bytes | None:
        """A contract-valid envelope whose content breaks a rule the consumer enforces."""
        if topic != self.topic(topics.REGISTRATION_ENTRIES):
            return None
        now = utc_now()
        envelope = {
            "event_id": str(uuid.uuid4()),
            "event_type": "EventPublished",
            "schema_version": 1,
            "occurred_at": now.isoformat(),
            "producer": "faults",
            "correlation_id": marker,
            "payload": {
                "competition": {
                    "competition_id": f"{marker}-c",
                    "name": "poison",
                    "year": now.year,
                    "level": "district",
                },
                "event": {
                    "event_id": f"{marker}-e",
                    "name": "poison",
                    "trade": "poison",
                    "format": "individual",
                },
                # Weights summing to 0.8: scoring refuses such a scheme (InvalidScheme).
                "scheme": {
                    "components": [
                        {"name": "theory", "weight": "0.3", "pass_mark": "60", "panel": False},
                        {"name": "practical", "weight": "0.5", "pass_mark": "60", "panel": True},
                    ],
                    "divergence_tolerance": "20",
                    "team_marked_as_unit": False,
                },
                "registration_opens_at": now.isoformat(),
                "registration_closes_at": now.isoformat(),
                "starts_at": now.isoformat(),
            },
        }
        return json.dumps(envelope).encode()

    async def poison_phase(self) -> None:
        bootstrap = self.settings.kafka_bootstrap_servers
        consumed = await group_topics(bootstrap, f"{self.tag}-")
        main = sorted(t for t in consumed if t in {self.topic(m) for m in topics.MAIN_TOPICS})
        sent: dict[str, tuple[str, str]] = {}  # key → (topic, kind)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=self.settings.kafka_idempotence,
            max_request_size=2 * 1024 * 1024,
        )
        await producer.start()
        try:
            for topic in main:
                for kind, key, body in self.poison_messages(topic):
                    await producer.send_and_wait(topic, body, key=key.encode())
                    sent[key] = (topic, kind)
        finally:
            await producer.stop()
        self.report.poison_sent = len(sent)
        started = time.monotonic()
        found: dict[str, list[tuple[str, str]]] = {}
        while time.monotonic() - started < 60:
            found = {}
            for topic in main:
                for letter in await read_dead_letters(bootstrap, topic):
                    if letter.original_key in sent and letter.reason:
                        found.setdefault(letter.original_key, []).append(
                            (letter.consumer, letter.reason)
                        )
            if len(found) == len(sent):
                break
            await asyncio.sleep(1.0)
        self.report.poison_in_dlq = len(found)
        for topic in main:
            kinds = [(k, v[1]) for k, v in sent.items() if v[0] == topic]
            missing = [kind for k, kind in kinds if k not in found]
            reasons = "; ".join(
                f"{kind}: {found[k][0][1][:70]} (by {', '.join(sorted({c for c, _ in found[k]}))})"
                for k, kind in kinds
                if k in found
            )
            no_rule = (
                ""
                if any(kind == "domain-rule" for _, kind in kinds)
                else (
                    " [no consumer of this topic enforces a domain rule beyond the contract, so "
                    "no domain-rule poison]"
                )
            )
            self.rec.add(
                f"poison messages on {topic} reach {topics.dlq(topic)}",
                not missing,
                (f"MISSING {missing}; " if missing else "")
                + f"consumers {sorted(consumed[topic])}; {reasons}{no_rule}",
                time.monotonic() - started,
            )
        lags = await wait_caught_up(bootstrap, f"{self.tag}-", 60)
        self.rec.add(
            "no consumer stuck after poison and faults (every group caught up)",
            bool(lags) and not any(lags.values()),
            f"lag per group {lags}",
        )

    # verdict ---------------------------------------------------------------------------------

    async def verdict(self, player: FaultPlayer) -> None:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.settings.mongodb_url)
        try:
            await self.check_marks(player, client)
            await self.check_awards(player, client)
            await self.check_notifications(player, client)
        finally:
            await client.close()

    async def check_marks(self, player: FaultPlayer, client: AsyncMongoClient[Doc]) -> None:
        async with self.rec.timed("every accepted mark stored exactly once") as out:
            events = [str(e["event_id"]) for e in player.s.events]
            docs = (
                await client[self.settings.database_name("scoring")]["marks"]
                .find({"event_id": {"$in": events}}, {"mark_id": 1})
                .to_list()
            )
            stored = Counter(str(d["mark_id"]) for d in docs)
            accepted = player.ledger.accepted
            lost = accepted - set(stored)
            duplicates = sum(n - 1 for n in stored.values() if n > 1)
            self.report.accepted_marks = len(accepted)
            self.report.lost_marks = len(lost)
            self.report.duplicate_marks = duplicates
            planned = len(player.s.marks)
            out["passed"] = not lost and not duplicates and not player.ledger.rejected
            out["detail"] = (
                f"{len(accepted)}/{planned} accepted, {len(stored)} stored (with theory), "
                f"lost {len(lost)}, "
                f"duplicates {duplicates}, rejected {len(player.ledger.rejected)}, "
                f"{player.ledger.reconnects} reconnects, {player.ledger.resent} resent"
                + (f"; lost e.g. {sorted(lost)[:3]}" if lost else "")
                + (
                    f"; rejected e.g. {list(player.ledger.rejected.items())[:2]}"
                    if player.ledger.rejected
                    else ""
                )
            )
        async with self.rec.timed(
            "MarkRecorded on scoring.marks covers every accepted mark"
        ) as out:
            seen: Counter[str] = Counter()
            for *_r, value, _h in await read_topic(
                self.settings.kafka_bootstrap_servers,
                self.topic(topics.SCORING_MARKS),
                timeout_s=30,
            ):
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    doc = json.loads(value)
                    if doc.get("event_type") == "MarkRecorded":
                        seen[str(doc["payload"]["mark_id"])] += 1
            missing = player.ledger.accepted - set(seen)
            repeats = sum(seen[m] - 1 for m in player.ledger.accepted if seen[m] > 1)
            out["passed"] = not missing
            out["detail"] = (
                f"{len(player.ledger.accepted) - len(missing)} covered, {len(missing)} missing; "
                f"{repeats} published more than once (outbox re-publish after a crash: "
                "at-least-once on the wire, absorbed by consumers' processed events)"
            )

    async def check_awards(self, player: FaultPlayer, client: AsyncMongoClient[Doc]) -> None:
        cid = player.s.competition_id
        async with self.rec.timed("every earned award exists exactly once") as out:
            docs = (
                await client[self.settings.database_name("awards")]["awards"]
                .find({"competition.competition_id": cid, "status": "granted"})
                .to_list()
            )
            keys = Counter(
                (
                    str(d.get("award_type")),
                    str((d.get("event") or {}).get("event_id")),
                    str((d.get("recipient") or {}).get("recipient_id")),
                )
                for d in docs
            )
            duplicates = sum(n - 1 for n in keys.values() if n > 1)
            self.report.duplicate_awards = duplicates
            self.report.awards = len(docs)
            # What the final results earn, asked of the awards service itself.
            expected: set[str] = set()
            granted_keys = {str(d.get("award_key")) for d in docs if d.get("event")}
            results = await self.final_results(cid)
            for payload in results.values():
                answer = await retrying(
                    "dry-run",
                    functools.partial(
                        player.p.awards.post, "/policies/dry-run", player.admin, {"result": payload}
                    ),
                )
                expected |= {str(d["award_key"]) for d in answer.get("decisions", [])}
                expected |= {
                    str(w["award_key"])
                    for w in answer.get("withheld", [])
                    if "award_key" in w and w["award_key"] in granted_keys
                }
            missing = expected - granted_keys
            unexpected = granted_keys - expected
            out["passed"] = duplicates == 0 and not missing and not unexpected and bool(docs)
            out["detail"] = (
                f"{len(docs)} granted ({len(granted_keys)} per event + "
                f"{len(docs) - len(granted_keys)} organisation), duplicates {duplicates}; "
                f"dry-run of {len(results)} final result(s) earns {len(expected)}: "
                f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )

    async def final_results(self, cid: str) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for *_r, value, _h in await read_topic(
            self.settings.kafka_bootstrap_servers,
            self.topic(topics.SCORING_RESULTS),
            timeout_s=30,
        ):
            with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
                doc = json.loads(value)
                payload = doc["payload"]
                if (
                    doc.get("event_type") in ("EventFinalized", "EventResultsAmended")
                    and payload["competition"]["competition_id"] == cid
                ):
                    event_id = payload["event"]["event_id"]
                    if payload["version"] >= latest.get(event_id, {}).get("version", 0):
                        latest[event_id] = payload
        return latest

    async def check_notifications(self, player: FaultPlayer, client: AsyncMongoClient[Doc]) -> None:
        cid = player.s.competition_id
        async with self.rec.timed("every notification delivered exactly once") as out:
            awards = await retrying(
                "awards",
                lambda: player.p.awards.get(
                    "/awards", player.admin, params={"competition_id": cid}
                ),
            )
            granted = [a for a in awards if a.get("status", "granted") == "granted"]
            expected = expected_delivery_count(player.s.subscriptions, granted)
            deadline = time.monotonic() + 60
            while True:
                docs = (
                    await client[self.settings.database_name("notifications")]["deliveries"]
                    .find({"competition_id": cid})
                    .to_list()
                )
                delivered = [d for d in docs if d.get("status") == "delivered"]
                if len(delivered) >= expected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            per_target = Counter(
                (
                    str(d.get("award_id")),
                    str(d.get("kind")),
                    str(d.get("leader_id")),
                    str(d.get("channel")),
                )
                for d in docs
            )
            db_duplicates = sum(n - 1 for n in per_target.values() if n > 1)
            webhook_keys = {str(d["_id"]) for d in docs if d.get("channel") == "webhook"}
            received = Counter(str(w["key"]) for w in player.webhook.received)
            ours = {k: n for k, n in received.items() if k in webhook_keys}
            unknown = [k for k in received if k not in webhook_keys]
            never = webhook_keys - set(received)
            raw_repeats = sum(n - 1 for n in ours.values() if n > 1)
            self.report.deliveries = len(docs)
            self.report.duplicate_notifications = db_duplicates + len(unknown)
            self.report.webhook_raw_repeats = raw_repeats
            not_delivered = [d["_id"] for d in docs if d.get("status") != "delivered"]
            out["passed"] = (
                db_duplicates == 0
                and not unknown
                and not never
                and not not_delivered
                and len(docs) == expected
            )
            out["detail"] = (
                f"{len(docs)} delivery records for {len(granted)} awards (expected {expected}), "
                f"{len(delivered)} delivered, {len(not_delivered)} not; duplicates per "
                f"(award, kind, leader, channel) {db_duplicates}; webhook keys: {len(ours)} seen "
                f"of {len(webhook_keys)}, {len(never)} never, {len(unknown)} unknown; "
                f"{raw_repeats} raw repeat(s) of a key (a crash between the POST and recording "
                "it re-sends with the same X-Jinchui-Delivery key; receivers dedupe on it)"
            )

    # the whole run ----------------------------------------------------------------------------

    async def run(self) -> FaultReport:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.start_infra)
            await self.tune_mongo()
            await asyncio.to_thread(self.start_stack)
            assert self.stack is not None
            self.platform = Platform({n: s.url for n, s in self.stack.services.items()})
            size = (4, 1) if self.o.short else (12, 3)
            scenario: Scenario = build_scenario(
                utc_now(),
                tag=self.tag,
                forklift_per_union=max(size[0], 4),
                welding_teams_per_union=size[1],
            )
            player = FaultPlayer(
                self.platform,
                Tokens(self.settings),
                scenario,
                webhook_secret=self.settings.webhook_secret,
            )
            self.player = player
            try:
                await player.set_up()
                await self.registration_phase(player)
                await player.import_theory_resilient()
                await self.marks_phase(player)
                await self.finalisation_phase(player)
                await self.redelivery_phase(player)
                await self.poison_phase()
                await self.verdict(player)
            finally:
                await player.close()
                await self.platform.close()
        except Exception as exc:
            self.rec.add("fault run completed", False, f"{type(exc).__name__}: {exc}")
        finally:
            await asyncio.to_thread(self.stop_all)
        self.report.seconds = time.monotonic() - started
        return self.report


async def run_faults(
    *,
    short: bool = False,
    external: bool = False,
    state_dir: Path | None = None,
    log_dir: Path | None = None,
    console: Console | None = None,
) -> FaultReport:
    """Run the fault suite; the caller asserts on the report (see tests/reliability)."""
    options = FaultOptions(short=short, external=external, state_dir=state_dir, log_dir=log_dir)
    return await FaultRun(options, console or Console(stderr=True)).run()


def report_table(report: FaultReport) -> Table:
    table = Table(title="jinchui faults", title_style="bold")
    table.add_column("scenario", overflow="fold", max_width=48)
    table.add_column("result")
    table.add_column("s", justify="right")
    table.add_column("detail", overflow="fold")
    for s in report.scenarios:
        result = (
            "[yellow]skipped" if s.skipped else ("[green]passed" if s.passed else "[red]FAILED")
        )
        table.add_row(s.name, result, f"{s.seconds:.1f}", s.detail)
    return table


@app.callback(invoke_without_command=True)
def faults(
    as_json: Annotated[bool, typer.Option("--json", help="end with one JSON line")] = False,
    short: Annotated[bool, typer.Option("--short", help="the quick form (~2-3 min)")] = False,
    external: Annotated[
        bool, typer.Option(help="use KAFKA_BOOTSTRAP_SERVERS/MONGODB_URL (no infra restarts)")
    ] = False,
) -> None:
    """Crash, restart and poison the platform during a contest; check exactly-once effects."""
    console = Console(stderr=True)
    report = asyncio.run(run_faults(short=short, external=external, console=console))
    Console(stderr=as_json).print(report_table(report))
    summary = (
        f"accepted marks {report.accepted_marks}, lost {report.lost_marks}, duplicate awards "
        f"{report.duplicate_awards}, duplicate notifications {report.duplicate_notifications}, "
        f"poison {report.poison_in_dlq}/{report.poison_sent} in DLQ, {report.seconds:.0f}s"
    )
    Console(stderr=as_json).print(summary)
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    if not report.passed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
