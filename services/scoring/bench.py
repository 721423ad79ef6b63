"""Throughput of the mark stream: N marks over WebSockets into a real scoring process.

    .venv/bin/python -m services.scoring.bench --entries 2000 --judges 6 --batch 100

Uses KAFKA_BOOTSTRAP_SERVERS / MONGODB_URL when set, otherwise starts a local Kafka and mongod
in a temporary folder (stopped at the end). Runs the scoring service as its own process (as in
production), publishes the roster to `registration.entries`, assigns the panel, then has every
judge stream their practical marks over one WebSocket each, `--window` messages in flight.
Reports marks/s from the first send to the last reply (every mark acknowledged means it was
committed to Mongo with its outbox record), then checks the stored count and the standings.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import websockets
from aiokafka import AIOKafkaProducer

from jinchui.infra import start_infra
from jinchui.stack import free_port
from shared import topics
from shared.auth import Role, issue_token
from shared.events import (
    CompetitionLevel,
    CompetitionRef,
    EntryRegistered,
    EntryRegisteredPayload,
    Envelope,
    EventFormat,
    EventPublished,
    EventPublishedPayload,
    EventRef,
    Member,
    encode_event,
    new_event,
    utc_now,
)
from shared.settings import Settings

UNIONS = ("U1", "U2", "U3", "U4")


async def _publish_roster(bootstrap: str, event_id: str, entries: int) -> None:
    now = utc_now()
    competition = CompetitionRef(
        competition_id=f"c-{event_id}", name="bench", year=2026, level=CompetitionLevel.CITY
    )
    event = EventRef(event_id=event_id, name="bench", trade="bench", format=EventFormat.INDIVIDUAL)
    published = EventPublishedPayload(
        competition=competition,
        event=event,
        registration_opens_at=now - timedelta(days=1),
        registration_closes_at=now,
        starts_at=now,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        messages: list[Envelope[Any]] = [
            new_event(EventPublished, published, producer="bench", correlation_id="b")
        ]
        for n in range(entries):
            payload = EntryRegisteredPayload(
                entry_id=f"{event_id}-e{n}",
                competition=competition,
                event=event,
                union_id=UNIONS[n % len(UNIONS)],
                union_name=UNIONS[n % len(UNIONS)],
                members=(Member(worker_id=f"{event_id}-w{n}", name=f"w{n}", front_line=True),),
                registered_at=now,
            )
            messages.append(
                new_event(EntryRegistered, payload, producer="bench", correlation_id="b")
            )
        for message in messages:
            await producer.send(
                topics.REGISTRATION_ENTRIES, encode_event(message), key=event_id.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _judge_session(
    url: str, marks: list[dict[str, Any]], batch: int, window: int
) -> tuple[int, int]:
    added = errors = 0
    async with websockets.connect(url, max_size=None) as ws:
        chunks = [marks[i : i + batch] for i in range(0, len(marks), batch)]
        in_flight = 0
        sent = 0
        while sent < len(chunks) or in_flight:
            while sent < len(chunks) and in_flight < window:
                await ws.send(json.dumps(chunks[sent]))
                sent += 1
                in_flight += 1
            for reply in json.loads(await ws.recv()):
                if "error" in reply:
                    errors += 1
                else:
                    added += 1
            in_flight -= 1
    return added, errors


async def run_bench(
    base_url: str,
    bootstrap: str,
    entries: int,
    judges: int,
    batch: int,
    window: int,
    server_pid: int | None = None,
) -> dict[str, Any]:
    event_id = "bench-" + uuid.uuid4().hex[:6]
    settings = Settings()
    admin = issue_token(settings, subject="admin", role=Role.ADMIN, scopes=["*"])
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        auth = {"Authorization": f"Bearer {admin}"}
        panel = {
            "chief_judge_id": "chief",
            "judges": [{"judge_id": f"j{k}", "union_id": None} for k in range(judges)],
        }
        (await http.put(f"/events/{event_id}/panel", json=panel, headers=auth)).raise_for_status()
        started = time.monotonic()
        await _publish_roster(bootstrap, event_id, entries)
        while True:
            standings = (await http.get(f"/events/{event_id}/standings", headers=auth)).json()
            if len(standings["lines"]) == entries:
                break
            await asyncio.sleep(0.5)
        roster_s = time.monotonic() - started

        sessions = []
        for k in range(judges):
            token = issue_token(
                settings, subject=f"j{k}", role=Role.JUDGE, scopes=[f"event:{event_id}"]
            )
            url = (
                base_url.replace("http://", "ws://")
                + f"/events/{event_id}/marks/stream?token={token}"
            )
            marks = [
                {
                    "mark_id": f"j{k}-e{n}",
                    "entry_id": f"{event_id}-e{n}",
                    "component": "practical",
                    "value": str(60 + (n * 7 + k) % 15),
                }
                for n in range(entries)
            ]
            sessions.append(_judge_session(url, marks, batch, window))
        profile = os.environ.get("BENCH_PROFILE")
        if profile and server_pid:
            # BENCH_PROFILE=out.txt samples the server with py-spy while the marks stream in.
            await asyncio.create_subprocess_exec(
                *[
                    "py-spy",
                    "record",
                    "--pid",
                    str(server_pid),
                    "--duration",
                    "8",
                    "-f",
                    "raw",
                    "-o",
                    profile,
                    "--nonblocking",
                ]
            )
            await asyncio.sleep(1.0)
        started = time.monotonic()
        results = await asyncio.gather(*sessions)
        elapsed = time.monotonic() - started
        added = sum(r[0] for r in results)
        errors = sum(r[1] for r in results)
        standings = (await http.get(f"/events/{event_id}/standings", headers=auth)).json()
    return {
        "entries": entries,
        "judges": judges,
        "marks_per_message": batch,
        "messages_in_flight_per_judge": window,
        "marks_added": added,
        "mark_errors": errors,
        "seconds": round(elapsed, 3),
        "marks_per_second": round(added / elapsed),
        "standings_marks_recorded": standings["marks_recorded"],
        "standings_marks_counted": standings["marks_counted"],
        "roster_load_seconds": round(roster_s, 1),
    }


def main(
    entries: Annotated[int, typer.Option(help="entries in the event")] = 2000,
    judges: Annotated[int, typer.Option(help="judges, one WebSocket each")] = 6,
    batch: Annotated[int, typer.Option(help="marks per WebSocket message")] = 100,
    window: Annotated[int, typer.Option(help="messages in flight per judge")] = 4,
) -> None:
    with ExitStack() as stack:
        if not (os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URL")):
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            handle = start_infra(state)
            stack.callback(handle.stop)
            os.environ["KAFKA_BOOTSTRAP_SERVERS"] = handle.kafka_bootstrap
            os.environ["MONGODB_URL"] = handle.mongodb_url
            os.environ["JINCHUI_KAFKA_IDEMPOTENCE"] = str(handle.kafka_idempotence).lower()
        port = free_port()
        env = {**os.environ, "JINCHUI_MONGODB_DB_PREFIX": "bench" + uuid.uuid4().hex[:6]}
        env["JINCHUI_LOG_LEVEL"] = "WARNING"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "services.scoring.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        stack.callback(server.wait, 30)
        stack.callback(server.terminate)
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        result = asyncio.run(
            run_bench(
                base_url,
                os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                entries,
                judges,
                batch,
                window,
                server.pid,
            )
        )
        typer.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
