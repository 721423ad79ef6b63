"""Kafka topic names: the only coupling between the four services.

Keys: the competition event id on registration and scoring topics (so every message about
one event stays in order on one partition), the recipient id on awards decisions.
"""

from __future__ import annotations

import os
import re


def _prefix() -> str:
    """JINCHUI_TOPIC_PREFIX namespaces every topic, so runs sharing one broker (a demo, a test
    stack, a benchmark) never read each other's history. Empty in production."""
    prefix = os.environ.get("JINCHUI_TOPIC_PREFIX", "")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}\.|", prefix):
        raise ValueError(
            f"JINCHUI_TOPIC_PREFIX {prefix!r} must be lowercase letters, digits and '-' "
            "ending with '.'"
        )
    return prefix


PREFIX = _prefix()
REGISTRATION_ENTRIES = PREFIX + "registration.entries"
SCORING_MARKS = PREFIX + "scoring.marks"
SCORING_STANDINGS = PREFIX + "scoring.standings"
SCORING_RESULTS = PREFIX + "scoring.results"
AWARDS_DECISIONS = PREFIX + "awards.decisions"
NOTIFICATIONS_DELIVERIES = PREFIX + "notifications.deliveries"

DLQ_SUFFIX = ".dlq"

MAIN_TOPICS: tuple[str, ...] = (
    REGISTRATION_ENTRIES,
    SCORING_MARKS,
    SCORING_STANDINGS,
    SCORING_RESULTS,
    AWARDS_DECISIONS,
    NOTIFICATIONS_DELIVERIES,
)


def dlq(topic: str) -> str:
    """Name of the dead-letter topic that holds what `topic`'s consumers could not take."""
    return topic + DLQ_SUFFIX


DLQ_TOPICS: tuple[str, ...] = tuple(dlq(t) for t in MAIN_TOPICS)
ALL_TOPICS: tuple[str, ...] = MAIN_TOPICS + DLQ_TOPICS
