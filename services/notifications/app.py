"""Bootstrap of the notifications service (`jinchui serve notifications`)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from shared.http import create_http_app
from shared.runtime import ServiceRuntime
from shared.settings import Settings

from .api import build_router
from .channels import Channel, EmailChannel, LiveFeed, WebhookChannel
from .delivery import DeliveryWorker, WorkerConfig
from .domain import ChannelName
from .handlers import register_handlers
from .repository import (
    FEED,
    INDEXES,
    STANDINGS,
    NotificationsRepository,
    feed_item_of,
    standings_view,
)
from .streams import Broadcast, CollectionWatcher


def create_app(settings: Settings | None = None, config: WorkerConfig | None = None) -> FastAPI:
    runtime = ServiceRuntime("notifications", settings, indexes=INDEXES)
    config = config or WorkerConfig()
    repo = NotificationsRepository(runtime.db)
    feed = LiveFeed(max_queue=200)
    standings_hub: Broadcast[dict[str, Any]] = Broadcast()
    http_client = httpx.AsyncClient(follow_redirects=False)
    channels: dict[ChannelName, Channel] = {
        "webhook": WebhookChannel(
            runtime.settings.webhook_secret, config.webhook_timeout_s, http_client
        ),
        "email": EmailChannel(
            runtime.settings.smtp_host,
            runtime.settings.smtp_port,
            runtime.settings.smtp_sender,
            timeout_s=config.email_timeout_s,
        ),
    }
    worker = DeliveryWorker(runtime, repo, channels, config)
    feed_watcher = CollectionWatcher(
        runtime.db, FEED, lambda doc: feed.publish(feed_item_of(doc)), "feed-watcher"
    )
    standings_watcher = CollectionWatcher(
        runtime.db,
        STANDINGS,
        lambda doc: standings_hub.publish(standings_view(doc)),
        "standings-watcher",
    )
    register_handlers(runtime, repo, on_new_deliveries=worker.wake)

    async def start() -> None:
        await feed_watcher.start()
        await standings_watcher.start()
        await worker.start()

    async def stop() -> None:
        await worker.stop()
        await feed_watcher.stop()
        await standings_watcher.stop()
        feed.close()
        await http_client.aclose()

    runtime.on_start(start)
    runtime.on_stop(stop)

    app = create_http_app(
        runtime,
        [build_router(runtime, repo, feed, standings_hub)],
        title="Jinchui notifications",
        description="Tells the leadership about awards: webhook, email and the live feed.",
    )
    app.state.worker = worker
    app.state.feed = feed
    return app
