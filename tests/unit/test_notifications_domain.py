"""Pure tests of the notifications domain: recipients, delivery keys, back-off, state machine,
message templates and webhook signatures. No I/O."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.notifications.channels import sign, verify_signature
from services.notifications.domain import (
    CHANNELS,
    DeliveryPlan,
    DeliveryRecord,
    DeliverySettledError,
    LeaderRole,
    RetryPolicy,
    Subscription,
    delivery_key,
    is_valid_email,
    recipients_for,
)
from services.notifications.templates import (
    chinese_rank,
    english_ordinal,
    render_message,
)
from shared.events import (
    AwardGranted,
    AwardGrantedPayload,
    AwardReason,
    AwardRevoked,
    AwardRevokedPayload,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    EventFormat,
    EventRef,
    Member,
    Recipient,
    RecipientKind,
)

NOW = datetime(2026, 5, 1, 2, 30, tzinfo=UTC)  # 10:30 Beijing time
COMPETITION = CompetitionRef(
    competition_id="comp-2026-binhai",
    name="滨海新区",
    year=2026,
    level=CompetitionLevel.DISTRICT,
)
FORKLIFT = EventRef(
    event_id="ev-forklift",
    name="叉车司机竞赛",
    trade="叉车司机",
    format=EventFormat.INDIVIDUAL,
)
ZHANG_SAN = Member(worker_id="w-1", name="张三", front_line=True)
PERSON = Recipient(
    kind=RecipientKind.PERSON,
    recipient_id="w-1",
    name="张三",
    union_id="union-devzone",
    union_name="开发区工会",
    members=(ZHANG_SAN,),
)


def granted(
    *,
    award_type: AwardType = AwardType.MAY_DAY_LABOUR_MEDAL,
    recipient: Recipient = PERSON,
    rank: int | None = 1,
    event: EventRef | None = FORKLIFT,
    competition: CompetitionRef = COMPETITION,
    event_id: uuid.UUID | None = None,
) -> AwardGranted:
    return AwardGranted(
        event_id=event_id or uuid.uuid4(),
        occurred_at=NOW,
        producer="awards",
        correlation_id="corr-1",
        payload=AwardGrantedPayload(
            award_id="award-1",
            certificate_no="BH-2026-0001",
            award_type=award_type,
            competition=competition,
            event=event,
            recipient=recipient,
            rank=rank,
            reason=AwardReason(rule="may_day.rank_1", facts={"rank": 1, "qualified": True}),
            result_version=1,
            publicity_ends_on=date(2026, 5, 8),
            granted_at=NOW,
        ),
    )


def revoked(*, recipient: Recipient = PERSON) -> AwardRevoked:
    return AwardRevoked(
        event_id=uuid.uuid4(),
        occurred_at=NOW,
        producer="awards",
        correlation_id="corr-2",
        payload=AwardRevokedPayload(
            award_id="award-1",
            certificate_no="BH-2026-0001",
            award_type=AwardType.MAY_DAY_LABOUR_MEDAL,
            competition=COMPETITION,
            event=FORKLIFT,
            recipient=recipient,
            reason=AwardReason(rule="amendment.no_longer_rank_1", facts={"rank": 2}),
            result_version=2,
            revoked_at=NOW,
        ),
    )


def subscription(**overrides: Any) -> Subscription:
    fields: dict[str, Any] = {
        "leader_id": "leader-fed",
        "name": "王主席",
        "role": LeaderRole.FEDERATION,
        "channels": frozenset({"email"}),
        "email": "wang@example.org",
    }
    fields.update(overrides)
    return Subscription(**fields)


FEDERATION = subscription()
CHAIR_DEVZONE = subscription(
    leader_id="leader-chair-devzone",
    role=LeaderRole.UNION_CHAIR,
    scope="union-devzone",
    channels=frozenset({"webhook"}),
    webhook_url="https://devzone.example.org/hooks/awards",
    email=None,
)
CHAIR_PORT = subscription(
    leader_id="leader-chair-port",
    role=LeaderRole.UNION_CHAIR,
    scope="union-port",
    email="port@example.org",
)
COMMITTEE_BINHAI = subscription(
    leader_id="leader-committee",
    role=LeaderRole.COMMITTEE,
    scope="comp-2026-binhai",
    channels=frozenset({"live_feed"}),
    email=None,
    language="en",
)
COMMITTEE_OTHER = subscription(
    leader_id="leader-committee-other",
    role=LeaderRole.COMMITTEE,
    scope="comp-2025-other",
)


# --- subscriptions --------------------------------------------------------------------------


def test_subscription_language_defaults_to_chinese() -> None:
    assert FEDERATION.language == "zh"


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "not a url", "mailto:a@example.org"])
def test_webhook_channel_needs_an_http_url(url: str) -> None:
    with pytest.raises(ValidationError):
        subscription(channels=frozenset({"webhook"}), webhook_url=url)


def test_webhook_channel_without_url_is_rejected() -> None:
    with pytest.raises(ValidationError, match="webhook_url"):
        subscription(channels=frozenset({"webhook"}))


@pytest.mark.parametrize(
    "address",
    ["", "wang", "wang@", "@example.org", "wang@example", "wa ng@example.org", "a..b@x.org"],
)
def test_email_channel_needs_a_valid_address(address: str) -> None:
    with pytest.raises(ValidationError, match="email"):
        subscription(email=address)


@pytest.mark.parametrize("address", ["wang@example.org", "li.si+awards@mail.union.gov.cn"])
def test_valid_email_addresses_are_accepted(address: str) -> None:
    assert is_valid_email(address)
    assert subscription(email=address).email == address


def test_scoped_roles_need_a_scope_and_federation_must_not_have_one() -> None:
    with pytest.raises(ValidationError, match="scope"):
        subscription(role=LeaderRole.UNION_CHAIR)
    with pytest.raises(ValidationError, match="scope"):
        subscription(role=LeaderRole.COMMITTEE, scope="")
    with pytest.raises(ValidationError, match="scope"):
        subscription(scope="union-devzone")


def test_a_subscription_needs_at_least_one_known_channel() -> None:
    with pytest.raises(ValidationError):
        subscription(channels=frozenset())
    with pytest.raises(ValidationError):
        subscription(channels=frozenset({"sms"}))


def test_an_unused_channel_needs_no_address() -> None:
    live_only = subscription(channels=frozenset({"live_feed"}), email=None)
    assert live_only.address_for("live_feed") == "leader-fed"


# --- recipients_for -------------------------------------------------------------------------

ALL_SUBSCRIPTIONS = [FEDERATION, CHAIR_DEVZONE, CHAIR_PORT, COMMITTEE_BINHAI, COMMITTEE_OTHER]


def test_federation_union_chair_and_committee_receive_a_grant() -> None:
    decision = granted()
    plans = recipients_for(decision, ALL_SUBSCRIPTIONS)
    assert {(plan.leader_id, plan.channel) for plan in plans} == {
        ("leader-fed", "email"),
        ("leader-chair-devzone", "webhook"),
        ("leader-committee", "live_feed"),
    }
    by_leader = {plan.leader_id: plan for plan in plans}
    assert by_leader["leader-fed"].address == "wang@example.org"
    assert by_leader["leader-chair-devzone"].address == "https://devzone.example.org/hooks/awards"
    assert by_leader["leader-committee"].address == "leader-committee"
    assert all(plan.kind == "granted" for plan in plans)
    assert all(plan.award_id == "award-1" for plan in plans)
    assert all(plan.decision_event_id == str(decision.event_id) for plan in plans)


def test_federation_receives_awards_of_every_union_and_competition() -> None:
    elsewhere = COMPETITION.model_copy(update={"competition_id": "comp-x"})
    stranger = PERSON.model_copy(update={"union_id": "union-x"})
    plans = recipients_for(granted(competition=elsewhere, recipient=stranger), ALL_SUBSCRIPTIONS)
    assert [plan.leader_id for plan in plans] == ["leader-fed"]


def test_union_chair_of_another_union_is_not_told() -> None:
    plans = recipients_for(granted(), [CHAIR_PORT])
    assert plans == []


def test_union_chair_matches_the_recipients_union_for_teams_too() -> None:
    team = PERSON.model_copy(
        update={"kind": RecipientKind.TEAM, "recipient_id": "team-1", "name": "港口焊接队"}
    )
    port_team = team.model_copy(update={"union_id": "union-port", "union_name": "港务工会"})
    assert [p.leader_id for p in recipients_for(granted(recipient=team), [CHAIR_DEVZONE])] == [
        "leader-chair-devzone"
    ]
    assert [p.leader_id for p in recipients_for(granted(recipient=port_team), [CHAIR_PORT])] == [
        "leader-chair-port"
    ]


def test_committee_of_another_competition_is_not_told() -> None:
    assert recipients_for(granted(), [COMMITTEE_OTHER]) == []
    assert [p.leader_id for p in recipients_for(granted(), [COMMITTEE_BINHAI])] == [
        "leader-committee"
    ]


def test_revocations_are_planned_like_grants() -> None:
    plans = recipients_for(revoked(), ALL_SUBSCRIPTIONS)
    assert {plan.leader_id for plan in plans} == {
        "leader-fed",
        "leader-chair-devzone",
        "leader-committee",
    }
    assert all(plan.kind == "revoked" for plan in plans)


def test_every_channel_of_a_subscription_gets_its_own_delivery() -> None:
    everywhere = subscription(
        channels=frozenset(CHANNELS), webhook_url="http://127.0.0.1:9/hook", language="en"
    )
    decision = granted()
    plans = recipients_for(decision, [everywhere])
    assert [plan.channel for plan in plans] == ["webhook", "email", "live_feed"]
    assert [plan.address for plan in plans] == [
        "http://127.0.0.1:9/hook",
        "wang@example.org",
        "leader-fed",
    ]
    assert all(plan.language == "en" for plan in plans)
    assert [plan.delivery_key for plan in plans] == [
        f"{decision.event_id}:leader-fed:{channel}" for channel in CHANNELS
    ]


def test_language_follows_the_subscription() -> None:
    plans = recipients_for(granted(), [FEDERATION, COMMITTEE_BINHAI])
    assert {plan.leader_id: plan.language for plan in plans} == {
        "leader-fed": "zh",
        "leader-committee": "en",
    }


def test_a_leader_with_two_matching_subscriptions_gets_one_delivery_per_channel() -> None:
    as_committee = subscription(
        role=LeaderRole.COMMITTEE,
        scope="comp-2026-binhai",
        email="wang.committee@example.org",
        language="en",
    )
    plans = recipients_for(granted(), [FEDERATION, as_committee])
    assert len(plans) == 1
    # The first matching subscription decides address and language.
    assert (plans[0].address, plans[0].language) == ("wang@example.org", "zh")


def test_duplicate_subscriptions_do_not_duplicate_deliveries() -> None:
    plans = recipients_for(granted(), ALL_SUBSCRIPTIONS * 3)
    keys = [plan.delivery_key for plan in plans]
    assert len(keys) == len(set(keys)) == 3


def test_delivery_key_is_stable_for_a_redelivered_decision() -> None:
    event_id = uuid.uuid4()
    first = recipients_for(granted(event_id=event_id), ALL_SUBSCRIPTIONS)
    again = recipients_for(granted(event_id=event_id), ALL_SUBSCRIPTIONS)
    assert first == again
    assert [p.notification_id for p in first] == [p.notification_id for p in again]


def test_a_new_decision_about_the_same_award_gets_new_keys() -> None:
    grant_keys = {p.delivery_key for p in recipients_for(granted(), ALL_SUBSCRIPTIONS)}
    revoke_keys = {p.delivery_key for p in recipients_for(revoked(), ALL_SUBSCRIPTIONS)}
    assert grant_keys.isdisjoint(revoke_keys)


leader_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40
)


@given(
    triples=st.lists(
        st.tuples(st.uuids(), leader_ids, st.sampled_from(CHANNELS)), min_size=2, max_size=30
    )
)
def test_delivery_keys_are_unique_per_decision_leader_and_channel(
    triples: list[tuple[uuid.UUID, str, Any]],
) -> None:
    # Even leader ids containing ':' cannot make two different deliveries share a key.
    keys = {delivery_key(str(event_id), leader, channel) for event_id, leader, channel in triples}
    assert len(keys) == len({(str(e), leader, channel) for e, leader, channel in triples})


def test_notification_id_fits_the_outcome_contract() -> None:
    long_leader = subscription(leader_id="L" * 128)
    (plan,) = recipients_for(granted(), [long_leader])
    assert len(plan.delivery_key) > 128
    assert len(plan.notification_id) == 36


# --- back-off -------------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=2000),
    base=st.floats(min_value=0.001, max_value=60),
    extra=st.floats(min_value=0, max_value=3600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_the_exponential_ceiling(
    attempt: int, base: float, extra: float, seed: int
) -> None:
    policy = RetryPolicy(base_delay_s=base, max_delay_s=base + extra)
    delay = policy.delay_for(attempt, random.Random(seed))
    ceiling = min(policy.max_delay_s, base * 2.0 ** min(attempt - 1, 1000))
    assert 0 <= delay <= ceiling
    assert delay <= min(policy.max_delay_s, base * 2.0 ** min(attempt, 1000))


class _ExtremeSource:
    """A random source that returns the edges (and beyond) of the asked range."""

    def __init__(self, value: float) -> None:
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value


@pytest.mark.parametrize("value", [-5.0, 0.0, 1e9])
def test_backoff_clamps_a_misbehaving_random_source(value: float) -> None:
    policy = RetryPolicy(base_delay_s=1, max_delay_s=10)
    assert 0 <= policy.delay_for(3, _ExtremeSource(value)) <= 4


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=1, max_delay_s=10, jitter=False)
    rng = random.Random(1)
    assert [policy.delay_for(n, rng) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_full_jitter_spreads_delays_over_the_window() -> None:
    policy = RetryPolicy(base_delay_s=1, max_delay_s=100)
    rng = random.Random(42)
    delays = [policy.delay_for(5, rng) for _ in range(500)]
    assert min(delays) < 2 and max(delays) > 14  # window is [0, 16]


def test_backoff_is_reproducible_with_the_same_seed() -> None:
    policy = RetryPolicy()
    assert policy.delay_for(3, random.Random(7)) == policy.delay_for(3, random.Random(7))


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError):
        RetryPolicy(base_delay_s=10, max_delay_s=1)
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay_for(0, random.Random())


# --- delivery state machine -----------------------------------------------------------------

PLAN = DeliveryPlan(
    delivery_key="e:l:email",
    award_id="award-1",
    decision_event_id="e",
    leader_id="l",
    channel="email",
    address="wang@example.org",
    language="zh",
    kind="granted",
)


def test_a_new_delivery_is_pending_and_due() -> None:
    record = DeliveryRecord.start(PLAN)
    assert (record.status, record.attempts, record.delivery_key) == ("pending", (), "e:l:email")
    assert record.is_due(NOW)


def test_success_settles_the_delivery() -> None:
    record = DeliveryRecord.start(PLAN).record_success(NOW)
    assert record.status == "delivered"
    assert [(a.at, a.outcome, a.error) for a in record.attempts] == [(NOW, "delivered", "")]
    assert not record.is_due(NOW)


def test_transient_failures_retry_with_backoff_then_fail_after_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=1, max_delay_s=60, jitter=False)
    rng = random.Random(0)
    record = DeliveryRecord.start(PLAN)
    record, next_at = record.record_failure(NOW, "HTTP 503", policy, rng)
    assert (record.status, next_at) == ("pending", NOW + timedelta(seconds=1))
    assert record.next_attempt_at == next_at
    assert not record.is_due(NOW) and record.is_due(NOW + timedelta(seconds=1))
    later = NOW + timedelta(seconds=1)
    record, next_at = record.record_failure(later, "HTTP 503", policy, rng)
    assert next_at == later + timedelta(seconds=2)
    record, next_at = record.record_failure(later + timedelta(seconds=2), "timeout", policy, rng)
    assert next_at is None
    assert record.status == "failed"
    assert [a.outcome for a in record.attempts] == ["transient_error"] * 3
    assert record.last_error == "timeout"


def test_a_permanent_failure_fails_at_once() -> None:
    record, next_at = DeliveryRecord.start(PLAN).record_failure(
        NOW, "HTTP 400", RetryPolicy(), random.Random(0), transient=False
    )
    assert next_at is None
    assert record.status == "failed"
    assert [a.outcome for a in record.attempts] == ["permanent_error"]


def test_failure_then_success_keeps_the_whole_history() -> None:
    record, _ = DeliveryRecord.start(PLAN).record_failure(
        NOW, "HTTP 500", RetryPolicy(), random.Random(0)
    )
    record = record.record_success(NOW + timedelta(seconds=3))
    assert record.status == "delivered"
    assert [a.outcome for a in record.attempts] == ["transient_error", "delivered"]
    assert record.attempts[0].error == "HTTP 500"


@pytest.mark.parametrize("settle", ["success", "failure"])
def test_a_settled_delivery_accepts_no_further_attempt(settle: str) -> None:
    record = DeliveryRecord.start(PLAN)
    if settle == "success":
        record = record.record_success(NOW)
    else:
        record, _ = record.record_failure(
            NOW, "no", RetryPolicy(), random.Random(0), transient=False
        )
    with pytest.raises(DeliverySettledError):
        record.record_success(NOW)
    with pytest.raises(DeliverySettledError):
        record.record_failure(NOW, "again", RetryPolicy(), random.Random(0))


def test_transitions_do_not_mutate_the_original_record() -> None:
    original = DeliveryRecord.start(PLAN)
    original.record_success(NOW)
    assert original.status == "pending" and original.attempts == ()


def test_attempt_times_must_be_utc_aware() -> None:
    with pytest.raises(ValidationError):
        DeliveryRecord.start(PLAN).record_success(datetime(2026, 5, 1, 10, 0))


@given(
    max_attempts=st.integers(min_value=1, max_value=10),
    outcomes=st.lists(st.booleans(), min_size=1, max_size=12),
)
def test_attempts_never_exceed_the_policy(max_attempts: int, outcomes: list[bool]) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, base_delay_s=1, max_delay_s=5)
    rng = random.Random(0)
    record = DeliveryRecord.start(PLAN)
    moment = NOW
    for succeeded in outcomes:
        if record.status != "pending":
            break
        if succeeded:
            record = record.record_success(moment)
        else:
            record, next_at = record.record_failure(moment, "x", policy, rng)
            assert (next_at is None) == (record.status == "failed")
            moment = next_at or moment
    assert len(record.attempts) <= max_attempts
    if record.status == "failed":
        assert len(record.attempts) == max_attempts


# --- templates ------------------------------------------------------------------------------


def test_chinese_grant_title_reads_like_the_ceremony_announcement() -> None:
    message = render_message(granted())
    assert (
        message.title == "【即时授予】滨海新区五一劳动奖章：张三（叉车司机竞赛第一名，开发区工会）"
    )
    assert message.language == "zh" and message.kind == "granted"


def test_chinese_body_has_the_details_an_officer_checks() -> None:
    body = render_message(granted()).body
    assert body.startswith("【即时授予】滨海新区五一劳动奖章：张三")
    for line in (
        "奖项：五一劳动奖章",
        "获奖者：张三（开发区工会）",
        "竞赛：滨海新区（2026年，区级）",
        "项目：叉车司机竞赛（叉车司机）",
        "名次：第一名",
        "证书编号：BH-2026-0001",
        "公示截止：2026年5月8日",
        "授予时间：2026-05-01 10:30（北京时间）",
    ):
        assert line in body.splitlines()


def test_english_grant_title() -> None:
    message = render_message(granted(), "en")
    assert message.title == (
        "[Immediate award] May Day Labour Medal — "
        "张三 (1st, 叉车司机竞赛 contest, 开发区工会), 滨海新区"
    )
    assert "Rank: 1st" in message.body.splitlines()
    assert "Publicity period ends: 2026-05-08" in message.body.splitlines()


@pytest.mark.parametrize(
    ("award_type", "zh", "en"),
    [
        (AwardType.MAY_DAY_LABOUR_MEDAL, "五一劳动奖章", "May Day Labour Medal"),
        (AwardType.WORKER_PIONEER, "工人先锋号", "Worker Pioneer"),
        (AwardType.TECHNICAL_EXPERT, "技术能手", "Technical Expert"),
        (AwardType.EXCELLENT_CONTESTANT, "优秀选手", "Excellent Contestant"),
        (AwardType.ORGANISATION_AWARD, "优秀组织奖", "Excellent Organisation Award"),
    ],
)
def test_every_award_has_a_chinese_and_an_english_name(
    award_type: AwardType, zh: str, en: str
) -> None:
    decision = granted(award_type=award_type)
    assert f"滨海新区{zh}：" in render_message(decision).title
    assert f"] {en} — " in render_message(decision, "en").title


def test_revocation_is_announced_with_its_own_prefix_and_reason() -> None:
    zh = render_message(revoked())
    assert zh.title == "【撤销】滨海新区五一劳动奖章：张三（叉车司机竞赛，开发区工会）"
    assert zh.kind == "revoked"
    assert "撤销依据：amendment.no_longer_rank_1（成绩第2版）" in zh.body.splitlines()
    en = render_message(revoked(), "en")
    assert (
        en.title
        == "[Revoked] May Day Labour Medal — 张三 (叉车司机竞赛 contest, 开发区工会), 滨海新区"
    )
    assert en.document["event_type"] == "AwardRevoked"


def test_team_recipients_show_the_team_name_and_members() -> None:
    team = Recipient(
        kind=RecipientKind.TEAM,
        recipient_id="team-7",
        name="开发区焊接一队",
        union_id="union-devzone",
        union_name="开发区工会",
        members=(
            Member(worker_id="w-7", name="李四", front_line=True),
            Member(worker_id="w-8", name="王五", front_line=True),
        ),
    )
    welding = FORKLIFT.model_copy(update={"name": "焊工团体赛", "format": EventFormat.TEAM})
    decision = granted(award_type=AwardType.WORKER_PIONEER, recipient=team, event=welding)
    zh = render_message(decision)
    assert (
        zh.title == "【即时授予】滨海新区工人先锋号：开发区焊接一队（焊工团体赛第一名，开发区工会）"
    )
    assert "获奖团队：开发区焊接一队（开发区工会）" in zh.body.splitlines()
    assert "团队成员：李四、王五" in zh.body.splitlines()
    en = render_message(decision, "en")
    assert en.title.startswith("[Immediate award] Worker Pioneer — 开发区焊接一队 (1st,")
    assert "Team members: 李四, 王五" in en.body.splitlines()


def test_organisation_award_to_a_union_without_event_or_rank() -> None:
    union = Recipient(
        kind=RecipientKind.UNION,
        recipient_id="union-devzone",
        name="开发区工会",
        union_id="union-devzone",
        union_name="开发区工会",
    )
    decision = granted(
        award_type=AwardType.ORGANISATION_AWARD, recipient=union, rank=None, event=None
    )
    assert render_message(decision).title == "【即时授予】滨海新区优秀组织奖：开发区工会"
    assert render_message(decision, "en").title == (
        "[Immediate award] Excellent Organisation Award — 开发区工会, 滨海新区"
    )


@pytest.mark.parametrize(
    ("rank", "text"),
    [(1, "第一名"), (2, "第二名"), (3, "第三名"), (6, "第六名"), (10, "第十名"), (11, "第11名"),
     (123, "第123名")],
)  # fmt: skip
def test_chinese_ranks(rank: int, text: str) -> None:
    assert chinese_rank(rank) == text


def test_lower_ranks_in_titles() -> None:
    assert "叉车司机竞赛第三名" in render_message(granted(rank=3)).title
    assert "叉车司机竞赛第12名" in render_message(granted(rank=12)).title


@pytest.mark.parametrize(
    ("rank", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"),
     (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")],
)  # fmt: skip
def test_english_ordinals(rank: int, text: str) -> None:
    assert english_ordinal(rank) == text


def test_ranks_start_at_one() -> None:
    with pytest.raises(ValueError):
        chinese_rank(0)
    with pytest.raises(ValueError):
        english_ordinal(0)


def test_webhook_document_carries_the_payload_and_the_texts() -> None:
    decision = granted()
    message = render_message(decision, "en")
    document = message.document
    assert document == {
        **decision.payload.model_dump(mode="json"),
        "event_type": "AwardGranted",
        "decision_event_id": str(decision.event_id),
        "title": message.title,
        "body": message.body,
        "language": "en",
    }
    assert document["recipient"]["name"] == "张三"
    assert document["publicity_ends_on"] == "2026-05-08"


# --- webhook signatures ---------------------------------------------------------------------

SECRET = "webhook-secret-0123456789"


@given(body=st.binary(max_size=2000))
def test_signature_round_trip(body: bytes) -> None:
    header = sign(SECRET, body)
    assert header.startswith("sha256=") and len(header) == len("sha256=") + 64
    assert verify_signature(SECRET, body, header)
    assert verify_signature(SECRET.encode(), body, header)


@given(body=st.binary(min_size=1, max_size=500), data=st.data())
def test_any_tampered_byte_breaks_the_signature(body: bytes, data: st.DataObject) -> None:
    header = sign(SECRET, body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert not verify_signature(SECRET, tampered, header)


def test_signature_rejects_wrong_secret_and_malformed_headers() -> None:
    body = '{"title":"【即时授予】"}'.encode()
    header = sign(SECRET, body)
    assert not verify_signature("another-secret-0123456789", body, header)
    assert not verify_signature(SECRET, body, None)
    assert not verify_signature(SECRET, body, "")
    assert not verify_signature(SECRET, body, header.removeprefix("sha256="))
    assert not verify_signature(SECRET, body, "sha1=" + header.removeprefix("sha256="))
    assert not verify_signature(SECRET, body, header[:-1])
