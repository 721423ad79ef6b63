"""Message texts for award decisions: Chinese by default, English on request.

The title is the one line a leader reads on a phone lock screen, so it carries the whole news:
the kind of decision, the competition, the award, who, for what and which union. The body adds
the details an officer checks (certificate number, publicity period, team members, result
version). Pure functions of the decision event.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.events import (
    AwardGranted,
    AwardGrantedPayload,
    AwardRevokedPayload,
    AwardType,
    CompetitionLevel,
    RecipientKind,
)

from .domain import Decision, DecisionKind, Language, decision_kind

# Award ceremonies, publicity periods and leaders all run on Beijing time (no DST).
CHINA_TIME = timezone(timedelta(hours=8), "CST")

AWARD_NAMES: dict[Language, dict[AwardType, str]] = {
    "zh": {
        AwardType.MAY_DAY_LABOUR_MEDAL: "五一劳动奖章",
        AwardType.WORKER_PIONEER: "工人先锋号",
        AwardType.TECHNICAL_EXPERT: "技术能手",
        AwardType.EXCELLENT_CONTESTANT: "优秀选手",
        AwardType.ORGANISATION_AWARD: "优秀组织奖",
    },
    "en": {
        AwardType.MAY_DAY_LABOUR_MEDAL: "May Day Labour Medal",
        AwardType.WORKER_PIONEER: "Worker Pioneer",
        AwardType.TECHNICAL_EXPERT: "Technical Expert",
        AwardType.EXCELLENT_CONTESTANT: "Excellent Contestant",
        AwardType.ORGANISATION_AWARD: "Excellent Organisation Award",
    },
}

LEVEL_NAMES: dict[Language, dict[CompetitionLevel, str]] = {
    "zh": {
        CompetitionLevel.NATIONAL: "全国级",
        CompetitionLevel.PROVINCIAL: "省级",
        CompetitionLevel.CITY: "市级",
        CompetitionLevel.DISTRICT: "区级",
        CompetitionLevel.ENTERPRISE: "企业级",
    },
    "en": {level: level.value for level in CompetitionLevel},
}

PREFIXES: dict[Language, dict[DecisionKind, str]] = {
    "zh": {"granted": "【即时授予】", "revoked": "【撤销】"},
    "en": {"granted": "[Immediate award] ", "revoked": "[Revoked] "},
}

_CHINESE_DIGITS = ("一", "二", "三", "四", "五", "六", "七", "八", "九", "十")


class RenderedMessage(BaseModel):
    """What every channel sends: a title, a plain-text body, and the webhook's JSON document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    body: str
    language: Language
    kind: DecisionKind
    document: dict[str, Any]


def chinese_rank(rank: int) -> str:
    """第一名 … 第十名, then 第11名: the way result lists and certificates write ranks."""
    if rank < 1:
        raise ValueError("ranks start at 1")
    if rank <= len(_CHINESE_DIGITS):
        return f"第{_CHINESE_DIGITS[rank - 1]}名"
    return f"第{rank}名"


def english_ordinal(rank: int) -> str:
    if rank < 1:
        raise ValueError("ranks start at 1")
    if rank % 100 in (11, 12, 13):
        return f"{rank}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


def _rank_of(payload: AwardGrantedPayload | AwardRevokedPayload) -> int | None:
    # A revocation carries no rank: the rank that earned the award is exactly what changed.
    return payload.rank if isinstance(payload, AwardGrantedPayload) else None


def _recipient_is_union(payload: AwardGrantedPayload | AwardRevokedPayload) -> bool:
    return payload.recipient.kind is RecipientKind.UNION


def render_title(decision: Decision, language: Language = "zh") -> str:
    payload = decision.payload
    kind = decision_kind(decision)
    award = AWARD_NAMES[language][payload.award_type]
    recipient = payload.recipient
    rank = _rank_of(payload)
    event_name = payload.event.name if payload.event else ""
    prefix = PREFIXES[language][kind]
    if language == "zh":
        details = []
        if event_name or rank is not None:
            details.append(event_name + (chinese_rank(rank) if rank is not None else ""))
        if not _recipient_is_union(payload):
            details.append(recipient.union_name)
        suffix = f"（{'，'.join(details)}）" if details else ""
        return f"{prefix}{payload.competition.name}{award}：{recipient.name}{suffix}"
    parts = []
    if rank is not None:
        parts.append(english_ordinal(rank))
    if event_name:
        parts.append(f"{event_name} contest")
    if not _recipient_is_union(payload):
        parts.append(recipient.union_name)
    suffix = f" ({', '.join(parts)})" if parts else ""
    return f"{prefix}{award} — {recipient.name}{suffix}, {payload.competition.name}"


def _zh_date(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def _local_time(moment: datetime) -> str:
    return moment.astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M")


def render_body(decision: Decision, language: Language = "zh") -> str:
    payload = decision.payload
    competition = payload.competition
    recipient = payload.recipient
    rank = _rank_of(payload)
    members = "、" if language == "zh" else ", "
    member_names = members.join(member.name for member in recipient.members)
    is_team = recipient.kind is RecipientKind.TEAM
    lines: list[str]
    if language == "zh":
        lines = [
            f"奖项：{AWARD_NAMES['zh'][payload.award_type]}",
            f"{'获奖团队' if is_team else '获奖者'}：{recipient.name}（{recipient.union_name}）",
        ]
        if is_team and member_names:
            lines.append(f"团队成员：{member_names}")
        lines.append(
            f"竞赛：{competition.name}（{competition.year}年，"
            f"{LEVEL_NAMES['zh'][competition.level]}）"
        )
        if payload.event:
            lines.append(f"项目：{payload.event.name}（{payload.event.trade}）")
        if rank is not None:
            lines.append(f"名次：{chinese_rank(rank)}")
        lines.append(f"证书编号：{payload.certificate_no}")
        if isinstance(payload, AwardGrantedPayload):
            lines.append(f"公示截止：{_zh_date(payload.publicity_ends_on)}")
            lines.append(f"依据成绩：第{payload.result_version}版")
            lines.append(f"授予时间：{_local_time(payload.granted_at)}（北京时间）")
        else:
            lines.append(f"撤销依据：{payload.reason.rule}（成绩第{payload.result_version}版）")
            lines.append(f"撤销时间：{_local_time(payload.revoked_at)}（北京时间）")
    else:
        lines = [
            f"Award: {AWARD_NAMES['en'][payload.award_type]}",
            f"{'Team' if is_team else 'Recipient'}: {recipient.name} ({recipient.union_name})",
        ]
        if is_team and member_names:
            lines.append(f"Team members: {member_names}")
        lines.append(
            f"Competition: {competition.name} ({competition.year}, "
            f"{LEVEL_NAMES['en'][competition.level]} level)"
        )
        if payload.event:
            lines.append(f"Event: {payload.event.name} ({payload.event.trade})")
        if rank is not None:
            lines.append(f"Rank: {english_ordinal(rank)}")
        lines.append(f"Certificate no.: {payload.certificate_no}")
        if isinstance(payload, AwardGrantedPayload):
            lines.append(f"Publicity period ends: {payload.publicity_ends_on.isoformat()}")
            lines.append(f"Based on results version {payload.result_version}")
            lines.append(f"Granted at: {_local_time(payload.granted_at)} (Beijing time)")
        else:
            lines.append(
                f"Revoked under rule {payload.reason.rule} "
                f"(results version {payload.result_version})"
            )
            lines.append(f"Revoked at: {_local_time(payload.revoked_at)} (Beijing time)")
    return "\n".join([render_title(decision, language), "", *lines])


def webhook_document(
    decision: Decision, title: str, body: str, language: Language
) -> dict[str, Any]:
    """The webhook's JSON: the decision payload's fields plus the rendered texts.

    `event_type` and `decision_event_id` let a receiver tell a grant from a revocation and
    match it to the awards service's audit trail without parsing the text.
    """
    document: dict[str, Any] = decision.payload.model_dump(mode="json")
    document.update(
        event_type="AwardGranted" if isinstance(decision, AwardGranted) else "AwardRevoked",
        decision_event_id=str(decision.event_id),
        title=title,
        body=body,
        language=language,
    )
    return document


def render_message(decision: Decision, language: Language = "zh") -> RenderedMessage:
    title = render_title(decision, language)
    body = render_body(decision, language)
    return RenderedMessage(
        title=title,
        body=body,
        language=language,
        kind=decision_kind(decision),
        document=webhook_document(decision, title, body, language),
    )
