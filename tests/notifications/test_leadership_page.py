"""The leadership page in a real browser: Debian's chromium driven by Playwright opens the
page served by the notifications service under uvicorn; an award published to Kafka then
appears on the page without a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from shared import topics

from .conftest import Service, granted, publish, unique

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian chromium not installed",
    ),
]


async def test_an_award_appears_on_the_open_page_without_reload(
    service: Service, producer: AIOKafkaProducer
) -> None:
    async_playwright = pytest.importorskip(
        "playwright.async_api", reason="playwright (Python) not installed"
    ).async_playwright
    competition_id = unique("cmp")
    leader = unique("committee")
    await service.subscribe(
        leader,
        {
            "name": "组委会",
            "role": "committee",
            "scope": competition_id,
            "channels": {"live_feed": True},
        },
    )
    winner = "欧阳" + unique("x")[-6:]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            await page.goto(service.url + "/", wait_until="domcontentloaded")
            await page.wait_for_selector("#status.live", timeout=10_000)
            assert await page.title() != ""
            assert winner not in await page.content()
            navigations: list[str] = []

            def navigated(frame: Any) -> None:
                navigations.append(frame.url)

            page.on("framenavigated", navigated)

            decision = granted(competition_id, name=winner)
            key = decision.payload.recipient.recipient_id
            await publish(producer, topics.AWARDS_DECISIONS, key, decision)

            card = page.locator("#awards .award", has_text=winner)
            await card.wait_for(state="visible", timeout=15_000)
            text = await card.inner_text()
            assert "五一劳动奖章" in text
            assert "交通运输工会" in text
            assert navigations == [], "the award must appear without a reload"
        finally:
            await browser.close()
