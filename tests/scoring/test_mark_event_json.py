"""The hand-built `MarkRecorded` JSON must stay a valid contract message (strict decoding)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.scoring.domain import Mark
from services.scoring.handlers import mark_recorded
from shared import topics
from shared.events import MarkRecorded, decode_event


@pytest.mark.parametrize(
    ("member_id", "supersedes", "reason", "value"),
    [
        (None, None, "", Decimal("0")),
        ("w-1", "m-0", "mis-keyed 改正", Decimal("99.95")),
        (None, None, "", Decimal("100.00")),
    ],
)
def test_mark_recorded_json_decodes_strictly(
    member_id: str | None, supersedes: str | None, reason: str, value: Decimal
) -> None:
    mark = Mark(
        mark_id="m-1",
        judge_id="j:1",
        entry_id="e.1",
        member_id=member_id,
        component="practical",
        value=value,
        supersedes=supersedes,
        reason=reason,
        recorded_at=datetime(2026, 5, 1, 8, 30, tzinfo=UTC),
    )
    serialized = mark_recorded("ev-1", mark, "corr-1")
    event = decode_event(serialized.value)
    assert isinstance(event, MarkRecorded)
    assert (serialized.topic, serialized.key, serialized.event_type) == (
        topics.SCORING_MARKS,
        "ev-1",
        "MarkRecorded",
    )
    assert str(event.event_id) == serialized.event_id
    assert event.correlation_id == "corr-1" and event.producer == "scoring"
    assert Mark.from_payload(event.payload) == mark
    assert event.payload.event_id == "ev-1"
