"""Kafka plumbing: the FastStream broker factory, the outbox publisher, strict decoding and the
dead-letter middleware.

Consumers commit offsets only after their handler (and its Mongo transaction) succeeded:
the dead-letter middleware marks a message done and an `OffsetCommitter` commits in small
batches. It also decides what "error" means:
- a message that cannot be decoded or validated, or that breaks a domain rule, is poison:
  it goes to `<topic>.dlq` at once, with the reason in headers, and the offset moves on;
- an infrastructure outage (MongoDB or Kafka unreachable) is retried without limit, because
  dead-lettering good messages during a restart would lose their order;
- anything else is retried with back-off a few times, then dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from pydantic import TypeAdapter, ValidationError
from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

from shared.errors import DomainError
from shared.events import Envelope
from shared.logging import get_logger
from shared.outbox import OutgoingRecord
from shared.settings import Settings
from shared.topics import dlq

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 1_000_000
TRANSIENT_ATTEMPTS = 5
INFRA_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,
    ServerSelectionTimeoutError,
    KafkaConnectionError,
)


class PoisonMessage(Exception):
    """A message that will never be processable as it is (dead-letter it at once)."""


def create_broker(
    settings: Settings,
    *,
    client_id: str,
    middlewares: Sequence[Any] = (),
    linger_ms: int = 5,
) -> KafkaBroker:
    """One broker per service: acks=all and idempotence (off only on the Tansu fallback)."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        compression_type=None,
        middlewares=tuple(middlewares),
        graceful_timeout=15.0,
        log_level=10,  # per-message access logs at DEBUG: structlog carries the real story
    )


class RelayPublisher:
    """The outbox relay's view of Kafka: send a batch in order, wait for every ack.

    A plain aiokafka producer of its own (acks=all, idempotent): one FastStream `publish`
    per record costs several times the raw `send`, and the relay sends every event the
    service ever emits. Keys are hashed by aiokafka's default partitioner, as FastStream's
    publishers do, so an event id's messages share a partition whichever path sent them.
    """

    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self._settings = settings
        self._client_id = f"{client_id}-relay"
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # Built here, not in __init__: an unstarted aiokafka producer warns when collected.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=self._settings.kafka_idempotence,
            # No linger: a relay pass hands a whole batch to the producer before it yields,
            # so the records batch anyway; lingering would only add to every hop's latency.
            linger_ms=0,
            max_batch_size=512 * 1024,
            request_timeout_ms=30_000,
        )
        await self._producer.start()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> None:
        futures: list[asyncio.Future[Any]] = []
        for record in records:
            headers = [
                *((name, value.encode()) for name, value in record.headers.items() if value),
                ("event_type", record.event_type.encode()),
                ("event_id", record.event_id.encode()),
                ("content-type", b"application/json"),
            ]
            if not record.headers.get("correlation_id"):
                headers.append(("correlation_id", record.event_id.encode()))
            assert self._producer is not None, "RelayPublisher.start() first"
            futures.append(
                await self._producer.send(
                    record.topic, record.value, key=record.key.encode(), headers=headers
                )
            )
        await asyncio.gather(*futures)


def strict_decoder(adapter: TypeAdapter[Any]) -> Callable[..., Awaitable[Any]]:
    """A FastStream decoder that validates the raw JSON strictly against the contract."""

    async def decode(msg: StreamMessage[Any], _original: Any = None) -> Any:
        body: bytes = msg.body
        if len(body) > MAX_MESSAGE_BYTES:
            raise PoisonMessage(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            return adapter.validate_json(body)
        except ValidationError as exc:
            raise PoisonMessage(_summarise_validation(exc)) from exc

    return decode


def _summarise_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(message)"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


DeadLetterSink = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


class OffsetCommitter:
    """Commits consumed offsets shortly after their messages were fully handled.

    A synchronous commit per message costs a broker round trip (~10 ms here), capping a
    consumer at ~100 msgs/s. Handlers record the processed event id in their own transaction,
    so committing a little later is safe: a crash in between redelivers messages that the
    inbox then skips. Offsets are committed only for messages whose handling finished.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self._interval_s = interval_s
        self._pending: dict[int, tuple[Any, dict[TopicPartition, int]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def mark_done(self, msg: StreamMessage[Any]) -> None:
        raw = msg.raw_message
        consumer = getattr(msg, "consumer", None)
        if consumer is None or not hasattr(raw, "offset"):
            return
        _consumer, offsets = self._pending.setdefault(id(consumer), (consumer, {}))
        offsets[TopicPartition(raw.topic, raw.partition)] = raw.offset + 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="offset-committer")
        self._wake.set()

    async def _run(self) -> None:
        while self._pending:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._interval_s)
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for consumer, offsets in pending.values():
            try:
                await consumer.commit(dict(offsets))
            except Exception as exc:  # a rebalance: the next owner re-reads, the inbox skips
                log.info("offset commit skipped", error=str(exc))


def broker_dead_letter_sink(broker_ref: Callable[[], KafkaBroker]) -> DeadLetterSink:
    async def sink(topic: str, body: bytes, headers: dict[str, str]) -> None:
        await broker_ref().publish(body, topic=topic, headers=headers)

    return sink


def dead_letter_middleware(
    sink: DeadLetterSink,
    *,
    consumer: str,
    committer: OffsetCommitter | None = None,
    transient_attempts: int = TRANSIENT_ATTEMPTS,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
) -> Callable[..., BaseMiddleware]:
    """Build the middleware factory FastStream calls for every consumed message.

    It also owns offset commits (subscribers use AckPolicy.MANUAL): a message's offset is
    committed only once it was handled or dead-lettered.
    """
    offsets = committer or OffsetCommitter()

    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            attempt = 0
            while True:
                attempt += 1
                try:
                    result = await call_next(msg)
                    offsets.mark_done(msg)
                    return result
                except (PoisonMessage, DomainError, ValidationError, json.JSONDecodeError) as exc:
                    await self._dead_letter(msg, exc, attempts=attempt)
                    offsets.mark_done(msg)
                    return None
                except INFRA_ERRORS as exc:
                    delay = min(max_delay_s, base_delay_s * 2 ** min(attempt, 6))
                    log.warning("infrastructure unavailable; retrying", error=str(exc))
                    await asyncio.sleep(delay)
                except KafkaError as exc:
                    delay = min(max_delay_s, base_delay_s * 2 ** min(attempt, 6))
                    log.warning("kafka error; retrying", error=str(exc))
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if attempt >= transient_attempts:
                        await self._dead_letter(msg, exc, attempts=attempt)
                        offsets.mark_done(msg)
                        return None
                    await asyncio.sleep(min(max_delay_s, base_delay_s * 2**attempt))

        async def _dead_letter(
            self, msg: StreamMessage[Any], exc: BaseException, *, attempts: int
        ) -> None:
            raw = msg.raw_message
            topic = getattr(raw, "topic", "unknown")
            reason = str(exc) or type(exc).__name__
            headers = {
                "dlq_reason": reason[:4000],
                "dlq_error_type": type(exc).__name__,
                "dlq_original_topic": topic,
                "dlq_partition": str(getattr(raw, "partition", "")),
                "dlq_offset": str(getattr(raw, "offset", "")),
                "dlq_consumer": consumer,
                "dlq_attempts": str(attempts),
                "dlq_trace": "".join(traceback.format_exception_only(exc))[-1000:],
            }
            key = getattr(raw, "key", None)
            if key:
                with contextlib.suppress(Exception):
                    headers["dlq_original_key"] = key.decode()
            log.error("message dead-lettered", topic=topic, reason=reason, consumer=consumer)
            await sink(dlq(topic), msg.body, headers)

    return DeadLetterMiddleware


def consumer_options(group_id: str) -> dict[str, Any]:
    """Subscriber settings every service uses: offsets committed by the dead-letter middleware
    after each message was handled (see OffsetCommitter), read committed."""
    return {
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.MANUAL,
        "isolation_level": "read_committed",
        "max_poll_interval_ms": 300_000,
    }


def envelope_key(event: Envelope[Any]) -> str:
    return str(event.event_id)
