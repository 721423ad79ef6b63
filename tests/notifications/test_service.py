"""The notifications service end to end against real Kafka and MongoDB: award decisions
published to `awards.decisions` reach leaders by webhook, email and the live feed, exactly
once per decision, leader and channel; failures are retried, then dead-lettered."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import TypeAdapter

from shared import topics
from shared.auth import Role, issue_token
from shared.events import (
    DeliveryEvent,
    EventFormat,
    EventRef,
    NotificationDelivered,
    NotificationFailed,
    StandingsUpdated,
    StandingsUpdatedPayload,
    decode_event,
    new_event,
)
from tests.topic_reader import read_records

from .conftest import (
    MailSink,
    Service,
    WebhookReceiver,
    competition,
    granted,
    publish,
    revoked,
    sse_events,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

outcomes: TypeAdapter[Any] = TypeAdapter(DeliveryEvent)

FEED_FIELDS = {
    "award_id",
    "decision_event_id",
    "leader_id",
    "channel",
    "kind",
    "title",
    "body",
    "language",
    "award_type",
    "competition_id",
    "event_id",
    "recipient_name",
    "union_name",
    "rank",
    "at",
}


def key_of(event: Any) -> str:
    return str(event.payload.recipient.recipient_id)


async def test_every_channel_delivers_once_with_outcomes(
    infra: Any,
    service: Service,
    webhook: WebhookReceiver,
    smtp_server: tuple[MailSink, int],
    producer: AIOKafkaProducer,
) -> None:
    mail, _port = smtp_server
    competition_id = unique("cmp")
    leader = unique("committee")
    address = f"{leader}@example.org"
    await service.subscribe(
        leader,
        {
            "name": "竞赛组委会",
            "role": "committee",
            "scope": competition_id,
            "channels": {
                "webhook": f"{webhook.url}/ok/{leader}",
                "email": address,
                "live_feed": True,
            },
            "language": "zh",
        },
    )
    since = quote((datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    decision = granted(competition_id, name="李娜")
    award_id = decision.payload.award_id
    started = time.monotonic()
    await publish(producer, topics.AWARDS_DECISIONS, key_of(decision), decision)

    feed = await sse_events(
        f"{service.url}/feed?since={since}",
        lambda name, data: name == "award" and data["award_id"] == award_id,
        1,
    )
    feed_latency_ms = (time.monotonic() - started) * 1000
    records = await service.settled(award_id, 3)

    # The live feed: every promised field, in Chinese.
    _name, item = feed[0]
    assert FEED_FIELDS <= item.keys()
    assert item["channel"] == "live_feed"
    assert item["kind"] == "granted"
    assert item["leader_id"] == leader
    assert item["recipient_name"] == "李娜"
    assert item["competition_id"] == competition_id
    assert item["event_id"] == decision.payload.event.event_id  # type: ignore[union-attr]
    assert item["rank"] == 1
    assert item["union_name"] == "交通运输工会"
    assert item["title"].startswith("【即时授予】")
    assert item["decision_event_id"] == str(decision.event_id)
    assert feed_latency_ms < 5000, f"feed took {feed_latency_ms:.0f} ms"

    # One record per channel, each delivered at its first attempt.
    assert sorted(r["channel"] for r in records) == ["email", "live_feed", "webhook"]
    for record in records:
        assert record["status"] == "delivered"
        assert record["leader_id"] == leader
        assert record["competition_id"] == competition_id
        assert [a["outcome"] for a in record["attempts"]] == ["delivered"]

    # The webhook: signed with the shared secret, carrying the delivery key.
    hooks = webhook.for_award(award_id)
    assert len(hooks) == 1
    assert hooks[0]["signature_ok"]
    assert hooks[0]["json"]["delivery_key"] == f"{decision.event_id}:{leader}:webhook"
    assert hooks[0]["json"]["recipient"]["name"] == "李娜"

    # The email: to the subscribed address, Chinese subject naming the winner.
    messages = await wait_until(lambda: _async(mail.to(address)))
    assert len(messages) == 1
    assert "李娜" in str(messages[0]["Subject"])
    assert "五一劳动奖章" in messages[0].get_content()

    delivered = await read_records(
        infra.kafka_bootstrap,
        topics.NOTIFICATIONS_DELIVERIES,
        3,
        where=lambda r: outcomes.validate_json(r.value).payload.award_id == award_id,
        timeout=15,
    )
    events = [outcomes.validate_json(r.value) for r in delivered]
    assert len(events) == 3
    assert all(isinstance(e, NotificationDelivered) for e in events)
    assert {e.payload.channel for e in events} == {"webhook", "email", "live_feed"}
    assert all(e.causation_id == str(decision.event_id) for e in events)


async def _async(value: Any) -> Any:
    return value


async def test_failing_webhook_is_retried_then_dead_lettered(
    infra: Any, service: Service, webhook: WebhookReceiver, producer: AIOKafkaProducer
) -> None:
    competition_id = unique("cmp")
    leader = unique("committee")
    await service.subscribe(
        leader,
        {
            "name": "Committee",
            "role": "committee",
            "scope": competition_id,
            "channels": {"webhook": f"{webhook.url}/fail/{leader}"},
            "language": "en",
        },
    )
    decision = granted(competition_id)
    award_id = decision.payload.award_id
    await publish(producer, topics.AWARDS_DECISIONS, key_of(decision), decision)

    [record] = await service.settled(award_id, 1)
    assert record["status"] == "failed"
    assert [a["outcome"] for a in record["attempts"]] == ["transient_error"] * 3
    assert "503" in record["attempts"][-1]["error"]
    assert record["dead_letter"]["topic"] == "awards.decisions.dlq"
    assert "503" in record["dead_letter"]["reason"]
    assert len(webhook.for_award(award_id)) == 3, "three attempts reached the receiver"

    failed = await read_records(
        infra.kafka_bootstrap,
        topics.NOTIFICATIONS_DELIVERIES,
        1,
        where=lambda r: outcomes.validate_json(r.value).payload.award_id == award_id,
        timeout=15,
    )
    assert len(failed) == 1
    outcome = outcomes.validate_json(failed[0].value)
    assert isinstance(outcome, NotificationFailed)
    assert outcome.payload.attempts == 3
    assert "503" in outcome.payload.error

    dead = await read_records(
        infra.kafka_bootstrap,
        topics.dlq(topics.AWARDS_DECISIONS),
        1,
        where=lambda r: decode_event(r.value).event_id == decision.event_id,
        timeout=15,
    )
    assert len(dead) == 1, "the undeliverable decision is dead-lettered, unchanged"
    assert dead[0].key == key_of(decision).encode()
    assert decode_event(dead[0].value) == decision


async def test_a_duplicate_award_event_is_delivered_once(
    service: Service, webhook: WebhookReceiver, producer: AIOKafkaProducer
) -> None:
    competition_id = unique("cmp")
    leader = unique("committee")
    await service.subscribe(
        leader,
        {
            "name": "组委会",
            "role": "committee",
            "scope": competition_id,
            "channels": {"webhook": f"{webhook.url}/ok/{leader}", "live_feed": True},
        },
    )
    decision = granted(competition_id)
    await publish(producer, topics.AWARDS_DECISIONS, key_of(decision), decision)
    await publish(producer, topics.AWARDS_DECISIONS, key_of(decision), decision)
    # Same key, same partition: once the later sentinel is delivered, both copies of the
    # duplicate have been consumed.
    sentinel = granted(competition_id, name="王强")
    sentinel = sentinel.model_copy(update={"payload": sentinel.payload.model_copy(
        update={"recipient": decision.payload.recipient})})  # fmt: skip
    await publish(producer, topics.AWARDS_DECISIONS, key_of(sentinel), sentinel)
    await service.settled(sentinel.payload.award_id, 2)

    records = await service.deliveries(award_id=decision.payload.award_id)
    assert sorted(r["channel"] for r in records) == ["live_feed", "webhook"]
    assert all(r["status"] == "delivered" and len(r["attempts"]) == 1 for r in records)
    assert len(webhook.for_award(decision.payload.award_id)) == 1


async def test_a_revocation_is_notified(
    service: Service, smtp_server: tuple[MailSink, int], producer: AIOKafkaProducer
) -> None:
    mail, _port = smtp_server
    competition_id = unique("cmp")
    leader = unique("chair")
    address = f"{leader}@example.org"
    await service.subscribe(
        leader,
        {
            "name": "Union chair",
            "role": "committee",
            "scope": competition_id,
            "channels": {"email": address, "live_feed": True},
            "language": "en",
        },
    )
    grant = granted(competition_id, name="Zhao Min")
    revocation = revoked(grant)
    since = quote(datetime.now(UTC).isoformat())
    await publish(producer, topics.AWARDS_DECISIONS, key_of(grant), grant)
    await publish(producer, topics.AWARDS_DECISIONS, key_of(revocation), revocation)

    feed = await sse_events(
        f"{service.url}/feed?since={since}",
        lambda name, data: data["award_id"] == grant.payload.award_id,
        2,
    )
    assert [data["kind"] for _name, data in feed] == ["granted", "revoked"]
    revoked_item = feed[1][1]
    assert revoked_item["title"].startswith("[Revoked] ")
    assert revoked_item["rank"] is None
    assert revoked_item["decision_event_id"] == str(revocation.event_id)

    records = await service.settled(grant.payload.award_id, 4)
    assert sorted((r["kind"], r["channel"]) for r in records) == [
        ("granted", "email"),
        ("granted", "live_feed"),
        ("revoked", "email"),
        ("revoked", "live_feed"),
    ]
    messages = await wait_until(lambda: _async(len(mail.to(address)) == 2 and mail.to(address)))
    subjects = sorted(str(m["Subject"]) for m in messages)
    assert subjects[0].startswith("[Immediate award]")
    assert subjects[1].startswith("[Revoked]")


FED = {"name": "x", "role": "federation"}
LIVE = {"live_feed": True}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "role": "chairman", "channels": LIVE}, "role"),
        ({"name": "x", "role": "committee", "channels": LIVE}, "scope"),
        ({**FED, "scope": "c1", "channels": LIVE}, "scope"),
        ({**FED, "channels": {"webhook": "not a url"}}, "channels.webhook"),
        ({**FED, "channels": {"webhook": "ftp://h/x"}}, "channels.webhook"),
        ({**FED, "channels": {"email": "no-at-sign"}}, "channels.email"),
        ({**FED, "channels": {}}, "channels"),
        ({**FED, "channels": {"pager": "1"}}, "channels.pager"),
        ({**FED, "name": "", "channels": LIVE}, "name"),
        ({**FED, "channels": LIVE, "language": "fr"}, "language"),
        ({"role": "federation", "channels": LIVE}, "name"),
    ],
)
async def test_subscription_validation_names_the_field(
    service: Service, body: dict[str, Any], field: str
) -> None:
    async with service.client() as http:
        answer = await http.put(
            f"/subscriptions/{unique('leader')}", json=body, headers=service.admin_headers()
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


async def test_subscriptions_need_an_admin_and_are_listed(service: Service) -> None:
    leader = unique("fed")
    body = {"name": "区总工会主席", "role": "federation", "channels": {"live_feed": True}}
    leader_token = issue_token(service.settings, subject=leader, role=Role.LEADER)
    async with service.client() as http:
        anonymous = await http.put(f"/subscriptions/{leader}", json=body)
        as_leader = await http.put(
            f"/subscriptions/{leader}",
            json=body,
            headers={"Authorization": f"Bearer {leader_token}"},
        )
        stored = await http.put(
            f"/subscriptions/{leader}", json=body, headers=service.admin_headers()
        )
        listed = await http.get("/subscriptions", headers=service.admin_headers())
        own = await http.get("/deliveries", headers={"Authorization": f"Bearer {leader_token}"})
    assert anonymous.status_code == 401
    assert as_leader.status_code == 403
    assert stored.status_code == 200
    assert stored.json() == {
        "leader_id": leader,
        "name": "区总工会主席",
        "role": "federation",
        "scope": None,
        "channels": {"live_feed": True},
        "language": "zh",
    }
    assert stored.json() in listed.json()
    assert own.status_code == 200
    assert all(d["leader_id"] == leader for d in own.json())


async def test_standings_keep_the_latest_per_event_and_stream(
    service: Service, producer: AIOKafkaProducer
) -> None:
    event_id = unique("ev")
    sentinel_id = unique("ev")

    def standings(for_event: str, as_of: datetime, marks: int) -> StandingsUpdated:
        payload = StandingsUpdatedPayload(
            competition=competition(unique("cmp")),
            event=EventRef(
                event_id=for_event, name="焊工", trade="焊工", format=EventFormat.INDIVIDUAL
            ),
            lines=(),
            marks_counted=marks,
            as_of=as_of,
        )
        event = new_event(StandingsUpdated, payload, producer="scoring", correlation_id="s")
        assert isinstance(event, StandingsUpdated)
        return event

    now = datetime.now(UTC)
    await publish(producer, topics.SCORING_STANDINGS, event_id, standings(event_id, now, 5))
    stream = await sse_events(
        f"{service.url}/standings/stream",
        lambda name, data: name == "standings" and data["event_id"] == event_id,
        1,
    )
    assert stream[0][1]["event_name"] == "焊工"
    assert stream[0][1]["marks_counted"] == 5

    older = standings(event_id, now - timedelta(minutes=1), 3)
    await publish(producer, topics.SCORING_STANDINGS, event_id, older)
    # Same key, same partition: once the sentinel is stored, the older message was consumed.
    await publish(producer, topics.SCORING_STANDINGS, event_id, standings(sentinel_id, now, 1))

    async def views() -> dict[str, dict[str, Any]] | None:
        async with httpx.AsyncClient(base_url=service.url) as http:
            found = {v["event_id"]: v for v in (await http.get("/standings")).json()}
        return found if sentinel_id in found else None

    latest = await wait_until(views)
    assert latest[event_id]["marks_counted"] == 5, "older standings must not replace newer"
