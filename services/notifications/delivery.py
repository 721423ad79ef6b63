"""The delivery worker: claims due deliveries, sends them, records every attempt.

Flow of one delivery:
1. claim: an atomic find_one_and_update sets a lease (token + expiry) on the most overdue
   pending delivery, so two replicas never send the same delivery at once; a crashed
   worker's lease expires and another replica takes the delivery over.
2. render the stored decision in the subscription's language and send it on the channel.
   The live feed has nothing to send over the wire: its delivery *is* the feed document
   written in step 3 (every replica's change stream then streams it to browsers).
3. settle, in one transaction: the attempt and new status, plus
   - delivered: the `NotificationDelivered` outcome (and the feed document for live_feed);
   - retry: `next_attempt_at` from the RetryPolicy (the worker also sets a timer for it);
   - failed (permanent error or last attempt): the `NotificationFailed` outcome and a
     dead-letter record on `awards.decisions.dlq`.

Dead-letter record: the outbox carries no Kafka headers, so the record is the original
decision envelope unchanged (keyed by recipient id, as on `awards.decisions`), and the
reason lives in the delivery document (`dead_letter: {reason, topic, at}`, shown by
GET /deliveries) and in the `NotificationFailed` event's `error`, which shares the decision
event id. One decision may be dead-lettered more than once (once per failed leader/channel).

The hot path has no polling: the consumer wakes the worker right after its commit; the poll
interval is only a safety net (a missed wake-up, a lease expiring, another replica's work).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared import topics
from shared.events import (
    NotificationDelivered,
    NotificationFailed,
    NotificationOutcomePayload,
    new_event,
    utc_now,
)
from shared.logging import correlation, get_logger
from shared.mongo import Session
from shared.runtime import ServiceRuntime

from .channels import Channel, DeliveryError, LiveFeedItem
from .domain import ChannelName, Decision, DeliveryRecord, RetryPolicy, UniformSource
from .repository import ClaimedDelivery, NotificationsRepository
from .templates import RenderedMessage, render_message

log = get_logger(__name__)

DECISIONS_DLQ = topics.dlq(topics.AWARDS_DECISIONS)


@dataclass(frozen=True)
class WorkerConfig:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval_s: float = 2.0
    # Longer than any channel's timeout, so a live worker never loses a lease mid-send.
    lease_s: float = 60.0
    max_in_flight: int = 32
    webhook_timeout_s: float = 5.0
    email_timeout_s: float = 10.0


class DeliveryWorker:
    def __init__(
        self,
        runtime: ServiceRuntime,
        repo: NotificationsRepository,
        channels: Mapping[ChannelName, Channel],
        config: WorkerConfig,
        *,
        rng: UniformSource | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._runtime = runtime
        self._repo = repo
        self._channels = channels
        self._config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._stopping = False

    def wake(self) -> None:
        """Call after committing new deliveries: they are sent without waiting for a poll."""
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name="notifications-delivery-worker")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
            self._loop_task = None
        # Let sends in progress settle (bounded by the channel timeouts); a cancelled one
        # keeps its lease until expiry, then another replica retries it.
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self._config.webhook_timeout_s + 1)
        for task in self._in_flight:
            task.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                while await self._claim_and_dispatch():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("delivery claim failed; will retry", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._config.poll_interval_s)

    async def _claim_and_dispatch(self) -> bool:
        await self._slots.acquire()
        try:
            claimed = await self._repo.claim_due(
                self._clock(), uuid.uuid4().hex, timedelta(seconds=self._config.lease_s)
            )
        except BaseException:
            self._slots.release()
            raise
        if claimed is None:
            self._slots.release()
            return False
        task = asyncio.create_task(self._process(claimed))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return True

    async def _process(self, claimed: ClaimedDelivery) -> None:
        try:
            await self.deliver(claimed)
        except Exception as exc:
            # Mongo trouble while settling: the lease expires and the delivery is retried.
            log.error(
                "delivery could not be settled", key=claimed.record.delivery_key, error=str(exc)
            )
        finally:
            self._slots.release()

    async def deliver(self, claimed: ClaimedDelivery) -> None:
        record = claimed.record
        plan = record.plan
        decision = await self._repo.decision(plan.decision_event_id)
        if decision is None:  # cannot happen: stored in the transaction that created it
            log.error("delivery without its decision", key=plan.delivery_key)
            return
        with correlation(decision.correlation_id, delivery_key=plan.delivery_key):
            message = render_message(decision, plan.language)
            error: DeliveryError | None = None
            if plan.channel != "live_feed":
                try:
                    await self._channels[plan.channel].send(plan, message)
                except DeliveryError as exc:
                    error = exc
                except Exception as exc:  # an adapter bug must not lose the delivery
                    error = DeliveryError(transient=True, reason=f"{type(exc).__name__}: {exc}")
            now = self._clock()
            if error is None:
                await self._settle_delivered(claimed, decision, message, now)
            else:
                await self._settle_failed(claimed, decision, error, now)

    async def _settle_delivered(
        self,
        claimed: ClaimedDelivery,
        decision: Decision,
        message: RenderedMessage,
        now: datetime,
    ) -> None:
        record = claimed.record.record_success(now)
        plan = record.plan

        async def work(session: Session) -> None:
            if not await self._repo.save_attempt(claimed, record, now, session):
                return  # lease lost: the worker that took over settles it
            if plan.channel == "live_feed":
                item = LiveFeedItem(
                    delivery_key=plan.delivery_key,
                    award_id=plan.award_id,
                    decision_event_id=plan.decision_event_id,
                    leader_id=plan.leader_id,
                    kind=message.kind,
                    language=message.language,
                    title=message.title,
                    body=message.body,
                    published_at=now,
                    document=message.document,
                )
                await self._repo.add_feed_item(item, session)
            await self._emit_outcome(session, NotificationDelivered, record, decision, now)

        await self._runtime.transact(work)
        log.info("notification delivered", channel=plan.channel, leader_id=plan.leader_id)

    async def _settle_failed(
        self, claimed: ClaimedDelivery, decision: Decision, error: DeliveryError, now: datetime
    ) -> None:
        record, next_at = claimed.record.record_failure(
            now, error.reason, self._config.retry, self._rng, transient=error.transient
        )
        plan = record.plan

        async def work(session: Session) -> None:
            dead_letter = None
            if next_at is None:
                dead_letter = {"topic": DECISIONS_DLQ, "reason": error.reason, "at": now}
            if not await self._repo.save_attempt(
                claimed, record, now, session, dead_letter=dead_letter
            ):
                return
            if next_at is None:
                await self._emit_outcome(session, NotificationFailed, record, decision, now)
                await self._runtime.outbox.add(
                    session,
                    DECISIONS_DLQ,
                    decision.payload.recipient.recipient_id,
                    decision,
                    headers={
                        "dlq_reason": f"{plan.channel} delivery to {plan.leader_id} failed "
                        f"after {len(record.attempts)} attempts: {error.reason}"[:4000],
                        "dlq_error_type": "DeliveryFailed",
                        "dlq_original_topic": topics.AWARDS_DECISIONS,
                        "dlq_consumer": "notifications",
                        "dlq_attempts": str(len(record.attempts)),
                    },
                )

        await self._runtime.transact(work)
        if next_at is None:
            log.warning(
                "notification failed for good",
                channel=plan.channel,
                leader_id=plan.leader_id,
                attempts=len(record.attempts),
                error=error.reason,
            )
        else:
            log.info("notification will be retried", channel=plan.channel, error=error.reason)
            self._wake_at(next_at)

    def _wake_at(self, moment: datetime) -> None:
        delay = max(0.0, (moment - self._clock()).total_seconds())
        timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)
        self._timers.add(timer)

    def _timer_fired(self) -> None:
        now = asyncio.get_running_loop().time()
        self._timers = {timer for timer in self._timers if timer.when() > now}
        self._wake.set()

    async def _emit_outcome(
        self,
        session: Session,
        kind: type[NotificationDelivered] | type[NotificationFailed],
        record: DeliveryRecord,
        decision: Decision,
        now: datetime,
    ) -> None:
        plan = record.plan
        payload = NotificationOutcomePayload(
            notification_id=plan.notification_id,
            award_id=plan.award_id,
            decision_event_id=plan.decision_event_id,
            leader_id=plan.leader_id,
            channel=plan.channel,
            attempts=len(record.attempts),
            error=record.last_error if record.status == "failed" else "",
            at=now,
        )
        envelope = new_event(
            kind,  # type: ignore[arg-type]
            payload,
            producer="notifications",
            correlation_id=decision.correlation_id,
            causation_id=str(decision.event_id),
        )
        # Keyed by award: every outcome about one award stays in order on one partition.
        await self._runtime.outbox.add(
            session, topics.NOTIFICATIONS_DELIVERIES, plan.award_id, envelope
        )
