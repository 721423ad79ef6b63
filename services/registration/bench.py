"""Bulk-registration throughput against the raw insert_many floor, measured in one run.

`bench_bulk_registration(settings, n)` sets up a scratch database (one competition, one
individual event, 10 unions, n workers — not timed) and starts the service's Kafka producer
and outbox relay, then times:
- `bulk_registration_stored_entries_per_s`: entries per second through the real bulk path
  (`RegistrationService.import_entries` on a JSON file: parse, validate in memory, then one
  transaction per chunk writing the entries, the quota counters, the `EntryRegistered`
  events as packed outbox documents and an audit line), until `import_entries` returns;
- `bulk_registration_entries_per_s` (the stricter figure, the one the target is about):
  from the same start until the relay has ALSO published every one of the n events to Kafka
  (acks=all) and marked them published: stored and emitted. The relay runs in the same
  process, so its publishing competes with the import for the CPU, as in the service;
- `floor_insert_many_docs_per_s`: the same entry documents (the same count, read back from
  the entries collection) written with one plain unordered `insert_many` (no transaction,
  default write concern) into a scratch collection with only the `_id` index.
The ratio is entries/s over floor docs/s, as the target states. The scratch database is
dropped afterwards; the n events stay on the run's registration topic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import orjson

from services.registration.bulk import ImportMode
from services.registration.domain import (
    Competition,
    Event,
    Union,
    Worker,
    national_id_check_character,
)
from services.registration.handlers import RegistrationService
from services.registration.repository import (
    INDEXES,
    RegistrationRepository,
    worker_doc,
)
from shared.auth import Principal, Role
from shared.events import CompetitionLevel, EventFormat, utc_now
from shared.runtime import ServiceRuntime
from shared.settings import Settings

UNIONS = 10


def _national_id(serial: int) -> str:
    first = f"1101051980{serial % 10_000_000:07d}"
    return first + national_id_check_character(first)


async def _until_published(runtime: ServiceRuntime, n: int, timeout_s: float = 600.0) -> None:
    """Wait until the relay has published (and marked) all n events: checked on its own
    counter every 5 ms, then confirmed on the outbox itself."""
    for _ in range(int(timeout_s / 0.005)):
        if runtime.relay.published_total >= n:
            break
        await asyncio.sleep(0.005)
    pending = await runtime.outbox.pending_count()
    if pending:
        raise RuntimeError(f"the relay left {pending} of {n} events unpublished")


async def bench_bulk_registration(settings: Settings, n: int = 100_000) -> dict[str, Any]:
    scratch = settings.model_copy(
        update={"mongodb_db_prefix": f"{settings.mongodb_db_prefix}-bench{uuid.uuid4().hex[:6]}"}
    )
    runtime = ServiceRuntime("registration", scratch, indexes=INDEXES)
    repo = RegistrationRepository(runtime.db)
    service = RegistrationService(runtime, repo)
    admin = Principal(subject="bench", role=Role.ADMIN, scopes=frozenset({"*"}))
    try:
        await runtime.start()  # indexes, topics, the Kafka producer and the outbox relay
        now = utc_now()
        competition = Competition(
            "bench-c",
            "基准赛",
            now.year,
            CompetitionLevel.CITY,
            now - timedelta(days=1),
            now + timedelta(days=1),
        )
        per_union = -(-n // UNIONS)
        event = Event(
            "bench-e",
            "bench-c",
            "叉车",
            "叉车司机",
            EventFormat.INDIVIDUAL,
            now + timedelta(days=2),
            quota_per_union=per_union,
        )
        unions = [Union(f"bench-u{i}", f"工会{i}") for i in range(UNIONS)]

        async def setup(session: Any) -> None:
            await repo.insert_competition(competition, session)
            await repo.insert_event(event, session)
            for union in unions:
                await repo.insert_union(union, [], session)

        await runtime.transact(setup)
        workers = [
            Worker(
                worker_id=f"bw{i}",
                union_id=unions[i % UNIONS].union_id,
                name=f"职工{i}",
                front_line=True,
                national_id_hash=f"{i:064x}",
                national_id_masked=_national_id(i)[:3] + "*" * 11 + _national_id(i)[-4:],
            )
            for i in range(n)
        ]
        await runtime.db["workers"].insert_many([worker_doc(w) for w in workers], ordered=False)
        rows = [
            {"event_id": event.event_id, "union_id": w.union_id, "worker_ids": [w.worker_id]}
            for w in workers
        ]
        data = orjson.dumps(rows)

        started = time.perf_counter()
        outcome = await service.import_entries(
            admin,
            data,
            file_format="json",
            mode=ImportMode.ALL_OR_NOTHING,
            correlation_id="bench",
        )
        stored_s = time.perf_counter() - started
        if outcome.accepted != n:
            raise RuntimeError(
                f"bulk import accepted {outcome.accepted} of {n}: {outcome.errors[:3]}"
            )
        await _until_published(runtime, n)
        bulk_s = time.perf_counter() - started

        stored = await runtime.db["entries"].find({}, {"_id": 0}).to_list()
        floor_docs = [{**doc, "_id": f"floor-{i}"} for i, doc in enumerate(stored)]
        del stored
        started = time.perf_counter()
        await runtime.db["scratch_entries"].insert_many(floor_docs, ordered=False)
        floor_s = time.perf_counter() - started
        outbox_docs = await runtime.db["outbox"].count_documents({})
        bulk_rate = n / bulk_s
        floor_rate = len(floor_docs) / floor_s
        return {
            "bulk_registration_entries": n,
            "bulk_registration_stored_seconds": round(stored_s, 3),
            "bulk_registration_stored_entries_per_s": round(n / stored_s, 1),
            "bulk_registration_stored_vs_floor_ratio": round(n / stored_s / floor_rate, 3),
            "bulk_registration_seconds": round(bulk_s, 3),
            "bulk_registration_entries_per_s": round(bulk_rate, 1),
            "bulk_registration_events_published": runtime.relay.published_total,
            "bulk_registration_docs_written": n + outbox_docs,
            "bulk_registration_outbox_docs": outbox_docs,
            "floor_insert_many_docs": len(floor_docs),
            "floor_insert_many_seconds": round(floor_s, 3),
            "floor_insert_many_docs_per_s": round(floor_rate, 1),
            "bulk_vs_floor_ratio": round(bulk_rate / floor_rate, 3),
        }
    finally:
        await runtime.client.drop_database(scratch.database_name("registration"))
        await runtime.stop()  # closes the client too


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(asyncio.run(bench_bulk_registration(Settings())), indent=2))
