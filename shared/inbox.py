"""Idempotent consumption: the processed-event record commits with the state change.

`process_once` inserts the event id into `processed_events` inside the same transaction as the
handler's writes; a redelivered event hits the unique `_id` and the whole unit is skipped, so
a crash after the commit but before the Kafka offset commit changes nothing on replay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from shared.events import Envelope, utc_now
from shared.mongo import Database, Doc, Session, in_transaction

PROCESSED = "processed_events"


class AlreadyProcessed(Exception):
    pass


async def process_once(
    client: AsyncMongoClient[Doc],
    db: Database,
    event: Envelope[Any],
    consumer: str,
    work: Callable[[Session], Awaitable[None]],
    *,
    one_at_a_time: asyncio.Lock | None = None,
) -> bool:
    """Apply `work` exactly once per (consumer, event id); returns False for a duplicate."""

    async def unit(session: Session) -> None:
        try:
            await db[PROCESSED].insert_one(
                {
                    "_id": f"{consumer}:{event.event_id}",
                    "event_type": event.event_type,
                    "at": utc_now(),
                },
                session=session,
            )
        except DuplicateKeyError as exc:
            raise AlreadyProcessed from exc
        await work(session)

    try:
        await in_transaction(client, unit, one_at_a_time=one_at_a_time)
    except AlreadyProcessed:
        return False
    return True
