"""Registration domain rules, national-id handling and outgoing payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.registration.domain import (
    Competition,
    DuplicateMember,
    Entry,
    EntryFacts,
    EntryNotRegistered,
    EntryStatus,
    Event,
    EventStarted,
    InvalidDefinition,
    InvalidNationalId,
    NotEntryOwner,
    QuotaFull,
    RegistrationError,
    TeamNameViolation,
    TeamSizeViolation,
    Union,
    UnknownEvent,
    UnsafeText,
    WindowClosed,
    Worker,
    WorkerAlreadyEntered,
    WorkerNotOfUnion,
    entry_registered_payload,
    entry_withdrawn_payload,
    event_published_payload,
    find_event,
    hash_national_id,
    mask_national_id,
    mask_text,
    national_id_check_character,
    normalize_national_id,
    register_entry,
    withdraw_entry,
)
from shared.events import (
    CompetitionLevel,
    EntryRegistered,
    EventFormat,
    EventPublished,
    ScoringScheme,
    decode_event,
    encode_event,
    new_event,
)

PEPPER = b"pepper-for-tests-0123456789abcdef"
OTHER_PEPPER = b"another-pepper-for-tests-98765432"
VALID_ID = "11010519491231002X"  # the textbook example; check character X
VALID_ID_DIGIT = "110105194912310038"

OPENS = datetime(2026, 3, 1, tzinfo=UTC)
CLOSES = datetime(2026, 3, 31, tzinfo=UTC)
STARTS = datetime(2026, 4, 10, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 15, tzinfo=UTC)


def make_id(seventeen: str) -> str:
    return seventeen + national_id_check_character(seventeen)


def worker(worker_id: str, union_id: str = "U1", *, front_line: bool = True) -> Worker:
    return Worker.enrol(
        worker_id=worker_id,
        union_id=union_id,
        name=f"工人{worker_id}",
        national_id=make_id(f"1101051990{int(worker_id[1:]):07d}"),
        pepper=PEPPER,
        front_line=front_line,
        employer="城建集团",
        job="焊工",
    )


@pytest.fixture
def competition() -> Competition:
    return Competition("C1", "2026 区职工技能大赛", 2026, CompetitionLevel.DISTRICT, OPENS, CLOSES)


@pytest.fixture
def solo_event() -> Event:
    return Event("E1", "C1", "焊工", "welding", EventFormat.INDIVIDUAL, STARTS, quota_per_union=2)


@pytest.fixture
def team_event() -> Event:
    return Event(
        "E2",
        "C1",
        "砌筑团体",
        "bricklaying",
        EventFormat.TEAM,
        STARTS,
        quota_per_union=1,
        min_team_size=2,
        max_team_size=3,
    )


NO_FACTS = EntryFacts(union_active_entries=0, entered_worker_ids=frozenset())


# --- successful registration ----------------------------------------------------------------


def test_individual_entry_is_registered(competition: Competition, solo_event: Event) -> None:
    entry = register_entry(solo_event, competition, "U1", [worker("W1")], "", NO_FACTS, NOW)
    assert entry.event_id == "E1"
    assert entry.union_id == "U1"
    assert entry.member_ids == ("W1",)
    assert entry.team_name == ""
    assert entry.status is EntryStatus.REGISTERED
    assert entry.registered_at == NOW
    assert entry.entry_id


def test_team_entry_is_registered_with_trimmed_name(
    competition: Competition, team_event: Event
) -> None:
    members = [worker("W1"), worker("W2"), worker("W3")]
    entry = register_entry(
        team_event, competition, "U1", members, "  一队 ", NO_FACTS, NOW, entry_id="X1"
    )
    assert entry.entry_id == "X1"
    assert entry.team_name == "一队"
    assert entry.member_ids == ("W1", "W2", "W3")


# --- window and start -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [OPENS - timedelta(seconds=1), CLOSES, CLOSES + timedelta(days=1)],
    ids=["before_opening", "at_closing", "after_closing"],
)
def test_window_closed(competition: Competition, solo_event: Event, now: datetime) -> None:
    with pytest.raises(WindowClosed) as caught:
        register_entry(solo_event, competition, "U1", [worker("W1")], "", NO_FACTS, now)
    assert caught.value.rule == "window_closed"
    assert caught.value.status_code == 409
    assert "registration" in caught.value.reason


def test_window_open_at_its_first_instant(competition: Competition, solo_event: Event) -> None:
    entry = register_entry(solo_event, competition, "U1", [worker("W1")], "", NO_FACTS, OPENS)
    assert entry.registered_at == OPENS


def test_window_respects_other_timezones(competition: Competition, solo_event: Event) -> None:
    beijing = timezone(timedelta(hours=8))
    # 2026-03-31 07:59 in Beijing is 2026-03-30 23:59 UTC: still open.
    still_open = datetime(2026, 3, 31, 7, 59, tzinfo=beijing)
    register_entry(solo_event, competition, "U1", [worker("W1")], "", NO_FACTS, still_open)
    with pytest.raises(WindowClosed):
        register_entry(
            solo_event,
            competition,
            "U1",
            [worker("W1")],
            "",
            NO_FACTS,
            datetime(2026, 3, 31, 8, 0, tzinfo=beijing),
        )


def test_event_already_started_takes_no_entries() -> None:
    long_window = Competition(
        "C1", "大赛", 2026, CompetitionLevel.CITY, OPENS, datetime(2026, 5, 1, tzinfo=UTC)
    )
    event = Event("E1", "C1", "焊工", "welding", EventFormat.INDIVIDUAL, STARTS, quota_per_union=5)
    with pytest.raises(EventStarted) as caught:
        register_entry(event, long_window, "U1", [worker("W1")], "", NO_FACTS, STARTS)
    assert caught.value.rule == "event_started"


def test_naive_now_is_a_programming_error(competition: Competition, solo_event: Event) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        register_entry(
            solo_event, competition, "U1", [worker("W1")], "", NO_FACTS, datetime(2026, 3, 15)
        )


# --- quota, once per event, roster ----------------------------------------------------------


def test_quota_full(competition: Competition, solo_event: Event) -> None:
    facts = EntryFacts(union_active_entries=2, entered_worker_ids=frozenset({"W8", "W9"}))
    with pytest.raises(QuotaFull) as caught:
        register_entry(solo_event, competition, "U1", [worker("W1")], "", facts, NOW)
    assert caught.value.rule == "quota_full"
    assert caught.value.field == "union_id"
    assert "quota is 2" in caught.value.reason


def test_quota_one_below_is_accepted(competition: Competition, solo_event: Event) -> None:
    facts = EntryFacts(union_active_entries=1, entered_worker_ids=frozenset({"W9"}))
    entry = register_entry(solo_event, competition, "U1", [worker("W1")], "", facts, NOW)
    assert entry.member_ids == ("W1",)


def test_worker_already_entered_by_another_union(
    competition: Competition, team_event: Event
) -> None:
    # W2 was entered by union U2 (the facts span all unions); U1 may not enter W2 again.
    # Even so W2 must be on U1's roster for the attempt: workers change unions.
    facts = EntryFacts(union_active_entries=0, entered_worker_ids=frozenset({"W2"}))
    with pytest.raises(WorkerAlreadyEntered) as caught:
        register_entry(
            team_event, competition, "U1", [worker("W1"), worker("W2")], "队", facts, NOW
        )
    assert caught.value.rule == "worker_already_entered"
    assert caught.value.field == "members"
    assert caught.value.worker_id == "W2"
    assert caught.value.status_code == 409


def test_worker_not_of_union(competition: Competition, team_event: Event) -> None:
    members = [worker("W1", "U1"), worker("W2", "U2")]
    with pytest.raises(WorkerNotOfUnion) as caught:
        register_entry(team_event, competition, "U1", members, "队", NO_FACTS, NOW)
    assert caught.value.rule == "worker_not_of_union"
    assert caught.value.worker_id == "W2"
    assert "U1" in caught.value.reason


def test_same_worker_twice_in_one_team(competition: Competition, team_event: Event) -> None:
    with pytest.raises(DuplicateMember) as caught:
        register_entry(
            team_event, competition, "U1", [worker("W1"), worker("W1")], "队", NO_FACTS, NOW
        )
    assert caught.value.rule == "duplicate_member"


# --- team size and name ---------------------------------------------------------------------


def test_team_too_small(competition: Competition, team_event: Event) -> None:
    with pytest.raises(TeamSizeViolation) as caught:
        register_entry(team_event, competition, "U1", [worker("W1")], "队", NO_FACTS, NOW)
    assert caught.value.rule == "team_size"
    assert "2 to 3 members, got 1" in caught.value.reason


def test_team_too_large(competition: Competition, team_event: Event) -> None:
    members = [worker(f"W{i}") for i in range(1, 5)]
    with pytest.raises(TeamSizeViolation, match="got 4"):
        register_entry(team_event, competition, "U1", members, "队", NO_FACTS, NOW)


def test_team_without_name(competition: Competition, team_event: Event) -> None:
    with pytest.raises(TeamNameViolation) as caught:
        register_entry(
            team_event, competition, "U1", [worker("W1"), worker("W2")], "   ", NO_FACTS, NOW
        )
    assert caught.value.rule == "team_name"
    assert caught.value.field == "team_name"


def test_team_name_formula_injection_rejected(competition: Competition, team_event: Event) -> None:
    with pytest.raises(UnsafeText) as caught:
        register_entry(
            team_event,
            competition,
            "U1",
            [worker("W1"), worker("W2")],
            "=HYPERLINK(1)",
            NO_FACTS,
            NOW,
        )
    assert caught.value.rule == "unsafe_text"
    assert caught.value.field == "team_name"


def test_individual_with_two_members(competition: Competition, solo_event: Event) -> None:
    with pytest.raises(TeamSizeViolation, match="exactly 1 member, got 2"):
        register_entry(
            solo_event, competition, "U1", [worker("W1"), worker("W2")], "", NO_FACTS, NOW
        )


def test_individual_with_no_member(competition: Competition, solo_event: Event) -> None:
    with pytest.raises(TeamSizeViolation, match="got 0"):
        register_entry(solo_event, competition, "U1", [], "", NO_FACTS, NOW)


def test_individual_with_team_name(competition: Competition, solo_event: Event) -> None:
    with pytest.raises(TeamNameViolation, match="no team name"):
        register_entry(solo_event, competition, "U1", [worker("W1")], "一队", NO_FACTS, NOW)


# --- unknown event --------------------------------------------------------------------------


def test_unknown_event_lookup(solo_event: Event) -> None:
    assert find_event({"E1": solo_event}, "E1") is solo_event
    with pytest.raises(UnknownEvent) as caught:
        find_event({"E1": solo_event}, "E404")
    assert caught.value.rule == "unknown_event"
    assert caught.value.field == "event_id"
    assert caught.value.status_code == 404


def test_event_of_another_competition_is_unknown(competition: Competition) -> None:
    foreign = Event("E9", "C2", "车工", "lathe", EventFormat.INDIVIDUAL, STARTS, quota_per_union=1)
    with pytest.raises(UnknownEvent, match="not part of competition"):
        register_entry(foreign, competition, "U1", [worker("W1")], "", NO_FACTS, NOW)


# --- withdrawal -----------------------------------------------------------------------------


@pytest.fixture
def entry(competition: Competition, solo_event: Event) -> Entry:
    return register_entry(solo_event, competition, "U1", [worker("W1")], "", NO_FACTS, NOW)


def test_withdraw_before_start(entry: Entry, solo_event: Event) -> None:
    later = NOW + timedelta(days=1)
    withdrawn = withdraw_entry(entry, solo_event, "U1", later, " 伤病 ")
    assert withdrawn.status is EntryStatus.WITHDRAWN
    assert withdrawn.withdrawn_at == later
    assert withdrawn.withdrawal_reason == "伤病"
    assert entry.status is EntryStatus.REGISTERED  # the original is untouched
    assert not withdrawn.is_active
    payload = entry_withdrawn_payload(withdrawn)
    assert payload.entry_id == entry.entry_id
    assert payload.reason == "伤病"


@pytest.mark.parametrize("delay", [timedelta(0), timedelta(hours=1)], ids=["at", "after"])
def test_withdraw_at_or_after_start(entry: Entry, solo_event: Event, delay: timedelta) -> None:
    with pytest.raises(EventStarted) as caught:
        withdraw_entry(entry, solo_event, "U1", STARTS + delay, "")
    assert caught.value.rule == "event_started"


def test_withdraw_other_unions_entry(entry: Entry, solo_event: Event) -> None:
    with pytest.raises(NotEntryOwner) as caught:
        withdraw_entry(entry, solo_event, "U2", NOW, "")
    assert caught.value.rule == "not_entry_owner"
    assert caught.value.status_code == 403


def test_withdraw_twice(entry: Entry, solo_event: Event) -> None:
    withdrawn = withdraw_entry(entry, solo_event, "U1", NOW, "")
    with pytest.raises(EntryNotRegistered, match="withdrawn"):
        withdraw_entry(withdrawn, solo_event, "U1", NOW, "")


def test_withdraw_through_wrong_event(entry: Entry, team_event: Event) -> None:
    with pytest.raises(UnknownEvent):
        withdraw_entry(entry, team_event, "U1", NOW, "")


def test_withdrawn_payload_needs_a_withdrawn_entry(entry: Entry) -> None:
    with pytest.raises(ValueError, match="not withdrawn"):
        entry_withdrawn_payload(entry)


# --- national id ----------------------------------------------------------------------------


def test_textbook_id_is_valid_and_masked() -> None:
    assert normalize_national_id(VALID_ID) == VALID_ID
    assert mask_national_id(VALID_ID) == "110***********002X"
    assert mask_national_id(VALID_ID_DIGIT) == "110***********0038"


def test_id_normalisation_lowercase_x_fullwidth_and_spaces() -> None:
    assert normalize_national_id(" 11010519491231002x ") == VALID_ID
    fullwidth = "１１０１０５１９４９１２３１００２Ｘ"
    assert normalize_national_id(fullwidth) == VALID_ID
    assert hash_national_id(fullwidth, PEPPER) == hash_national_id(VALID_ID, PEPPER)


def test_id_bad_checksum() -> None:
    with pytest.raises(InvalidNationalId) as caught:
        normalize_national_id("110105194912310021")
    assert caught.value.rule == "invalid_national_id"
    assert caught.value.field == "national_id"
    assert "check digit" in caught.value.reason
    assert "110105194912310021" not in str(caught.value)  # errors never echo the number


@pytest.mark.parametrize("raw", ["11010519491231002", "11010519491231002X1", ""])
def test_id_bad_length(raw: str) -> None:
    with pytest.raises(InvalidNationalId, match="must be 18 characters"):
        normalize_national_id(raw)


def test_id_letters_in_body() -> None:
    with pytest.raises(InvalidNationalId, match="first 17 characters"):
        normalize_national_id("1101051949123100AX")


def test_id_bad_last_character() -> None:
    with pytest.raises(InvalidNationalId, match="digit or X"):
        normalize_national_id("11010519491231002Y")


def test_hash_stable_with_same_pepper_and_different_with_another() -> None:
    first = hash_national_id(VALID_ID, PEPPER)
    assert first == hash_national_id(VALID_ID, PEPPER)
    assert first != hash_national_id(VALID_ID, OTHER_PEPPER)
    assert first != hash_national_id(VALID_ID_DIGIT, PEPPER)
    assert len(first) == 64
    assert VALID_ID not in first
    # a str pepper is its UTF-8 bytes
    assert hash_national_id(VALID_ID, PEPPER.decode()) == first


def test_short_pepper_refused() -> None:
    with pytest.raises(ValueError, match="pepper"):
        hash_national_id(VALID_ID, b"short")


def test_worker_keeps_no_raw_id() -> None:
    enrolled = Worker.enrol(
        worker_id="W1",
        union_id="U1",
        name="张三",
        national_id=VALID_ID,
        pepper=PEPPER,
        front_line=True,
    )
    assert VALID_ID not in repr(enrolled)
    assert enrolled.national_id_masked == "110***********002X"
    assert enrolled.national_id_hash == hash_national_id(VALID_ID, PEPPER)


def test_worker_with_invalid_id_is_refused() -> None:
    with pytest.raises(InvalidNationalId):
        Worker.enrol(
            worker_id="W1",
            union_id="U1",
            name="张三",
            national_id="110105194912310021",
            pepper=PEPPER,
            front_line=True,
        )


seventeen_digits = st.text(alphabet="0123456789", min_size=17, max_size=17)


@given(seventeen_digits)
def test_every_computed_check_character_validates(body: str) -> None:
    assert normalize_national_id(make_id(body)) == make_id(body)


@given(seventeen_digits, st.sampled_from("0123456789X"))
def test_only_the_right_check_character_validates(body: str, check: str) -> None:
    candidate = body + check
    if check == national_id_check_character(body):
        assert normalize_national_id(candidate) == candidate
    else:
        with pytest.raises(InvalidNationalId):
            normalize_national_id(candidate)


@given(seventeen_digits, st.integers(min_value=0, max_value=16), st.integers(1, 9))
def test_any_single_digit_typo_is_caught(body: str, position: int, shift: int) -> None:
    valid = make_id(body)
    typo_digit = str((int(valid[position]) + shift) % 10)
    typo = valid[:position] + typo_digit + valid[position + 1 :]
    with pytest.raises(InvalidNationalId):
        normalize_national_id(typo)


@given(seventeen_digits)
def test_mask_reveals_only_first_three_and_last_four_of_an_id(body: str) -> None:
    national_id = make_id(body)
    masked = mask_national_id(national_id)
    assert len(masked) == 18
    assert masked[:3] == national_id[:3]
    assert masked[-4:] == national_id[-4:]
    assert set(masked[3:-4]) == {"*"}


@given(st.text())
def test_mask_text_never_reveals_more_than_first_three_and_last_four(text: str) -> None:
    masked = mask_text(text)
    assert len(masked) == len(text)
    shown = set(range(3)) | set(range(len(text) - 4, len(text)))
    for position, character in enumerate(masked):
        if position not in shown:
            assert character == "*"
        else:
            assert character in ("*", text[position])
    if len(text) < 8:
        assert set(masked) <= {"*"}


# --- definitions ----------------------------------------------------------------------------


def test_competition_window_must_close_after_opening() -> None:
    with pytest.raises(InvalidDefinition) as caught:
        Competition("C1", "大赛", 2026, CompetitionLevel.CITY, CLOSES, OPENS)
    assert caught.value.field == "closes_at"


def test_competition_needs_aware_timestamps() -> None:
    with pytest.raises(InvalidDefinition, match="timezone-aware"):
        Competition("C1", "大赛", 2026, CompetitionLevel.CITY, datetime(2026, 3, 1), CLOSES)


def test_competition_year_range() -> None:
    with pytest.raises(InvalidDefinition, match="year"):
        Competition("C1", "大赛", 1999, CompetitionLevel.CITY, OPENS, CLOSES)


@pytest.mark.parametrize(
    ("event_format", "min_size", "max_size"),
    [
        (EventFormat.INDIVIDUAL, 1, 2),
        (EventFormat.TEAM, 1, 3),
        (EventFormat.TEAM, 4, 3),
        (EventFormat.TEAM, 2, 51),
    ],
)
def test_event_team_size_bounds(event_format: EventFormat, min_size: int, max_size: int) -> None:
    with pytest.raises(InvalidDefinition, match=r"member|team_size"):
        Event(
            "E1",
            "C1",
            "项目",
            "trade",
            event_format,
            STARTS,
            quota_per_union=1,
            min_team_size=min_size,
            max_team_size=max_size,
        )


def test_event_quota_must_be_positive() -> None:
    with pytest.raises(InvalidDefinition, match="quota"):
        Event("E1", "C1", "项目", "trade", EventFormat.INDIVIDUAL, STARTS, quota_per_union=0)


@pytest.mark.parametrize("name", ["=1+1", "+SUM(A1)", "-2", "@cmd", "\tx"])
def test_names_starting_like_formulas_are_rejected(name: str) -> None:
    with pytest.raises(UnsafeText):
        Union("U1", name)
    with pytest.raises(UnsafeText):
        Worker("W1", "U1", name, True, "h", "m")


def test_errors_share_one_shape() -> None:
    error: RegistrationError = QuotaFull("full")
    assert error.as_dict() == {"rule": "quota_full", "field": "union_id", "reason": "full"}


# --- outgoing payloads ----------------------------------------------------------------------


def test_entry_registered_payload_masks_ids_and_round_trips(
    competition: Competition, team_event: Event
) -> None:
    members = [worker("W1"), worker("W2", front_line=False)]
    entry = register_entry(team_event, competition, "U1", members, "一队", NO_FACTS, NOW)
    union = Union("U1", "城建工会")
    payload = entry_registered_payload(entry, competition, team_event, union, members)
    assert payload.union_name == "城建工会"
    assert payload.competition.level is CompetitionLevel.DISTRICT
    assert [m.worker_id for m in payload.members] == ["W1", "W2"]
    assert payload.members[1].front_line is False
    assert payload.members[0].national_id_masked == members[0].national_id_masked
    raw = encode_event(
        new_event(EntryRegistered, payload, producer="registration", correlation_id="c")
    )
    for member in members:
        assert member.national_id_hash.encode() not in raw
    decoded = decode_event(raw)
    assert decoded.payload == payload
    # also accepts a mapping of workers
    by_id = {member.worker_id: member for member in members}
    assert entry_registered_payload(entry, competition, team_event, union, by_id) == payload


def test_entry_registered_payload_refuses_missing_workers(
    competition: Competition, team_event: Event
) -> None:
    members = [worker("W1"), worker("W2")]
    entry = register_entry(team_event, competition, "U1", members, "一队", NO_FACTS, NOW)
    with pytest.raises(ValueError, match="W2"):
        entry_registered_payload(entry, competition, team_event, Union("U1", "工会"), members[:1])


def test_entry_registered_payload_refuses_another_union(
    competition: Competition, entry: Entry, solo_event: Event
) -> None:
    with pytest.raises(ValueError, match="union"):
        entry_registered_payload(
            entry, competition, solo_event, Union("U2", "别的工会"), [worker("W1")]
        )


def test_event_published_payload(competition: Competition, team_event: Event) -> None:
    payload = event_published_payload(competition, team_event)
    assert payload.team_size == 3
    assert payload.quota_per_union == 1
    assert payload.registration_opens_at == OPENS
    assert payload.registration_closes_at == CLOSES
    assert payload.starts_at == STARTS
    assert payload.scheme == ScoringScheme()
    assert payload.event.format is EventFormat.TEAM
    envelope = new_event(EventPublished, payload, producer="registration", correlation_id="c")
    assert decode_event(encode_event(envelope)).payload == payload


def test_event_published_payload_refuses_mismatched_competition(team_event: Event) -> None:
    other = Competition("C2", "别的大赛", 2026, CompetitionLevel.CITY, OPENS, CLOSES)
    with pytest.raises(ValueError):
        event_published_payload(other, team_event)
