"""`jinchui bench`: load the running stack and measure it beside floors taken in the same run.

Machines here are noisy, so every figure is reported with a floor measured minutes apart on
the same machine: raw `insert_many` of the same documents, raw aiokafka produce→consume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import websockets
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient
from rich.console import Console
from rich.table import Table

from jinchui.client import Platform, Tokens
from jinchui.infra import start_infra
from jinchui.stack import Stack
from shared.events import utc_now
from shared.settings import Settings

app = typer.Typer(help="Measure the platform beside raw floors on this machine.")


# --- floors ---------------------------------------------------------------------------------


def mark_document(i: int, event_id: str) -> dict[str, Any]:
    return {
        "_id": f"{event_id}:m{i}",
        "mark_id": f"m{i}",
        "event_id": event_id,
        "entry_id": f"{event_id}-e{i % 500}",
        "member_id": None,
        "judge_id": f"j{i % 10}",
        "component": "practical",
        "value": str(60 + i % 40),
        "supersedes": None,
        "reason": "",
        "recorded_at": utc_now(),
    }


async def floor_insert_many(mongodb_url: str, n: int, batch: int = 1000) -> float:
    """Raw insert_many of mark-shaped documents (default write concern), docs/s."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    db = client[f"bench_floor_{uuid.uuid4().hex[:6]}"]
    docs = [mark_document(i, "floor") for i in range(n)]
    try:
        started = time.perf_counter()
        for offset in range(0, n, batch):
            await db.marks.insert_many(docs[offset : offset + batch], ordered=False)
        elapsed = time.perf_counter() - started
    finally:
        await client.drop_database(db.name)
        await client.close()
    return n / elapsed


async def floor_kafka(bootstrap: str, n: int, idempotence: bool) -> float:
    """Raw aiokafka: produce n ~300-byte messages (acks=all) and consume them all, msgs/s."""
    topic = f"bench-floor-{uuid.uuid4().hex[:6]}"
    payload = orjson.dumps(mark_document(0, "floor"), default=str)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotence, linger_ms=5
    )
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await producer.start()
    await consumer.start()
    try:
        # Create the topic before timing, so metadata waits are not counted.
        await producer.send_and_wait(topic, b"warm-up", key=b"k")
        started = time.perf_counter()
        futures = [await producer.send(topic, payload, key=b"%d" % (i % 12)) for i in range(n)]
        await asyncio.gather(*futures)
        received = 0
        while received < n + 1:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            received += sum(len(records) for records in batch.values())
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
    return n / elapsed


# --- platform load --------------------------------------------------------------------------


class Contest:
    """A large contest set up through the APIs: many unions, events and judges."""

    def __init__(self, platform: Platform, tokens: Tokens, tag: str) -> None:
        self.p = platform
        self.tokens = tokens
        self.admin = tokens.admin()
        self.tag = tag
        self.competition_id = f"bench-{tag}"
        self.unions = [f"{self.competition_id}-u{i}" for i in range(10)]
        self.events: list[str] = []
        self.entries: dict[str, list[tuple[str, str]]] = {}
        self.judges: dict[str, list[tuple[str, str]]] = {}
        self.chief: dict[str, str] = {}

    async def create(self, events: int, entries_per_union: int, judges: int) -> None:
        now = utc_now()
        await self.p.registration.post(
            "/competitions",
            self.admin,
            {
                "competition_id": self.competition_id,
                "name": f"性能测试赛 {self.tag}",
                "year": now.year,
                "level": "city",
                "registration_opens_at": (now - timedelta(days=1)).isoformat(),
                "registration_closes_at": (now + timedelta(hours=3)).isoformat(),
            },
        )
        for union_id in self.unions:
            await self.p.registration.post(
                "/unions", self.admin, {"union_id": union_id, "name": union_id}
            )
        for e in range(events):
            event_id = f"{self.competition_id}-ev{e}"
            self.events.append(event_id)
            await self.p.registration.post(
                f"/competitions/{self.competition_id}/events",
                self.admin,
                {
                    "event_id": event_id,
                    "name": f"项目{e}",
                    "trade": "电工",
                    "format": "individual",
                    "quota_per_union": entries_per_union + 1,
                    "minimum_entrants": 1,
                    "starts_at": (now + timedelta(hours=4)).isoformat(),
                },
            )
            panel = [(f"{event_id}-j{j}", f"{self.competition_id}-neutral") for j in range(judges)]
            self.judges[event_id] = panel
            self.chief[event_id] = f"{event_id}-chief"
            await self.p.scoring.put(
                f"/events/{event_id}/panel",
                self.admin,
                {
                    "chief_judge_id": self.chief[event_id],
                    "judges": [{"judge_id": j, "union_id": u} for j, u in panel],
                },
            )
        for u_index, union_id in enumerate(self.unions):
            workers = [
                {
                    "worker_id": f"{union_id}-w{e}-{i}",
                    "name": f"工人{u_index}-{e}-{i}",
                    "employer": "滨海电力",
                    "job": "电工",
                    "front_line": True,
                    "national_id": national_id_for(u_index * 100_000 + e * 1000 + i),
                }
                for e in range(events)
                for i in range(entries_per_union)
            ]
            await self.p.registration.post(
                f"/unions/{union_id}/workers", self.admin, {"workers": workers}
            )
        jobs = []
        for e, event_id in enumerate(self.events):
            self.entries[event_id] = []
            for union_id in self.unions:
                for i in range(entries_per_union):
                    entry_id = f"{event_id}-{union_id.rsplit('-', 1)[1]}-{i}"
                    self.entries[event_id].append((entry_id, union_id))
                    jobs.append(
                        {
                            "entry_id": entry_id,
                            "event_id": event_id,
                            "union_id": union_id,
                            "worker_ids": [f"{union_id}-w{e}-{i}"],
                        }
                    )
        semaphore = asyncio.Semaphore(16)

        async def register(body: dict[str, Any]) -> None:
            async with semaphore:
                await self.p.registration.post(
                    "/entries", self.tokens.officer(body["union_id"]), body
                )

        await asyncio.gather(*(register(b) for b in jobs))
        await self.wait_for_roster()

    async def wait_for_roster(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for event_id, entries in self.entries.items():
            while True:
                standings = await self.p.scoring.get(f"/events/{event_id}/standings", self.admin)
                if len(standings.get("lines", [])) >= len(entries):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"roster of {event_id} incomplete")
                await asyncio.sleep(0.3)

    def marks_for(self, event_id: str, judge_id: str, round_no: int) -> list[dict[str, Any]]:
        return [
            {
                "mark_id": f"{judge_id}:{entry_id}:r{round_no}",
                "entry_id": entry_id,
                "component": "practical",
                # Judges agree within 15 points, inside the divergence tolerance, so every
                # event can be finalised without the chief judge resolving flags.
                "value": str(70 + zlib.crc32(f"{judge_id}|{entry_id}".encode()) % 15),
            }
            for entry_id, _union in self.entries[event_id]
        ]

    async def stream(
        self, event_id: str, judge_id: str, marks: list[dict[str, Any]], batch: int = 200
    ) -> int:
        token = self.tokens.judge(judge_id, [event_id])
        url = self.p.ws_url(f"/events/{event_id}/marks/stream?token={token}")
        accepted = 0
        async with websockets.connect(url, open_timeout=30, max_size=2**24) as ws:
            for offset in range(0, len(marks), batch):
                chunk = marks[offset : offset + batch]
                await ws.send(orjson.dumps(chunk).decode())
                reply = orjson.loads(await ws.recv())
                replies = reply if isinstance(reply, list) else [reply]
                while len(replies) < len(chunk):
                    more = orjson.loads(await ws.recv())
                    replies += more if isinstance(more, list) else [more]
                accepted += sum(1 for r in replies if "error" not in r)
        return accepted


def national_id_for(n: int) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    body = f"120116{1980 + n % 20}{1 + n % 12:02d}{1 + n % 28:02d}{n % 1000:03d}"
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


async def measure_marks(contest: Contest) -> dict[str, Any]:
    """All judges of all events stream at once; done when standings count every mark."""
    jobs = [
        (event_id, judge_id, contest.marks_for(event_id, judge_id, 1))
        for event_id in contest.events
        for judge_id, _ in contest.judges[event_id]
    ]
    total = sum(len(m) for _, _, m in jobs)
    started = time.perf_counter()
    accepted = sum(await asyncio.gather(*(contest.stream(e, j, m) for e, j, m in jobs)))
    acked = time.perf_counter() - started
    for event_id in contest.events:
        expected = len(contest.entries[event_id]) * len(contest.judges[event_id])
        while True:
            standings = await contest.p.scoring.get(f"/events/{event_id}/standings", contest.admin)
            if standings.get("marks_counted", 0) >= expected:
                break
            await asyncio.sleep(0.05)
    reflected = time.perf_counter() - started
    return {
        "marks": total,
        "accepted": accepted,
        "marks_per_s": round(total / reflected, 1),
        "marks_acked_per_s": round(total / acked, 1),
    }


async def background_marks(
    contest: Contest, rate: int, stop: asyncio.Event, counter: list[int]
) -> None:
    """Stream about `rate` marks/s into one event: every judge marks every entry in rounds,
    each round correcting the last (a correction supersedes with a reason)."""
    event_id = contest.events[0]
    judges = contest.judges[event_id]
    per_judge_tick = max(1, rate // (10 * len(judges)))

    async def judge_loop(judge_id: str) -> None:
        token = contest.tokens.judge(judge_id, [event_id])
        url = contest.p.ws_url(f"/events/{event_id}/marks/stream?token={token}")
        entries = [entry_id for entry_id, _ in contest.entries[event_id]]
        position, round_no = 0, 1
        async with websockets.connect(url, open_timeout=30) as ws:
            while not stop.is_set():
                tick = time.monotonic()
                chunk = []
                for _ in range(per_judge_tick):
                    entry_id = entries[position]
                    mark: dict[str, Any] = {
                        "mark_id": f"{judge_id}:{entry_id}:r{round_no}",
                        "entry_id": entry_id,
                        "component": "practical",
                        "value": str(60 + (position + round_no) % 30),
                    }
                    if round_no > 1:
                        mark["supersedes"] = f"{judge_id}:{entry_id}:r{round_no - 1}"
                        mark["reason"] = "复核更正"
                    chunk.append(mark)
                    position += 1
                    if position == len(entries):
                        position, round_no = 0, round_no + 1
                await ws.send(orjson.dumps(chunk).decode())
                reply = orjson.loads(await ws.recv())
                counter[0] += len(reply) if isinstance(reply, list) else 1
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))

    await asyncio.gather(*(judge_loop(judge_id) for judge_id, _ in judges))


async def measure_finalisation_latency(
    platform: Platform, tokens: Tokens, tag: str, events: int, background_rate: int
) -> dict[str, Any]:
    """Finalise small events one by one under a steady background stream of marks; each
    latency runs from the finalise request to its event's first award on the leaders' feed.
    The next event is finalised once every award of the previous one reached the feed."""
    contest = Contest(platform, tokens, f"{tag}-lat")
    await contest.create(events=events, entries_per_union=3, judges=3)
    background = Contest(platform, tokens, f"{tag}-bg")
    await background.create(events=1, entries_per_union=10, judges=5)
    await platform.notifications.put(
        f"/subscriptions/{contest.competition_id}-bench-leader",
        contest.admin,
        {
            "name": "bench leader",
            "role": "committee",
            "scope": contest.competition_id,
            "channels": {"live_feed": True},
            "language": "zh",
        },
    )
    for event_id in contest.events:
        for judge_id, _ in contest.judges[event_id]:
            await contest.stream(event_id, judge_id, contest.marks_for(event_id, judge_id, 1))
        await platform.scoring.call(
            "POST",
            f"/events/{event_id}/theory-import",
            tokens.chief_judge(contest.chief[event_id], [event_id]),
            content="entry_id,member_id,score\n"
            + "".join(f"{entry_id},,80\n" for entry_id, _ in contest.entries[event_id]),
            headers={"Content-Type": "text/csv"},
        )
    seen: dict[str, float] = {}
    arrived: dict[str, int] = {}
    stop = asyncio.Event()
    sent = [0]

    async def follow() -> None:
        async for name, item in platform.notifications.sse("/feed"):
            if name == "award" and isinstance(item, dict):
                event_id = str(item.get("event_id"))
                seen.setdefault(event_id, time.monotonic())
                arrived[event_id] = arrived.get(event_id, 0) + 1

    async def settled(event_id: str, deadline: float) -> None:
        """Until every award of the event reached the feed: the next finalisation then
        measures its own latency, not a queue behind the previous event's notifications."""
        awards = await platform.awards.get("/awards", contest.admin, params={"event_id": event_id})
        while arrived.get(event_id, 0) < len(awards) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    follower = asyncio.create_task(follow())
    streamer = asyncio.create_task(background_marks(background, background_rate, stop, sent))
    await asyncio.sleep(1.0)
    started: dict[str, float] = {}
    stream_started, sent_before = time.monotonic(), sent[0]
    try:
        for event_id in contest.events:
            started[event_id] = time.monotonic()
            await platform.scoring.post(
                f"/events/{event_id}/finalise",
                tokens.chief_judge(contest.chief[event_id], [event_id]),
                {},
            )
            deadline = time.monotonic() + 10
            while event_id not in seen and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            await settled(event_id, deadline)
            await asyncio.sleep(0.2)
    finally:
        background_rate_seen = (sent[0] - sent_before) / max(
            1e-9, time.monotonic() - stream_started
        )
        stop.set()
        follower.cancel()
        for task in (follower, streamer):
            with contextlib.suppress(BaseException):
                await task
    latencies = sorted((seen[e] - started[e]) * 1000 for e in started if e in seen)
    p99_index = max(0, min(len(latencies) - 1, round(0.99 * (len(latencies) - 1))))
    return {
        "samples": len(latencies),
        "missing": len(started) - len(latencies),
        "background_marks_per_s": round(background_rate_seen, 1),
        "p50": round(statistics.median(latencies), 1) if latencies else None,
        "p99": round(latencies[p99_index], 1) if latencies else None,
        "max": round(latencies[-1], 1) if latencies else None,
    }


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def run_bench(
    console: Console, scale: float, external: bool, figures: dict[str, Any]
) -> dict[str, Any]:
    """Fill `figures` stage by stage, so a failing stage still leaves the earlier figures."""
    infra = None if external else start_infra(console=console)
    settings = Settings()
    if infra is not None:
        settings = settings.model_copy(
            update={
                "kafka_bootstrap_servers": infra.kafka_bootstrap,
                "mongodb_url": infra.mongodb_url,
                "kafka_idempotence": infra.kafka_idempotence,
            }
        )
    tag = uuid.uuid4().hex[:6]
    figures["scale"] = scale
    stack = Stack.create(
        kafka_bootstrap=settings.kafka_bootstrap_servers,
        mongodb_url=settings.mongodb_url,
        kafka_idempotence=settings.kafka_idempotence,
        db_prefix=f"bench{tag}",
        log_dir=Path(tempfile.mkdtemp(prefix="jinchui-bench-")),
    )
    try:
        n_floor = int(100_000 * scale)
        with console.status("Floor: raw insert_many of mark documents…"):
            figures["floor_insert_many_mark_docs_per_s"] = round(
                await floor_insert_many(settings.mongodb_url, n_floor), 1
            )
        with console.status("Floor: raw aiokafka produce→consume…"):
            figures["floor_kafka_msgs_per_s"] = round(
                await floor_kafka(
                    settings.kafka_bootstrap_servers, n_floor, settings.kafka_idempotence
                ),
                1,
            )
        with console.status("Bulk registration of entries…"):
            from services.registration.bench import bench_bulk_registration

            bulk = await bench_bulk_registration(
                settings.model_copy(update={"mongodb_db_prefix": f"benchreg{tag}"}), n=n_floor
            )
            figures.update(bulk)
        with console.status("Starting the four services…"):
            stack.start()
        platform = Platform({name: s.url for name, s in stack.services.items()})
        tokens = Tokens(settings)
        try:
            with console.status("Setting up a large contest…"):
                contest = Contest(platform, tokens, tag)
                await contest.create(events=4, entries_per_union=max(1, int(50 * scale)), judges=10)
            with console.status("Judges stream marks over WebSocket…"):
                figures.update(await measure_marks(contest))
            with console.status("Finalisation → notification under 1,000 marks/s…"):
                figures["finalisation_to_notification_ms"] = await measure_finalisation_latency(
                    platform, tokens, tag, events=max(5, int(30 * scale)), background_rate=1000
                )
        finally:
            await platform.close()
        figures["peak_rss_mb"] = {
            name: peak_rss_mb(service.pid)
            for name, service in stack.services.items()
            if service.pid
        }
    finally:
        stack.stop()
        if infra and infra.managed:
            infra.stop()
    return figures


def figures_table(figures: dict[str, Any]) -> Table:
    table = Table(title="jinchui bench", title_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("vs floor", justify="right")
    table.add_column("target")
    # Each figure against raw insert_many of its own documents: entries for registration
    # (floor_insert_many_docs_per_s, measured by the bulk stage), marks for marks.
    insert_floor = figures.get("floor_insert_many_docs_per_s") or 0
    mark_floor = figures.get("floor_insert_many_mark_docs_per_s") or 0
    kafka_floor = figures.get("floor_kafka_msgs_per_s") or 0

    def ratio(value: float, floor: float) -> str:
        return f"{value / floor:.2f}×" if floor else "–"

    table.add_row(
        "floor: raw insert_many of entry documents (docs/s)", f"{insert_floor:,.0f}", "1.00×", ""
    )
    table.add_row(
        "floor: raw insert_many of mark documents (docs/s)", f"{mark_floor:,.0f}", "1.00×", ""
    )
    table.add_row(
        "floor: raw aiokafka produce→consume (msgs/s)", f"{kafka_floor:,.0f}", "1.00×", ""
    )
    bulk = figures.get("bulk_registration_entries_per_s", 0)
    table.add_row(
        "bulk registration (entries/s)",
        f"{bulk:,.0f}",
        ratio(bulk, insert_floor),
        "≥ 0.5× insert_many",
    )
    marks = figures.get("marks_per_s", 0)
    table.add_row(
        "marks over WebSocket, in standings (marks/s)",
        f"{marks:,.0f}",
        f"{ratio(marks, mark_floor)} mongo, {ratio(marks, kafka_floor)} kafka",
        "≥ 5,000/s and ≥ 0.25× insert_many",
    )
    latency = figures.get("finalisation_to_notification_ms", {})
    table.add_row("finalisation → notification p50 (ms)", str(latency.get("p50")), "", "< 100")
    table.add_row("finalisation → notification p99 (ms)", str(latency.get("p99")), "", "< 300")
    for name, rss in figures.get("peak_rss_mb", {}).items():
        table.add_row(f"peak RSS {name} (MB)", f"{rss}", "", "< 300")
    return table


@app.callback(invoke_without_command=True)
def bench(
    as_json: Annotated[
        bool, typer.Option("--json", help="end with one JSON line of figures")
    ] = False,
    scale: Annotated[float, typer.Option(help="1.0 = 100,000 entries and floors")] = 1.0,
    external: Annotated[bool, typer.Option(help="use KAFKA_BOOTSTRAP_SERVERS/MONGODB_URL")] = False,
) -> None:
    """Load the platform and print figures beside floors measured in the same run."""
    console = Console(stderr=True)
    figures: dict[str, Any] = {}
    try:
        asyncio.run(run_bench(console, scale, external, figures))
    except BaseException as error:
        figures["failed"] = f"{type(error).__name__}: {error}"[:500]
        raise
    finally:
        Console().print(figures_table(figures))
        if as_json:
            print(json.dumps(figures, ensure_ascii=False))
