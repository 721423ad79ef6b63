"""Kafka topic names: the only coupling between the four services.

Keys: the competition event id on registration and scoring topics (so every message about
one event stays in order on one partition), the recipient id on awards decisions.
"""

from __future__ import annotations

REGISTRATION_ENTRIES = "registration.entries"
SCORING_MARKS = "scoring.marks"
SCORING_STANDINGS = "scoring.standings"
SCORING_RESULTS = "scoring.results"
AWARDS_DECISIONS = "awards.decisions"
NOTIFICATIONS_DELIVERIES = "notifications.deliveries"

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
