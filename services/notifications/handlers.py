"""Kafka consumers and use cases of the notifications service."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import TypeAdapter

from shared import topics
from shared.auth import Principal
from shared.events import (
    AwardGranted,
    AwardRevoked,
    DecisionEvent,
    NotificationDelivered,
    NotificationFailed,
    StandingsEvent,
    StandingsUpdated,
    utc_now,
)
from shared.http import audit
from shared.kafka import consumer_options, strict_decoder
from shared.logging import correlation
from shared.mongo import Session
from shared.runtime import ServiceRuntime

from .domain import Decision, DeliveryRecord, Subscription, recipients_for
from .repository import NotificationsRepository


async def accept_decision(
    runtime: ServiceRuntime, repo: NotificationsRepository, decision: Decision
) -> bool:
    """Store the decision and one delivery per plan, exactly once per decision event.

    Subscriptions are read inside the same transaction, so the plan reflects one consistent
    snapshot of who was subscribed when the decision arrived.
    """

    async def work(session: Session) -> None:
        now = utc_now()
        await repo.save_decision(decision, now, session)
        plans = recipients_for(decision, await repo.subscriptions(session))
        records = [DeliveryRecord.start(plan) for plan in plans]
        competition_id = decision.payload.competition.competition_id
        await repo.add_deliveries(records, competition_id, now, session)

    return await runtime.consume_once(decision, work)


async def accept_standings(
    runtime: ServiceRuntime, repo: NotificationsRepository, event: StandingsUpdated
) -> bool:
    async def work(session: Session) -> None:
        await repo.save_standings(event, session)

    return await runtime.consume_once(event, work)


async def save_subscription(
    runtime: ServiceRuntime,
    repo: NotificationsRepository,
    subscription: Subscription,
    principal: Principal,
) -> None:
    async def work(session: Session) -> None:
        await repo.save_subscription(subscription, utc_now(), session)
        await audit(
            runtime,
            session,
            principal,
            "subscription.put",
            subscription.leader_id,
            {
                "role": subscription.role.value,
                "scope": subscription.scope,
                "channels": sorted(subscription.channels),
                "language": subscription.language,
            },
        )

    await runtime.transact(work)


def register_handlers(
    runtime: ServiceRuntime,
    repo: NotificationsRepository,
    *,
    on_new_deliveries: Callable[[], None],
) -> None:
    """Subscribe to award decisions and standings; declare what the service publishes."""

    @runtime.broker.subscriber(
        topics.AWARDS_DECISIONS,
        decoder=strict_decoder(TypeAdapter(DecisionEvent)),
        title="notifications:awards.decisions",
        **consumer_options(runtime.group_id("decisions")),
    )
    async def on_decision(event: AwardGranted | AwardRevoked) -> None:
        with correlation(event.correlation_id, event_id=str(event.event_id)):
            if await accept_decision(runtime, repo, event):
                on_new_deliveries()

    @runtime.broker.subscriber(
        topics.SCORING_STANDINGS,
        decoder=strict_decoder(TypeAdapter(StandingsEvent)),
        title="notifications:scoring.standings",
        **consumer_options(runtime.group_id("standings")),
    )
    async def on_standings(event: StandingsUpdated) -> None:
        with correlation(event.correlation_id, event_id=str(event.event_id)):
            await accept_standings(runtime, repo, event)

    runtime.broker.publisher(
        topics.NOTIFICATIONS_DELIVERIES,
        title="notifications.deliveries:NotificationDelivered",
        schema=NotificationDelivered,
    )
    runtime.broker.publisher(
        topics.NOTIFICATIONS_DELIVERIES,
        title="notifications.deliveries:NotificationFailed",
        schema=NotificationFailed,
    )
    runtime.broker.publisher(
        topics.dlq(topics.AWARDS_DECISIONS),
        title="awards.decisions.dlq:undeliverable decision",
        schema=AwardGranted,
    )
