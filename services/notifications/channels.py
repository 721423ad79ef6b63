"""Channel adapters: webhook (HMAC-signed JSON), email (SMTP) and the in-process live feed.

Every adapter does one thing — hand one rendered message to one address — and reports failure
as `DeliveryError(transient, reason)`. The delivery state machine (domain.py) decides what a
failure means for retries; adapters only classify: could trying again help?
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import aiosmtplib
import httpx
from pydantic import BaseModel, ConfigDict

from shared.events import utc_now

from .domain import DecisionKind, DeliveryPlan, Language
from .templates import RenderedMessage

SIGNATURE_HEADER = "X-Jinchui-Signature"
DELIVERY_HEADER = "X-Jinchui-Delivery"
TIMESTAMP_HEADER = "X-Jinchui-Timestamp"
_SIGNATURE_SCHEME = "sha256="

# Request Timeout and Too Many Requests say "later", not "never".
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


class DeliveryError(Exception):
    """A channel could not deliver. `transient`: a later attempt may succeed."""

    def __init__(self, *, transient: bool, reason: str) -> None:
        super().__init__(reason)
        self.transient = transient
        self.reason = reason

    def __repr__(self) -> str:
        return f"DeliveryError(transient={self.transient!r}, reason={self.reason!r})"


class Channel(Protocol):
    async def send(self, plan: DeliveryPlan, message: RenderedMessage) -> None: ...


# --- webhook --------------------------------------------------------------------------------


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header value: 'sha256=' + hex HMAC-SHA256 of the raw body."""
    digest = hmac.new(_as_bytes(secret), body, hashlib.sha256).hexdigest()
    return _SIGNATURE_SCHEME + digest


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """For receivers: does `header` sign exactly these raw bytes with this secret?

    Verify the bytes as received, before parsing: re-serialised JSON differs byte for byte.
    """
    if not header or not header.startswith(_SIGNATURE_SCHEME):
        return False
    # Constant-time comparison, so response timing leaks nothing about the expected digest.
    return hmac.compare_digest(sign(secret, body), header.strip())


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class WebhookChannel:
    """POSTs the message's JSON document, signed, to the leader's webhook URL."""

    def __init__(
        self,
        secret: str | bytes,
        timeout_s: float,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required")
        self._secret = _as_bytes(secret)
        self._timeout_s = timeout_s
        self._client = client
        self._clock = clock

    def body_for(self, plan: DeliveryPlan, message: RenderedMessage, sent_at: datetime) -> bytes:
        # The delivery key and send time go inside the signed body too, so a receiver can
        # reject replays on authenticated data rather than on the unsigned headers alone.
        document = {
            **message.document,
            "delivery_key": plan.delivery_key,
            "sent_at": sent_at.astimezone(UTC).isoformat(),
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def send(self, plan: DeliveryPlan, message: RenderedMessage) -> None:
        sent_at = self._clock()
        body = self.body_for(plan, message, sent_at)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            SIGNATURE_HEADER: sign(self._secret, body),
            DELIVERY_HEADER: plan.delivery_key,
            TIMESTAMP_HEADER: str(int(sent_at.timestamp())),
        }
        try:
            response = await self._client.post(
                plan.address, content=body, headers=headers, timeout=self._timeout_s
            )
        except httpx.TimeoutException as error:
            raise DeliveryError(
                transient=True, reason=f"webhook timed out after {self._timeout_s}s"
            ) from error
        except httpx.InvalidURL as error:
            raise DeliveryError(transient=False, reason=f"invalid webhook URL: {error}") from error
        except httpx.TransportError as error:
            # Connection refused/reset, DNS failure: the receiver may come back.
            reason = f"webhook transport error: {type(error).__name__}: {error}"
            raise DeliveryError(transient=True, reason=reason) from error
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"webhook answered HTTP {status}: {_excerpt(response.text)}"
        transient = status >= 500 or status in _RETRYABLE_CLIENT_ERRORS
        # Other 4xx (and unfollowed 3xx) mean the receiver rejects this very request — a bad
        # signature, a wrong URL — and sending it again unchanged cannot succeed.
        raise DeliveryError(transient=transient, reason=reason)


# --- email ----------------------------------------------------------------------------------


def build_email(sender: str, plan: DeliveryPlan, message: RenderedMessage) -> EmailMessage:
    email = EmailMessage()
    email["From"] = sender
    email["To"] = plan.address
    email["Subject"] = message.title  # EmailMessage encodes non-ASCII as RFC 2047 UTF-8
    # A stable Message-ID lets mail clients fold a retried duplicate into one message.
    email["Message-ID"] = f"<{plan.notification_id}@jinchui>"
    email[DELIVERY_HEADER] = plan.delivery_key
    # Base64 keeps the Chinese body intact through relays that lack 8BITMIME.
    email.set_content(message.body, charset="utf-8", cte="base64")
    # After set_content, which clears every Content-* header.
    email["Content-Language"] = "zh-CN" if message.language == "zh" else "en"
    return email


class EmailChannel:
    """Sends the message as a UTF-8 plain-text email through an SMTP relay."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        timeout_s: float = 30.0,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._timeout_s = timeout_s
        self._username = username
        self._password = password
        self._start_tls = start_tls  # None: upgrade when the server offers STARTTLS

    async def send(self, plan: DeliveryPlan, message: RenderedMessage) -> None:
        email = build_email(self._sender, plan, message)
        try:
            await aiosmtplib.send(
                email,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                start_tls=self._start_tls,
                timeout=self._timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [response.code for response in error.recipients]
            transient = all(400 <= code < 500 for code in codes)
            raise DeliveryError(
                transient=transient, reason=f"SMTP refused recipient: {error}"
            ) from error
        except aiosmtplib.SMTPResponseException as error:
            # 4yz replies are "try again later" by RFC 5321; 5yz are final.
            transient = 400 <= error.code < 500
            raise DeliveryError(
                transient=transient, reason=f"SMTP {error.code}: {error.message}"
            ) from error
        except (aiosmtplib.SMTPException, OSError) as error:
            # Connect/timeout/disconnect errors: the relay may be back soon.
            reason = f"SMTP error: {type(error).__name__}: {error}"
            raise DeliveryError(transient=True, reason=reason) from error


# --- live feed ------------------------------------------------------------------------------


class LiveFeedItem(BaseModel):
    """One award announcement on the live feed (served as a server-sent event)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delivery_key: str
    award_id: str
    decision_event_id: str
    leader_id: str
    kind: DecisionKind
    language: Language
    title: str
    body: str
    published_at: datetime
    document: dict[str, Any]


class _Closed:
    """Wake-up sentinel for a reader blocked on an empty queue when its subscription ends."""


_CLOSED = _Closed()


class LiveFeedSubscription:
    """One subscriber's bounded queue; iterate it to receive items in publication order.

    Registered on creation (not on first iteration), so nothing published after `subscribe()`
    returns is missed. Use as an async context manager, or call `close()`, to unregister.
    """

    def __init__(self, feed: LiveFeed, max_queue: int, leader_id: str | None) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[LiveFeedItem | _Closed] = asyncio.Queue(maxsize=max_queue)
        self.leader_id = leader_id
        self.dropped = 0
        self._ended = False

    def _offer(self, item: LiveFeedItem) -> None:
        if self._queue.full():
            # A slow browser must not hold memory hostage: lose its oldest item, count it.
            self._queue.get_nowait()
            self.dropped += 1
            self._feed.dropped_total += 1
        self._queue.put_nowait(item)

    def _end(self) -> None:
        """No more items: the reader drains what is queued, then stops."""
        self._ended = True
        # Only an empty queue can have a reader blocked on it; a full one must not lose an
        # item to make room for the wake-up sentinel.
        if self._queue.empty():
            self._queue.put_nowait(_CLOSED)

    def wants(self, item: LiveFeedItem) -> bool:
        return self.leader_id is None or self.leader_id == item.leader_id

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def __aiter__(self) -> AsyncIterator[LiveFeedItem]:
        return self

    async def __anext__(self) -> LiveFeedItem:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _Closed):
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Unsubscribe; a reader still gets what was already queued, then stops."""
        if not self._ended:
            self._feed._unregister(self)
            self._end()

    async def __aenter__(self) -> LiveFeedSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class LiveFeed:
    """In-process fan-out: every subscriber gets every item (or those for its leader)."""

    def __init__(self, max_queue: int = 100) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._max_queue = max_queue
        self._subscribers: list[LiveFeedSubscription] = []
        self.dropped_total = 0
        self.published = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(
        self, *, leader_id: str | None = None, max_queue: int | None = None
    ) -> LiveFeedSubscription:
        """A new subscription; `leader_id` limits it to that leader's items."""
        subscription = LiveFeedSubscription(self, max_queue or self._max_queue, leader_id)
        self._subscribers.append(subscription)
        return subscription

    def publish(self, item: LiveFeedItem) -> None:
        """Never blocks and never waits for a subscriber."""
        self.published += 1
        for subscription in tuple(self._subscribers):
            if subscription.wants(item):
                subscription._offer(item)

    def close(self) -> None:
        """End every subscription (on shutdown); queued items are still delivered first."""
        for subscription in tuple(self._subscribers):
            subscription._end()
        self._subscribers.clear()

    def _unregister(self, subscription: LiveFeedSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)


class LiveFeedChannel:
    """Publishes the message on the live feed; the service streams it as server-sent events."""

    def __init__(self, feed: LiveFeed, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._feed = feed
        self._clock = clock

    async def send(self, plan: DeliveryPlan, message: RenderedMessage) -> None:
        self._feed.publish(
            LiveFeedItem(
                delivery_key=plan.delivery_key,
                award_id=plan.award_id,
                decision_event_id=plan.decision_event_id,
                leader_id=plan.leader_id,
                kind=message.kind,
                language=message.language,
                title=message.title,
                body=message.body,
                published_at=self._clock(),
                document=message.document,
            )
        )
