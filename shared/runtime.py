"""One service's wiring: MongoDB, the Kafka broker, the outbox and its relay.

Every service's `app.py` builds one `ServiceRuntime`, registers its handlers on
`runtime.broker`, and hands the runtime to `shared.http.create_http_app`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pymongo import ASCENDING, AsyncMongoClient, IndexModel

from shared.events import Envelope
from shared.inbox import PROCESSED, process_once
from shared.kafka import (
    OffsetCommitter,
    RelayPublisher,
    broker_dead_letter_sink,
    create_broker,
    dead_letter_middleware,
)
from shared.kafka_admin import ensure_topics
from shared.logging import configure_logging, get_logger
from shared.mongo import (
    Database,
    Doc,
    Session,
    create_client,
    ensure_indexes,
    in_transaction,
    ping,
    service_database,
)
from shared.outbox import OUTBOX_INDEXES, Outbox, OutboxRelay
from shared.settings import Settings, get_settings
from shared.topics import ALL_TOPICS

T = TypeVar("T")
log = get_logger(__name__)

AUDIT = "audit"
COMMON_INDEXES: dict[str, Sequence[IndexModel]] = {
    **OUTBOX_INDEXES,
    AUDIT: [IndexModel([("at", ASCENDING)]), IndexModel([("actor", ASCENDING)])],
    PROCESSED: [IndexModel([("at", ASCENDING)])],
}


class ServiceRuntime:
    def __init__(
        self,
        name: str,
        settings: Settings | None = None,
        *,
        indexes: dict[str, Sequence[IndexModel]] | None = None,
        relay_outbox: bool = True,
    ) -> None:
        self.name = name
        self.settings = settings or get_settings()
        configure_logging(name, self.settings.log_level)
        self.client: AsyncMongoClient[Doc] = create_client(self.settings)
        self.db: Database = service_database(self.client, self.settings, name)
        self.offsets = OffsetCommitter()
        self.broker: KafkaBroker = create_broker(
            self.settings,
            client_id=f"jinchui-{name}",
            middlewares=[
                dead_letter_middleware(
                    broker_dead_letter_sink(lambda: self.broker),
                    consumer=name,
                    committer=self.offsets,
                )
            ],
        )
        self.outbox = Outbox(self.db)
        self.relay_publisher = RelayPublisher(self.settings, client_id=f"jinchui-{name}")
        self.relay = OutboxRelay(self.db, self.relay_publisher, name=f"{name}-outbox-relay")
        self._relay_outbox = relay_outbox
        self._indexes = {**COMMON_INDEXES, **(indexes or {})}
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._transactions: asyncio.Lock | None = None
        self.started = False

    def _one_transaction_at_a_time(self) -> asyncio.Lock:
        """Every transaction bumps the outbox sequence (shared.outbox), so two in flight in one
        process conflict on it and MongoDB aborts one, to be redone whole (a batch of a
        thousand marks included). Queued in-process they never conflict, and the work that
        waits meanwhile batches up. Replicas of a service still conflict and retry, correctly.
        Made on first use, on the running event loop."""
        if self._transactions is None:
            self._transactions = asyncio.Lock()
        return self._transactions

    def group_id(self, purpose: str = "main") -> str:
        return f"{self.settings.mongodb_db_prefix}-{self.name}-{purpose}"

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(hook)

    async def start(self) -> None:
        await ensure_indexes(self.db, self._indexes)
        # Subscribing to a topic that does not exist yet can leave a consumer blind to it
        # until its next metadata refresh; create them all first (idempotent, one request).
        await ensure_topics(self.settings.kafka_bootstrap_servers, ALL_TOPICS)
        for hook in self._on_start:
            await hook()
        await self.broker.start()
        if self._relay_outbox:
            await self.relay_publisher.start()
            await self.relay.start()
        self.started = True
        log.info("service started", kafka=self.settings.kafka_bootstrap_servers)

    async def stop(self) -> None:
        self.started = False
        if self._relay_outbox:
            await self.relay.stop()
            await self.relay_publisher.stop()
        await self.offsets.flush()
        await self.broker.stop()
        for hook in reversed(self._on_stop):
            await hook()
        await self.client.close()
        log.info("service stopped")

    async def readiness(self) -> dict[str, bool]:
        mongo_ok, kafka_ok = await asyncio.gather(ping(self.client), self._kafka_ok())
        return {"mongodb": mongo_ok, "kafka": kafka_ok, "started": self.started}

    async def _kafka_ok(self) -> bool:
        try:
            return bool(await self.broker.ping(timeout=2.0))
        except Exception:
            return False

    async def transact(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """Run a unit of work in one transaction, then wake the relay to publish its events."""
        result = await in_transaction(
            self.client, work, one_at_a_time=self._one_transaction_at_a_time()
        )
        self.relay.nudge()
        return result

    async def consume_once(
        self, event: Envelope[Any], work: Callable[[Session], Awaitable[None]]
    ) -> bool:
        """Apply a consumed event's effects exactly once (see shared.inbox)."""
        applied = await process_once(
            self.client,
            self.db,
            event,
            self.name,
            work,
            one_at_a_time=self._one_transaction_at_a_time(),
        )
        if applied:
            self.relay.nudge()
        return applied

    def asyncapi_document(self, title: str, description: str = "") -> dict[str, Any]:
        spec = AsyncAPI(
            self.broker, title=title, version="1.0.0", description=description
        ).to_specification()
        document: dict[str, Any] = spec.to_jsonable()
        return document
