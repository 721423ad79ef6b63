"""What the public page streams: award news (the live feed) and standings, as server-sent
events, fed by MongoDB change streams.

Why change streams rather than publishing in-process after a commit: with several replicas,
the replica that delivered an award is rarely the one holding a browser's connection. Every
replica watches the `feed` and `standings` collections and fans the inserted documents out to
its own subscribers; a single-node replica set reports a committed insert within milliseconds.
A browser connecting late, or across a watcher restart, catches up from the replay on connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from shared.logging import get_logger
from shared.mongo import Database, Doc

from .channels import LiveFeed, LiveFeedItem

log = get_logger(__name__)
T = TypeVar("T")

HEARTBEAT_S = 15.0
REPLAY_LIMIT = 50


class Broadcast(Generic[T]):
    """In-process fan-out to bounded queues; a slow reader loses its oldest items."""

    def __init__(self, max_queue: int = 200) -> None:
        self._max_queue = max_queue
        self._queues: list[asyncio.Queue[T]] = []

    def subscribe(self) -> asyncio.Queue[T]:
        queue: asyncio.Queue[T] = asyncio.Queue(maxsize=self._max_queue)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[T]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    def publish(self, item: T) -> None:
        for queue in tuple(self._queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(item)


class CollectionWatcher:
    """Calls `on_document` with the full document of every insert/replace/update."""

    def __init__(
        self, db: Database, collection: str, on_document: Callable[[Doc], None], name: str
    ) -> None:
        self._db = db
        self._collection = collection
        self._on_document = on_document
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)
        # Opening the stream takes a round trip; waiting makes "started" mean "watching".
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout=5.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pipeline = [{"$match": {"operationType": {"$in": ["insert", "replace", "update"]}}}]
        resume_after: Mapping[str, Any] | None = None
        while True:
            try:
                async with await self._db[self._collection].watch(
                    pipeline, full_document="updateLookup", resume_after=resume_after
                ) as stream:
                    self.ready.set()
                    async for change in stream:
                        resume_after = stream.resume_token
                        document = change.get("fullDocument")
                        if document is not None:
                            self._deliver(document)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "change stream interrupted; reopening", watcher=self._name, error=str(exc)
                )
                await asyncio.sleep(0.5)

    def _deliver(self, document: Doc) -> None:
        try:
            self._on_document(document)
        except Exception as exc:  # one bad document must not stop the stream
            log.error("change stream document rejected", watcher=self._name, error=str(exc))


# --- server-sent events ---------------------------------------------------------------------


def sse_message(event: str, data: Any, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id:
        lines.append(f"id: {event_id}")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    lines.append(f"data: {payload}")
    return "\n".join(lines) + "\n\n"


def award_news(item: LiveFeedItem) -> dict[str, Any]:
    """The `award` SSE event's data: flat fields a page or a client reads without parsing."""
    document = item.document
    competition = document.get("competition") or {}
    event = document.get("event") or {}
    recipient = document.get("recipient") or {}
    return {
        "delivery_key": item.delivery_key,
        "award_id": item.award_id,
        "decision_event_id": item.decision_event_id,
        "leader_id": item.leader_id,
        "channel": "live_feed",
        "kind": item.kind,
        "title": item.title,
        "body": item.body,
        "language": item.language,
        "award_type": document.get("award_type"),
        "competition_id": competition.get("competition_id"),
        "competition_name": competition.get("name"),
        "event_id": event.get("event_id"),
        "event_name": event.get("name"),
        "recipient_name": recipient.get("name"),
        "recipient_kind": recipient.get("kind"),
        "union_name": recipient.get("union_name"),
        "rank": document.get("rank"),
        "certificate_no": document.get("certificate_no"),
        "at": item.published_at.isoformat(),
    }


async def award_stream(
    feed: LiveFeed,
    replay: Callable[[], Awaitable[list[LiveFeedItem]]],
    *,
    leader_id: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> AsyncIterator[str]:
    """Replay recent items, then live ones; an item seen in both is sent once."""
    # Subscribe before reading the replay, so nothing committed in between is lost.
    subscription = feed.subscribe(leader_id=leader_id)
    try:
        yield ": connected\n\n"
        sent: set[str] = set()
        for item in await replay():
            if leader_id is None or item.leader_id == leader_id:
                sent.add(item.delivery_key)
                yield sse_message("award", award_news(item), item.delivery_key)
        iterator = subscription.__aiter__()
        while True:
            try:
                item = await asyncio.wait_for(iterator.__anext__(), timeout=heartbeat_s)
            except TimeoutError:
                yield ": keep-alive\n\n"  # also how a closed connection is noticed
                continue
            except StopAsyncIteration:
                return
            if item.delivery_key in sent:
                continue
            sent.add(item.delivery_key)
            yield sse_message("award", award_news(item), item.delivery_key)
    finally:
        subscription.close()


async def standings_stream(
    hub: Broadcast[dict[str, Any]],
    current: Callable[[], Awaitable[list[dict[str, Any]]]],
    *,
    heartbeat_s: float = HEARTBEAT_S,
) -> AsyncIterator[str]:
    queue = hub.subscribe()
    try:
        yield ": connected\n\n"
        latest: dict[str, str] = {}
        for view in await current():
            latest[view["event_id"]] = view["as_of"]
            yield sse_message("standings", view, view["event_id"])
        while True:
            try:
                view = await asyncio.wait_for(queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if _not_newer(view["as_of"], latest.get(view["event_id"])):
                continue
            latest[view["event_id"]] = view["as_of"]
            yield sse_message("standings", view, view["event_id"])
    finally:
        hub.unsubscribe(queue)


def _not_newer(as_of: str, seen: str | None) -> bool:
    if seen is None:
        return False
    return datetime.fromisoformat(as_of) <= datetime.fromisoformat(seen)
