"""The bulk path's hand-assembled EntryRegistered JSON equals what the contracts build."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.registration.bulk import RegistrationSnapshot
from services.registration.domain import (
    Competition,
    Entry,
    Event,
    Union,
    Worker,
    entry_registered_payload,
)
from services.registration.handlers import EntryEventFactory, uuid4_strings
from shared.events import CompetitionLevel, EntryRegistered, EventFormat, decode_event

COMPETITION = Competition(
    "C1",
    '大赛 "2026"',
    2026,
    CompetitionLevel.CITY,
    datetime(2026, 3, 1, tzinfo=UTC),
    datetime(2026, 3, 31, tzinfo=UTC),
)
TEAM = Event(
    "TEAM",
    "C1",
    "砌筑\\组",
    "bricklaying",
    EventFormat.TEAM,
    datetime(2026, 4, 10, tzinfo=UTC),
    quota_per_union=5,
    min_team_size=2,
    max_team_size=3,
)
WORKERS = {
    f"W{i}": Worker(f"W{i}", "UA", f"工人{i}", i % 2 == 0, "hash", "110***********1234")
    for i in range(1, 4)
}
SNAPSHOT = RegistrationSnapshot(
    competitions={"C1": COMPETITION},
    events={"TEAM": TEAM},
    union_ids=frozenset({"UA"}),
    workers=WORKERS,
)
UNIONS = {"UA": Union("UA", '一"工会\u2028')}


@given(
    team_name=st.text(max_size=20),
    members=st.lists(st.sampled_from(sorted(WORKERS)), min_size=2, max_size=3, unique=True),
)
def test_fast_json_decodes_strictly_to_the_contract_event(
    team_name: str, members: list[str]
) -> None:
    entry = Entry(
        "e-1", "TEAM", "UA", team_name, tuple(members), datetime(2026, 3, 2, 8, tzinfo=UTC)
    )
    item = EntryEventFactory(SNAPSHOT, UNIONS, 'corr"1').build([entry])[0]
    decoded = decode_event(item.value)
    assert isinstance(decoded, EntryRegistered)
    assert str(decoded.event_id) == item.event_id
    assert (decoded.correlation_id, decoded.causation_id) == ('corr"1', None)
    assert (item.key, item.event_type) == ("TEAM", "EntryRegistered")
    expected = entry_registered_payload(entry, COMPETITION, TEAM, UNIONS["UA"], WORKERS)
    assert decoded.payload == expected


def test_bulk_uuids_are_distinct_canonical_version_4() -> None:
    ids = uuid4_strings(5000)
    assert len(set(ids)) == 5000
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    for text in ids:
        assert pattern.match(text), text
        parsed = uuid.UUID(text)
        assert (parsed.version, str(parsed)) == (4, text)
