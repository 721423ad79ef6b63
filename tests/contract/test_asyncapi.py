"""Contract tests: the published AsyncAPI documents are current and cover every event."""

from __future__ import annotations

import json

import pytest

from jinchui.asyncapi import DOCS_DIR, render, service_asyncapi
from shared import topics
from shared.events import EVENT_TYPES
from shared.settings import SERVICES

PUBLISHES = {
    "registration": {topics.REGISTRATION_ENTRIES},
    "scoring": {topics.SCORING_MARKS, topics.SCORING_STANDINGS, topics.SCORING_RESULTS},
    "awards": {topics.AWARDS_DECISIONS},
    "notifications": {topics.NOTIFICATIONS_DELIVERIES, topics.dlq(topics.AWARDS_DECISIONS)},
}
CONSUMES = {
    "registration": set(),
    "scoring": {topics.REGISTRATION_ENTRIES},
    "awards": {topics.REGISTRATION_ENTRIES, topics.SCORING_RESULTS},
    "notifications": {topics.AWARDS_DECISIONS, topics.SCORING_STANDINGS},
}


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    return {service: service_asyncapi(service) for service in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_committed_document_is_current(service: str, documents: dict[str, dict]) -> None:
    committed = (DOCS_DIR / f"{service}.json").read_text()
    assert committed == render(documents[service]), (
        f"docs/asyncapi/{service}.json is stale: run `jinchui asyncapi`"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_document_names_the_topics_the_service_uses(
    service: str, documents: dict[str, dict]
) -> None:
    addresses = {channel["address"] for channel in documents[service]["channels"].values()}
    assert PUBLISHES[service] | CONSUMES[service] <= addresses


def test_every_event_type_is_documented(documents: dict[str, dict]) -> None:
    text = json.dumps(documents)
    missing = [name for name in EVENT_TYPES if name not in text]
    assert not missing, f"event types absent from every AsyncAPI document: {missing}"
