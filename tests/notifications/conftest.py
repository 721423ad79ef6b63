"""Fixtures for the notifications service against real Kafka and MongoDB: the service under
uvicorn on a free port, a webhook receiver (uvicorn) that verifies signatures, an SMTP server
(aiosmtpd), a Kafka producer, and builders for award decisions."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.notifications.app import create_app
from services.notifications.channels import SIGNATURE_HEADER, verify_signature
from services.notifications.delivery import WorkerConfig
from services.notifications.domain import RetryPolicy
from shared.auth import Role, issue_token
from shared.events import (
    AwardGranted,
    AwardGrantedPayload,
    AwardReason,
    AwardRevoked,
    AwardRevokedPayload,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    EventFormat,
    EventRef,
    Recipient,
    RecipientKind,
    encode_event,
    new_event,
    utc_now,
)
from shared.settings import Settings

WEBHOOK_SECRET = "notifications-test-webhook-secret"
# Small delays: a failing webhook exhausts its three attempts in well under a second.
TEST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


class UvicornThread:
    """An ASGI app served by uvicorn as a task of the running loop, on a free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> UvicornThread:
        self._task = asyncio.create_task(self.server.serve())
        await wait_until(self._started, timeout=60)
        return self

    async def _started(self) -> bool:
        if self._task is not None and self._task.done():
            self._task.result()  # surface a startup failure
        return bool(self.server.started)

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


# --- webhook receiver -----------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """Answers /ok/... with 200 and /fail/... with 503; records what it got and whether the
    signature verified."""

    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            body = await request.body()
            self.received.append(
                {
                    "path": request.url.path,
                    "headers": dict(request.headers),
                    "json": json.loads(body),
                    "signature_ok": verify_signature(
                        WEBHOOK_SECRET, body, request.headers.get(SIGNATURE_HEADER)
                    ),
                }
            )
            failing = request.url.path.startswith("/fail/")
            return Response(status_code=503 if failing else 200)

        return Starlette(routes=[Route("/{rest:path}", receive, methods=["POST"])])

    def for_award(self, award_id: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["json"].get("award_id") == award_id]


class MailSink:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[MailSink, int]]:
    sink = MailSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    async with UvicornThread(receiver.app()) as server:
        receiver.url = server.url
        yield receiver


@dataclass
class Service:
    url: str
    app: FastAPI
    settings: Settings

    def admin_headers(self) -> dict[str, str]:
        token = issue_token(self.settings, subject="test-admin", role=Role.ADMIN, scopes=["*"])
        return {"Authorization": f"Bearer {token}"}

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10.0)

    async def subscribe(self, leader_id: str, body: dict[str, Any]) -> None:
        async with self.client() as http:
            answer = await http.put(
                f"/subscriptions/{leader_id}", json=body, headers=self.admin_headers()
            )
        assert answer.status_code == 200, answer.text

    async def deliveries(self, **params: str) -> list[dict[str, Any]]:
        async with self.client() as http:
            answer = await http.get("/deliveries", params=params, headers=self.admin_headers())
        assert answer.status_code == 200, answer.text
        result: list[dict[str, Any]] = answer.json()
        return result

    async def settled(self, award_id: str, count: int) -> list[dict[str, Any]]:
        """Wait until `count` deliveries of the award are delivered or failed."""

        async def check() -> list[dict[str, Any]] | None:
            found = await self.deliveries(award_id=award_id)
            done = [d for d in found if d["status"] != "pending"]
            return found if len(done) >= count else None

        result: list[dict[str, Any]] = await wait_until(check)
        return result


@pytest.fixture(scope="module")
async def service(
    infra: Any, smtp_server: tuple[MailSink, int], webhook: WebhookReceiver
) -> AsyncIterator[Service]:
    settings = infra.settings(
        mongodb_db_prefix="t" + uuid.uuid4().hex[:8],
        webhook_secret=WEBHOOK_SECRET,
        smtp_port=smtp_server[1],
        smtp_sender="jinchui-test@example.org",
    )
    app = create_app(settings, WorkerConfig(retry=TEST_RETRY, poll_interval_s=0.5))
    async with UvicornThread(app) as server:
        yield Service(server.url, app, settings)


@pytest.fixture(scope="module")
async def producer(infra: Any) -> AsyncIterator[AIOKafkaProducer]:
    kafka = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


async def publish(producer: AIOKafkaProducer, topic: str, key: str, event: Any) -> None:
    await producer.send_and_wait(topic, encode_event(event), key=key.encode())


async def sse_events(
    url: str, wanted: Callable[[str, dict[str, Any]], bool], count: int, timeout: float = 15
) -> list[tuple[str, dict[str, Any]]]:
    """Read server-sent events from `url` until `count` wanted ones arrived."""
    found: list[tuple[str, dict[str, Any]]] = []

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5)) as http,
            http.stream("GET", url, headers={"Accept": "text/event-stream"}) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: ") :])
                    if wanted(name, data):
                        found.append((name, data))
                        if len(found) >= count:
                            return

    await asyncio.wait_for(read(), timeout)
    return found


# --- award decisions ------------------------------------------------------------------------


def competition(competition_id: str) -> CompetitionRef:
    return CompetitionRef(
        competition_id=competition_id,
        name="2026年区职工技能大赛",
        year=2026,
        level=CompetitionLevel.DISTRICT,
    )


def recipient(name: str = "张伟") -> Recipient:
    return Recipient(
        kind=RecipientKind.PERSON,
        recipient_id="w-" + uuid.uuid4().hex[:8],
        name=name,
        union_id="u-transport",
        union_name="交通运输工会",
    )


def granted(competition_id: str, name: str = "张伟", rank: int = 1) -> AwardGranted:
    payload = AwardGrantedPayload(
        award_id="a-" + uuid.uuid4().hex[:10],
        certificate_no="CERT-" + uuid.uuid4().hex[:6],
        award_type=AwardType.MAY_DAY_LABOUR_MEDAL,
        competition=competition(competition_id),
        event=EventRef(
            event_id="ev-" + uuid.uuid4().hex[:6],
            name="叉车",
            trade="叉车司机",
            format=EventFormat.INDIVIDUAL,
        ),
        recipient=recipient(name),
        rank=rank,
        reason=AwardReason(rule="may_day.rank_1", facts={"rank": rank}),
        result_version=1,
        publicity_ends_on=date(2026, 5, 8),
        granted_at=datetime(2026, 5, 1, 2, 30, tzinfo=UTC),
    )
    event = new_event(
        AwardGranted, payload, producer="awards", correlation_id="c-" + payload.award_id
    )
    assert isinstance(event, AwardGranted)
    return event


def revoked(grant: AwardGranted) -> AwardRevoked:
    g = grant.payload
    payload = AwardRevokedPayload(
        award_id=g.award_id,
        certificate_no=g.certificate_no,
        award_type=g.award_type,
        competition=g.competition,
        event=g.event,
        recipient=g.recipient,
        reason=AwardReason(rule="amendment.no_longer_rank_1", facts={"version": 2}),
        result_version=2,
        revoked_at=utc_now(),
    )
    event = new_event(
        AwardRevoked,
        payload,
        producer="awards",
        correlation_id=grant.correlation_id,
        causation_id=str(grant.event_id),
    )
    assert isinstance(event, AwardRevoked)
    return event


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
