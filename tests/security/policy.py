"""Who may call what: the authorisation policy of every HTTP endpoint, as data.

Built from docs/http-api.md. The matrix test enumerates each service's OpenAPI document and
fails for any endpoint missing here, so a new endpoint must declare who may call it.

A rule names the roles admitted (None = public, no token needed), and where the endpoint
checks object scope: the kind (`union`, `event`, `competition`) and where the scoped value
comes from (`path`, `query` or `body`: the caller names it, so the service can refuse with 403
before looking anything up; `object`: the scope is the stored object's, so an unknown or
foreign object may be hidden as 404 instead of refused with 403; `rows`: a bulk import checks
each row, so a foreign union's rows are refused either with 403 or with 200 and no row accepted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.auth import Role

ScopeKind = Literal["union", "event", "competition"]
ScopeSource = Literal["path", "query", "body", "object", "rows"]

ANY: frozenset[Role] = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})


@dataclass(frozen=True)
class Ids:
    """The ids the matrix puts in paths, queries and bodies; unique per test session."""

    competition: str
    event: str
    union: str
    other_union: str
    other_event: str
    worker: str
    entry: str
    leader: str
    judge: str
    chief_judge: str
    award: str
    mark: str
    # Suffix of the ids of objects a request creates; hostile-input tests vary it per request
    # so that a refusal is not masked by a conflict with an earlier request.
    fresh: str = "x"


BodyOf = Callable[[Ids], Any]


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role] | None
    scope: ScopeKind | None = None
    scope_from: ScopeSource | None = None
    body: BodyOf | None = None
    content_type: str = "application/json"
    query: Callable[[Ids], dict[str, str]] | None = None
    # Server-sent events: read the status line and hang up.
    stream: bool = False
    path_values: dict[str, str] = field(default_factory=dict)

    @property
    def public(self) -> bool:
        return self.roles is None


def roles(*admitted: Role) -> frozenset[Role]:
    return frozenset(admitted)


# --- sample bodies: valid enough that scope checks are reached ------------------------------


def competition_body(ids: Ids) -> dict[str, Any]:
    return {
        "competition_id": f"{ids.competition}-{ids.fresh}",
        "name": "安全测试赛",
        "year": 2026,
        "level": "district",
        "registration_opens_at": "2026-01-01T00:00:00Z",
        "registration_closes_at": "2099-12-31T00:00:00Z",
    }


def event_body(ids: Ids) -> dict[str, Any]:
    return {
        "event_id": f"{ids.event}-{ids.fresh}",
        "name": "叉车",
        "trade": "叉车司机",
        "format": "individual",
        "quota_per_union": 10,
        "minimum_entrants": 1,
        "starts_at": "2099-12-31T00:00:00Z",
    }


def workers_body(ids: Ids) -> dict[str, Any]:
    return {
        "workers": [
            {
                "worker_id": f"{ids.worker}-{ids.fresh}",
                "name": "李四",
                "employer": "某公司",
                "job": "叉车司机",
                "front_line": True,
                "national_id": "11010519491231002X",
            }
        ]
    }


def entry_body(ids: Ids) -> dict[str, Any]:
    return {"event_id": ids.event, "union_id": ids.union, "worker_ids": [ids.worker]}


def import_body(ids: Ids) -> str:
    return f"event_id,union_id,team_name,worker_ids\n{ids.event},{ids.union},,{ids.worker}\n"


def panel_body(ids: Ids) -> dict[str, Any]:
    return {
        "chief_judge_id": ids.chief_judge,
        "judges": [
            {"judge_id": ids.judge, "union_id": ids.other_union},
            {"judge_id": ids.chief_judge, "union_id": ids.other_union},
        ],
    }


def mark_body(ids: Ids) -> dict[str, Any]:
    return {
        "mark_id": f"{ids.mark}-{ids.fresh}",
        "entry_id": ids.entry,
        "component": "practical",
        "value": "80",
    }


def dry_run_body(ids: Ids) -> dict[str, Any]:
    return {
        "result": {
            "competition": {
                "competition_id": ids.competition,
                "name": "安全测试赛",
                "year": 2026,
                "level": "district",
            },
            "event": {
                "event_id": ids.event,
                "name": "叉车",
                "trade": "叉车司机",
                "format": "individual",
            },
            "version": 1,
            "entrants": 0,
            "lines": [],
            "finalised_by": ids.chief_judge,
            "finalised_at": "2026-05-01T00:00:00Z",
        }
    }


def subscription_body(ids: Ids) -> dict[str, Any]:
    return {
        "name": "王主席",
        "role": "federation",
        "channels": {"live_feed": True},
        "language": "zh",
    }


UNION_OFFICER_ADMIN = roles(Role.UNION_OFFICER, Role.ADMIN)
ENTRY_READERS = roles(Role.UNION_OFFICER, Role.ADMIN, Role.LEADER)
MARKERS = roles(Role.JUDGE, Role.CHIEF_JUDGE)
PUBLIC = Rule(roles=None)

COMMON: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/asyncapi.json"): PUBLIC,
}

# Served by FastAPI itself, outside the OpenAPI paths; must answer without a token.
PUBLIC_OUTSIDE_OPENAPI: tuple[str, ...] = ("/openapi.json", "/docs", "/redoc")

POLICY: dict[str, dict[tuple[str, str], Rule]] = {
    "registration": {
        **COMMON,
        ("POST", "/competitions"): Rule(ADMIN, body=competition_body),
        ("PUT", "/competitions/{competition_id}"): Rule(ADMIN, body=competition_body),
        ("GET", "/competitions/{competition_id}"): Rule(ANY),
        ("POST", "/competitions/{competition_id}/events"): Rule(ADMIN, body=event_body),
        ("PUT", "/competitions/{competition_id}/events/{event_id}"): Rule(ADMIN, body=event_body),
        ("POST", "/unions"): Rule(
            ADMIN, body=lambda ids: {"union_id": f"{ids.union}-{ids.fresh}", "name": "工会"}
        ),
        ("POST", "/unions/{union_id}/workers"): Rule(
            UNION_OFFICER_ADMIN, scope="union", scope_from="path", body=workers_body
        ),
        ("GET", "/unions/{union_id}/workers"): Rule(
            UNION_OFFICER_ADMIN, scope="union", scope_from="path"
        ),
        ("POST", "/entries"): Rule(
            UNION_OFFICER_ADMIN, scope="union", scope_from="body", body=entry_body
        ),
        ("GET", "/entries"): Rule(
            ENTRY_READERS,
            scope="union",
            scope_from="query",
            query=lambda ids: {"union_id": ids.union, "event_id": ids.event},
        ),
        ("GET", "/entries/{entry_id}"): Rule(ENTRY_READERS, scope="union", scope_from="object"),
        ("POST", "/entries/{entry_id}/withdraw"): Rule(
            UNION_OFFICER_ADMIN,
            scope="union",
            scope_from="object",
            body=lambda ids: {"reason": "安全测试"},
        ),
        ("POST", "/entries/import"): Rule(
            UNION_OFFICER_ADMIN,
            scope="union",
            scope_from="rows",
            body=import_body,
            content_type="text/csv",
            query=lambda ids: {"mode": "all_or_nothing", "format": "csv"},
        ),
    },
    "scoring": {
        **COMMON,
        ("PUT", "/events/{event_id}/panel"): Rule(ADMIN, body=panel_body),
        # A chief judge may mark too, when the panel also lists them as a judge.
        ("POST", "/events/{event_id}/marks"): Rule(
            MARKERS, scope="event", scope_from="path", body=mark_body
        ),
        ("POST", "/events/{event_id}/marks/batch"): Rule(
            MARKERS,
            scope="event",
            scope_from="path",
            body=lambda ids: {"marks": [mark_body(ids)]},
        ),
        ("POST", "/events/{event_id}/theory-import"): Rule(
            roles(Role.CHIEF_JUDGE, Role.ADMIN),
            scope="event",
            scope_from="path",
            body=lambda ids: f"entry_id,member_id,score\n{ids.entry},,75\n",
            content_type="text/csv",
        ),
        ("GET", "/events/{event_id}/standings"): Rule(ANY),
        ("GET", "/events/{event_id}/standings/stream"): Rule(ANY, stream=True),
        # Stricter than docs/http-api.md: judges see the marks of their own events only.
        ("GET", "/entries/{entry_id}/marks"): Rule(
            roles(Role.JUDGE, Role.CHIEF_JUDGE, Role.ADMIN), scope="event", scope_from="object"
        ),
        ("POST", "/events/{event_id}/flags/{entry_id}/resolve"): Rule(
            roles(Role.CHIEF_JUDGE),
            scope="event",
            scope_from="path",
            body=lambda ids: {"component": "practical", "note": "安全测试"},
        ),
        ("POST", "/events/{event_id}/finalise"): Rule(
            roles(Role.CHIEF_JUDGE), scope="event", scope_from="path", body=lambda ids: {}
        ),
        ("POST", "/events/{event_id}/amend"): Rule(
            roles(Role.CHIEF_JUDGE),
            scope="event",
            scope_from="path",
            body=lambda ids: {"reason": "安全测试"},
        ),
        ("GET", "/competitions/{competition_id}/report"): Rule(roles(Role.ADMIN, Role.LEADER)),
        ("GET", "/competitions/{competition_id}/report.png"): Rule(roles(Role.ADMIN, Role.LEADER)),
    },
    "awards": {
        **COMMON,
        ("GET", "/awards"): Rule(
            ENTRY_READERS,
            scope="union",
            scope_from="query",
            query=lambda ids: {"union_id": ids.union},
        ),
        ("GET", "/awards/{award_id}"): Rule(ENTRY_READERS, scope="union", scope_from="object"),
        ("GET", "/policies"): Rule(ANY),
        ("POST", "/policies/dry-run"): Rule(roles(Role.ADMIN, Role.CHIEF_JUDGE), body=dry_run_body),
    },
    "notifications": {
        **COMMON,
        ("PUT", "/subscriptions/{leader_id}"): Rule(ADMIN, body=subscription_body),
        ("GET", "/subscriptions"): Rule(ADMIN),
        ("GET", "/deliveries"): Rule(roles(Role.ADMIN, Role.LEADER)),
        ("GET", "/feed"): Rule(None, stream=True),
        ("GET", "/standings"): PUBLIC,
        ("GET", "/standings/stream"): Rule(None, stream=True),
    },
}

# Public pages a service serves outside its OpenAPI document.
EXTRA_PUBLIC: dict[str, tuple[str, ...]] = {"notifications": ("/",)}
