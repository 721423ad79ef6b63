"""Channel adapters against real servers on 127.0.0.1: an HTTP webhook receiver (Starlette on
uvicorn) that verifies signatures, an SMTP server (aiosmtpd), and the in-process live feed.

No Kafka or MongoDB is involved: these tests prove what crosses the wire to leaders.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage

import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.notifications.channels import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryError,
    EmailChannel,
    LiveFeed,
    LiveFeedChannel,
    LiveFeedItem,
    WebhookChannel,
    verify_signature,
)
from services.notifications.domain import (
    DeliveryPlan,
    DeliveryRecord,
    LeaderRole,
    RetryPolicy,
    Subscription,
    recipients_for,
)
from services.notifications.templates import RenderedMessage, render_message
from shared.events import (
    AwardGranted,
    AwardGrantedPayload,
    AwardReason,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    EventFormat,
    EventRef,
    Member,
    Recipient,
    RecipientKind,
)

SECRET = "integration-webhook-secret-0123"
NOW = datetime(2026, 5, 1, 2, 30, tzinfo=UTC)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def award_granted() -> AwardGranted:
    return AwardGranted(
        event_id=uuid.uuid4(),
        occurred_at=NOW,
        producer="awards",
        correlation_id="corr-int",
        payload=AwardGrantedPayload(
            award_id=f"award-{uuid.uuid4().hex[:8]}",
            certificate_no="BH-2026-0001",
            award_type=AwardType.MAY_DAY_LABOUR_MEDAL,
            competition=CompetitionRef(
                competition_id="comp-2026-binhai",
                name="滨海新区",
                year=2026,
                level=CompetitionLevel.DISTRICT,
            ),
            event=EventRef(
                event_id="ev-forklift",
                name="叉车司机竞赛",
                trade="叉车司机",
                format=EventFormat.INDIVIDUAL,
            ),
            recipient=Recipient(
                kind=RecipientKind.PERSON,
                recipient_id="w-1",
                name="张三",
                union_id="union-devzone",
                union_name="开发区工会",
                members=(Member(worker_id="w-1", name="张三", front_line=True),),
            ),
            rank=1,
            reason=AwardReason(rule="may_day.rank_1", facts={"rank": 1}),
            result_version=1,
            publicity_ends_on=date(2026, 5, 8),
            granted_at=NOW,
        ),
    )


def plan_for(
    channel: str, address: str, language: str = "zh"
) -> tuple[DeliveryPlan, RenderedMessage]:
    decision = award_granted()
    fields = {"webhook": {"webhook_url": address}, "email": {"email": address}, "live_feed": {}}
    leader = Subscription(
        leader_id="leader-fed",
        name="王主席",
        role=LeaderRole.FEDERATION,
        channels=frozenset({channel}),
        language=language,
        **fields[channel],
    )
    (plan,) = recipients_for(decision, [leader])
    return plan, render_message(decision, plan.language)


# --- a real webhook receiver ----------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


@dataclass
class WebhookReceiver:
    """Behaves like a leader's system: checks the signature first, then answers per route."""

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        signature_ok = verify_signature(SECRET, body, request.headers.get(SIGNATURE_HEADER))
        path = request.url.path
        self.requests.append(Received(path, dict(request.headers), body, signature_ok))
        if not signature_ok:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        delivery = request.headers[DELIVERY_HEADER]
        if path == "/flaky":
            # Fails the first time it sees a delivery key, succeeds on the retry.
            seen = [r for r in self.on("/flaky") if r.headers[DELIVERY_HEADER.lower()] == delivery]
            if len(seen) == 1:
                return Response("upstream busy", status_code=500)
        elif path == "/reject":
            return JSONResponse({"error": "unknown award type"}, status_code=400)
        elif path == "/throttle":
            return Response("slow down", status_code=429, headers={"Retry-After": "1"})
        elif path == "/slow":
            await asyncio.wait_for(self.release_slow.wait(), timeout=10)
        return JSONResponse({"accepted": delivery})


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    state = WebhookReceiver()
    app = Starlette(routes=[Route("/{name}", state.handle, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    state.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "webhook receiver did not start"
    yield state
    state.release_slow.set()
    server.should_exit = True
    await asyncio.wait_for(serving, timeout=10)
    sock.close()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_webhook_delivers_signed_json_with_idempotency_key(
    receiver: WebhookReceiver, http_client: httpx.AsyncClient
) -> None:
    plan, message = plan_for("webhook", f"{receiver.base_url}/ok")
    await WebhookChannel(SECRET, 5, http_client).send(plan, message)

    (request,) = [
        r for r in receiver.on("/ok") if r.headers["x-jinchui-delivery"] == plan.delivery_key
    ]
    assert request.signature_ok
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert abs(int(request.headers[TIMESTAMP_HEADER.lower()]) - datetime.now(UTC).timestamp()) < 60
    document = json.loads(request.body.decode("utf-8"))
    assert (
        document["title"]
        == "【即时授予】滨海新区五一劳动奖章：张三（叉车司机竞赛第一名，开发区工会）"
    )
    assert document["language"] == "zh"
    assert document["award_id"] == plan.award_id
    assert document["recipient"]["union_name"] == "开发区工会"
    assert document["delivery_key"] == plan.delivery_key
    assert {k: v for k, v in document.items() if k not in ("delivery_key", "sent_at")} == (
        message.document
    )
    # Chinese travels as UTF-8, not \\u escapes, and the signature covers those exact bytes.
    assert "张三".encode() in request.body


async def test_webhook_500_is_transient_and_the_retry_succeeds(
    receiver: WebhookReceiver, http_client: httpx.AsyncClient
) -> None:
    plan, message = plan_for("webhook", f"{receiver.base_url}/flaky")
    channel = WebhookChannel(SECRET, 5, http_client)
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.05)
    rng = random.Random(3)
    record = DeliveryRecord.start(plan)

    with pytest.raises(DeliveryError) as failure:
        await channel.send(plan, message)
    assert failure.value.transient
    assert "HTTP 500" in failure.value.reason and "upstream busy" in failure.value.reason
    record, next_at = record.record_failure(
        datetime.now(UTC), failure.value.reason, policy, rng, transient=failure.value.transient
    )
    assert next_at is not None and record.status == "pending"

    await channel.send(plan, message)
    record = record.record_success(datetime.now(UTC))

    assert record.status == "delivered"
    assert [a.outcome for a in record.attempts] == ["transient_error", "delivered"]
    attempts = [
        r for r in receiver.on("/flaky") if r.headers["x-jinchui-delivery"] == plan.delivery_key
    ]
    assert len(attempts) == 2 and all(r.signature_ok for r in attempts)


async def test_webhook_400_is_a_permanent_failure(
    receiver: WebhookReceiver, http_client: httpx.AsyncClient
) -> None:
    plan, message = plan_for("webhook", f"{receiver.base_url}/reject")
    with pytest.raises(DeliveryError) as failure:
        await WebhookChannel(SECRET, 5, http_client).send(plan, message)
    assert not failure.value.transient
    assert "HTTP 400" in failure.value.reason and "unknown award type" in failure.value.reason
    record, next_at = DeliveryRecord.start(plan).record_failure(
        NOW, failure.value.reason, RetryPolicy(), random.Random(0), transient=False
    )
    assert next_at is None and record.status == "failed"


async def test_webhook_429_is_transient(
    receiver: WebhookReceiver, http_client: httpx.AsyncClient
) -> None:
    plan, message = plan_for("webhook", f"{receiver.base_url}/throttle")
    with pytest.raises(DeliveryError) as failure:
        await WebhookChannel(SECRET, 5, http_client).send(plan, message)
    assert failure.value.transient and "HTTP 429" in failure.value.reason


async def test_receiver_rejects_a_wrongly_signed_webhook_permanently(
    receiver: WebhookReceiver, http_client: httpx.AsyncClient
) -> None:
    plan, message = plan_for("webhook", f"{receiver.base_url}/ok")
    with pytest.raises(DeliveryError) as failure:
        await WebhookChannel("not-the-shared-secret", 5, http_client).send(plan, message)
    assert not failure.value.transient and "HTTP 401" in failure.value.reason
    (request,) = [
        r for r in receiver.on("/ok") if r.headers["x-jinchui-delivery"] == plan.delivery_key
    ]
    assert not request.signature_ok


async def test_webhook_timeout_is_transient(
    receiver: WebhookReceiver, http_client: httpx.AsyncClient
) -> None:
    plan, message = plan_for("webhook", f"{receiver.base_url}/slow")
    started = asyncio.get_running_loop().time()
    with pytest.raises(DeliveryError) as failure:
        await WebhookChannel(SECRET, 0.3, http_client).send(plan, message)
    assert failure.value.transient and "timed out" in failure.value.reason
    assert asyncio.get_running_loop().time() - started < 3


async def test_webhook_connection_refused_is_transient(http_client: httpx.AsyncClient) -> None:
    plan, message = plan_for("webhook", f"http://127.0.0.1:{free_port()}/hook")
    with pytest.raises(DeliveryError) as failure:
        await WebhookChannel(SECRET, 2, http_client).send(plan, message)
    assert failure.value.transient and "ConnectError" in failure.value.reason


# --- a real SMTP server ---------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps accepted mail, refuses nobody@ (550) and busy@ (450)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        if address.startswith("busy@"):
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer(port, mailbox)
    finally:
        controller.stop()


def parsed(envelope: Envelope) -> EmailMessage:
    content = envelope.content
    assert isinstance(content, bytes)
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_email_arrives_in_chinese_with_a_decodable_subject(smtp_server: SmtpServer) -> None:
    plan, message = plan_for("email", "wang@example.org")
    channel = EmailChannel("127.0.0.1", smtp_server.port, "jinchui@example.org", timeout_s=5)
    await channel.send(plan, message)

    (envelope,) = [
        e for e in smtp_server.mailbox.envelopes if plan.delivery_key.encode() in (e.content or b"")
    ]
    assert envelope.mail_from == "jinchui@example.org"
    assert envelope.rcpt_tos == ["wang@example.org"]
    raw = envelope.content
    assert isinstance(raw, bytes)
    # The subject travels RFC 2047-encoded (ASCII on the wire) and decodes to the Chinese title.
    subject_line = next(line for line in raw.splitlines() if line.startswith(b"Subject:"))
    assert b"=?utf-8?" in subject_line.lower()
    received = parsed(envelope)
    assert (
        received["Subject"]
        == "【即时授予】滨海新区五一劳动奖章：张三（叉车司机竞赛第一名，开发区工会）"
    )
    assert received["To"] == "wang@example.org"
    assert received[DELIVERY_HEADER] == plan.delivery_key
    assert received["Message-ID"] == f"<{plan.notification_id}@jinchui>"
    assert received.get_content_charset() == "utf-8"
    assert received["Content-Transfer-Encoding"] == "base64"
    assert received["Content-Language"] == "zh-CN"
    assert received.get_content().rstrip("\n") == message.body
    assert "公示截止：2026年5月8日" in received.get_content()


async def test_english_email(smtp_server: SmtpServer) -> None:
    plan, message = plan_for("email", "li@example.org", language="en")
    await EmailChannel("127.0.0.1", smtp_server.port, "jinchui@example.org").send(plan, message)
    (envelope,) = [e for e in smtp_server.mailbox.envelopes if e.rcpt_tos == ["li@example.org"]]
    received = parsed(envelope)
    assert received["Subject"].startswith("[Immediate award] May Day Labour Medal — 张三 (1st,")
    assert received["Content-Language"] == "en"


async def test_refused_recipient_is_a_permanent_failure(smtp_server: SmtpServer) -> None:
    plan, message = plan_for("email", "nobody@example.org")
    with pytest.raises(DeliveryError) as failure:
        await EmailChannel("127.0.0.1", smtp_server.port, "jinchui@example.org").send(plan, message)
    assert not failure.value.transient and "No such user" in failure.value.reason


async def test_temporarily_refused_recipient_is_transient(smtp_server: SmtpServer) -> None:
    plan, message = plan_for("email", "busy@example.org")
    with pytest.raises(DeliveryError) as failure:
        await EmailChannel("127.0.0.1", smtp_server.port, "jinchui@example.org").send(plan, message)
    assert failure.value.transient and "busy" in failure.value.reason


async def test_unreachable_smtp_server_is_transient() -> None:
    plan, message = plan_for("email", "wang@example.org")
    channel = EmailChannel("127.0.0.1", free_port(), "jinchui@example.org", timeout_s=2)
    with pytest.raises(DeliveryError) as failure:
        await channel.send(plan, message)
    assert failure.value.transient


# --- live feed ------------------------------------------------------------------------------


def feed_item(number: int, leader_id: str = "leader-fed") -> LiveFeedItem:
    return LiveFeedItem(
        delivery_key=f"e{number}:{leader_id}:live_feed",
        award_id=f"award-{number}",
        decision_event_id=f"e{number}",
        leader_id=leader_id,
        kind="granted",
        language="zh",
        title=f"第{number}条",
        body="",
        published_at=NOW,
        document={},
    )


async def test_live_feed_fans_out_to_every_subscriber() -> None:
    feed = LiveFeed(max_queue=10)
    first, second = feed.subscribe(), feed.subscribe()
    plan, message = plan_for("live_feed", "")
    await LiveFeedChannel(feed).send(plan, message)
    feed.publish(feed_item(2))
    feed.close()

    got_first = [item async for item in first]
    got_second = [item async for item in second]
    assert [i.award_id for i in got_first] == [plan.award_id, "award-2"]
    assert got_first == got_second
    assert got_first[0].title == message.title and got_first[0].delivery_key == plan.delivery_key
    assert (first.dropped, second.dropped, feed.dropped_total) == (0, 0, 0)


async def test_slow_subscriber_loses_its_oldest_items_and_counts_them() -> None:
    feed = LiveFeed(max_queue=100)
    fast = feed.subscribe()
    slow = feed.subscribe(max_queue=3)
    received_fast: list[LiveFeedItem] = []

    async def read_fast() -> None:
        async for item in fast:
            received_fast.append(item)

    reader = asyncio.create_task(read_fast())
    for number in range(1, 11):
        feed.publish(feed_item(number))
        await asyncio.sleep(0)  # the fast browser keeps up; the slow one reads nothing
    assert slow.backlog == 3
    feed.close()
    await asyncio.wait_for(reader, timeout=5)

    assert [i.award_id for i in received_fast] == [f"award-{n}" for n in range(1, 11)]
    assert [i.award_id async for i in slow] == ["award-8", "award-9", "award-10"]
    assert (fast.dropped, slow.dropped, feed.dropped_total) == (0, 7, 7)
    assert feed.published == 10


async def test_live_feed_subscription_for_one_leader_and_unsubscribe() -> None:
    feed = LiveFeed()
    async with feed.subscribe(leader_id="leader-a") as mine:
        assert feed.subscriber_count == 1
        feed.publish(feed_item(1, "leader-b"))
        feed.publish(feed_item(2, "leader-a"))
        item = await asyncio.wait_for(mine.__anext__(), timeout=1)
        assert item.award_id == "award-2" and mine.backlog == 0
    assert feed.subscriber_count == 0
    feed.publish(feed_item(3, "leader-a"))  # nobody listens: nothing queued, nothing dropped
    assert feed.dropped_total == 0


async def test_closing_a_subscription_wakes_a_waiting_reader() -> None:
    feed = LiveFeed()
    subscription = feed.subscribe()

    async def drain() -> list[LiveFeedItem]:
        return [item async for item in subscription]

    reader = asyncio.create_task(drain())
    await asyncio.sleep(0.01)
    subscription.close()
    assert await asyncio.wait_for(reader, timeout=1) == []
