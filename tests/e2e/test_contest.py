"""End to end: the four services as separate processes over real HTTP, Kafka and MongoDB.

A union officer registers individual and team entries, judges stream marks, the chief judges
finalise, awards are granted, and the leadership hears of every one of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jinchui.client import Platform, Tokens
from jinchui.play import Player, PlayResult
from jinchui.scenario import build_scenario
from jinchui.stack import Stack
from shared.events import utc_now
from shared.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    prefix = "e2e" + uuid.uuid4().hex[:6]
    services = Stack.create(
        kafka_bootstrap=infra.kafka_bootstrap,
        mongodb_url=infra.mongodb_url,
        kafka_idempotence=infra.kafka_idempotence,
        db_prefix=prefix,
        log_dir=tmp_path_factory.mktemp("e2e-logs"),
    )
    services.start()
    yield services
    services.stop()


@pytest.fixture(scope="module")
async def played(stack: Stack) -> AsyncIterator[tuple[PlayResult, Any]]:
    settings = Settings()
    platform = Platform({name: s.url for name, s in stack.services.items()})
    scenario = build_scenario(utc_now(), tag="e2e" + uuid.uuid4().hex[:6])
    player = Player(platform, Tokens(settings), scenario, webhook_secret=settings.webhook_secret)
    try:
        result = await player.play()
        yield result, scenario
    finally:
        await platform.close()


async def test_every_entry_and_mark_is_taken(played: tuple[PlayResult, Any]) -> None:
    result, scenario = played
    assert result.entries == len(scenario.entries) == 40
    assert result.marks == len(scenario.marks)
    assert result.conflict_rejected, result.conflict_error


async def test_standings_rank_the_tie_together(played: tuple[PlayResult, Any]) -> None:
    result, scenario = played
    lines = {
        line["entry_id"]: line
        for standings in result.standings.values()
        for line in standings["lines"]
    }
    first, second = scenario.tie_entries
    assert lines[first]["total"] == lines[second]["total"]
    assert lines[first]["rank"] == lines[second]["rank"]
    forklift = result.standings[f"{scenario.competition_id}-forklift"]["lines"]
    assert forklift[0]["entry_id"] == f"{scenario.competition_id}-forklift-000"
    assert forklift[0]["rank"] == 1


async def test_awards_are_granted_once_each(played: tuple[PlayResult, Any]) -> None:
    result, _scenario = played
    counts = result.award_counts()
    assert counts["may_day_labour_medal"] >= 1
    assert counts["worker_pioneer"] >= 1
    assert counts["technical_expert"] >= 3
    keys = Counter(
        (a["award_type"], (a.get("event") or {}).get("event_id"), a["recipient"]["recipient_id"])
        for a in result.awards
        if a.get("status", "granted") == "granted"
    )
    assert all(n == 1 for n in keys.values()), keys
    medal = next(a for a in result.awards if a["award_type"] == "may_day_labour_medal")
    assert medal["certificate_no"]
    assert medal["reason"]["rule"]
    assert medal["mark_ids"], "an award records the marks that produced it"
    assert medal["publicity_ends_on"]


async def test_every_leader_hears_of_every_award_exactly_once(
    played: tuple[PlayResult, Any],
) -> None:
    result, _scenario = played
    delivered = [d for d in result.deliveries if d.get("status") == "delivered"]
    assert result.expected_deliveries > 0
    assert len(delivered) == result.expected_deliveries
    per_key = Counter((d["award_id"], d["leader_id"], d["channel"]) for d in delivered)
    assert all(n == 1 for n in per_key.values())
    federation_webhooks = [d for d in delivered if d["channel"] == "webhook"]
    assert len(result.webhooks) == len(federation_webhooks)
    assert len({w["key"] for w in result.webhooks}) == len(result.webhooks)
    assert result.latencies_ms, "the live feed showed the awards"
    assert max(result.latencies_ms) < 5000


def test_demo_command_prints_its_figures_as_the_last_line(infra: Any) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "jinchui.cli", "demo", "--json", "--external"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert figures["entries"] >= 40
    assert figures["marks"] >= 200
    assert set(figures["awards"]) >= {
        "may_day_labour_medal",
        "worker_pioneer",
        "technical_expert",
        "excellent_contestant",
    }
    assert figures["awards"]["may_day_labour_medal"] >= 1
    assert figures["notifications_delivered"] == figures["notifications_expected"] > 0
    assert {"p50", "max"} <= set(figures["finalisation_to_notification_ms"])
