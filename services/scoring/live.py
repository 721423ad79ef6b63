"""The in-memory state of one competition event: roster, panel, marks, cached entry scores.

No I/O here. The service loads an `EventState` from Mongo on first use and keeps it in step with
every write it commits (the write path holds the event's lock). Scores are recomputed only for
the entries a change touched, and only when someone reads the standings (a GET, the SSE stream
or the throttled `StandingsUpdated` publisher), never per mark: that is what lets a stream of
thousands of marks a second cost one dictionary update each.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from shared.events import (
    EventPublishedPayload,
    ScoringComponent,
    ScoringScheme,
    StandingsUpdatedPayload,
    utc_now,
)

from .domain import (
    EntryScore,
    JudgePanel,
    Mark,
    MarkBook,
    Resolution,
    RosterEntry,
    Standings,
    build_standings,
    entry_score,
    to_result_lines,
)

DEFAULT_SCHEME = ScoringScheme()


def decimal_text(value: Decimal) -> str:
    return f"{value:.2f}"


class EventState:
    def __init__(
        self,
        event_id: str,
        *,
        published: EventPublishedPayload | None = None,
        result_version: int = 0,
        panel: JudgePanel | None = None,
        roster: Iterable[RosterEntry] = (),
        withdrawn: Iterable[str] = (),
        marks: Iterable[Mark] = (),
        resolutions: Iterable[Resolution] = (),
    ) -> None:
        self.event_id = event_id
        self.published = published
        self.result_version = result_version
        self.panel = panel
        self.roster: dict[str, RosterEntry] = {e.entry_id: e for e in roster}
        self.withdrawn: set[str] = set(withdrawn)
        self.book = MarkBook(marks)
        self.resolutions: dict[str, list[Resolution]] = defaultdict(list)
        for resolution in resolutions:
            self.resolutions[resolution.entry_id].append(resolution)
        self._scores: dict[str, EntryScore] = {}
        self._dirty: set[str] = set(self.roster)
        self._standings: Standings | None = None
        self._view: dict[str, Any] | None = None
        self.revision = 0
        self._changed = asyncio.Event()

    # --- facts --------------------------------------------------------------------------

    @property
    def scheme(self) -> ScoringScheme:
        return self.published.scheme if self.published else DEFAULT_SCHEME

    @property
    def next_seq(self) -> int:
        return len(self.book) + 1

    def exam_component(self) -> ScoringComponent | None:
        """The component imported from the exam system: the scheme's first non-panel one."""
        return next((c for c in self.scheme.components if not c.panel), None)

    # --- changes (the caller has committed them to Mongo, or is about to) ----------------

    def touch(self, entry_ids: Iterable[str]) -> None:
        self._dirty.update(entry_ids)
        self._changed_now()

    def touch_all(self) -> None:
        self._dirty.update(self.roster)
        self._changed_now()

    def set_published(self, payload: EventPublishedPayload) -> None:
        self.published = payload
        self.touch_all()

    def set_panel(self, panel: JudgePanel) -> None:
        self.panel = panel
        self._changed_now()

    def register(self, entry: RosterEntry) -> None:
        self.roster[entry.entry_id] = entry
        self.withdrawn.discard(entry.entry_id)
        self.touch([entry.entry_id])

    def withdraw(self, entry_id: str) -> None:
        self.roster.pop(entry_id, None)
        self._scores.pop(entry_id, None)
        self._dirty.discard(entry_id)
        self.withdrawn.add(entry_id)
        self._changed_now()

    def add_resolution(self, resolution: Resolution) -> None:
        self.resolutions[resolution.entry_id].append(resolution)
        self.touch([resolution.entry_id])

    def _changed_now(self) -> None:
        self.revision += 1
        self._standings = None
        self._view = None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, seen_revision: int, timeout: float) -> bool:
        """True once the revision moved past `seen_revision`; False after `timeout`."""
        if self.revision != seen_revision:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- standings ----------------------------------------------------------------------

    def standings(self) -> Standings:
        if self._standings is None:
            scheme = self.scheme
            for entry_id in self._dirty:
                entry = self.roster.get(entry_id)
                if entry is not None:
                    self._scores[entry_id] = entry_score(
                        scheme,
                        entry,
                        self.book.history(entry_id),
                        self.resolutions.get(entry_id, ()),
                    )
            self._dirty.clear()
            self._standings = build_standings(
                scheme, (self._scores[e] for e in self.roster if e in self._scores)
            )
        return self._standings

    def entry_score(self, entry_id: str) -> EntryScore | None:
        self.standings()
        return self._scores.get(entry_id)

    def view(self) -> dict[str, Any]:
        """The JSON of GET /events/{id}/standings (cached until the next change)."""
        if self._view is None:
            self._view = self._build_view()
        return self._view

    def _build_view(self) -> dict[str, Any]:
        standings = self.standings()
        lines = []
        for line in standings.lines:
            entry = self.roster[line.entry_id]
            scores_by_member = {m.member_id: m for m in line.members}
            members = []
            for member in entry.members:
                shown: dict[str, Any] = member.model_dump(mode="json")
                score = scores_by_member.get(member.worker_id)
                if score is not None:
                    shown["total"] = decimal_text(score.total)
                    shown["components"] = {k: decimal_text(v) for k, v in score.components.items()}
                    shown["qualified"] = score.qualified
                    shown["complete"] = score.complete
                members.append(shown)
            lines.append(
                {
                    "entry_id": line.entry_id,
                    "rank": line.rank,
                    "total": decimal_text(line.total),
                    "components": {k: decimal_text(v) for k, v in line.components.items()},
                    "qualified": line.qualified,
                    "complete": line.complete,
                    "flagged": line.flagged,
                    "union_id": entry.union_id,
                    "union_name": entry.union_name,
                    "team_name": entry.team_name,
                    "members": members,
                    "mark_ids": list(line.mark_ids),
                }
            )
        published = self.published
        return {
            "event_id": self.event_id,
            "known": published is not None,
            "competition_id": published.competition.competition_id if published else None,
            "event_name": published.event.name if published else None,
            "result_version": self.result_version,
            "revision": self.revision,
            "lines": lines,
            "flagged_entries": list(standings.flagged_entries),
            "flags": [
                {
                    "entry_id": flag.entry_id,
                    "member_id": flag.member_id,
                    "component": flag.component,
                    "spread": decimal_text(flag.spread),
                    "mark_ids": list(flag.mark_ids),
                }
                for flag in standings.flags
            ],
            "can_finalise": standings.can_finalise,
            "blocking_reasons": list(standings.blocking_reasons),
            "incomplete_entries": list(standings.incomplete_entries),
            "marks_counted": standings.marks_counted,
            "marks_recorded": len(self.book),
            "as_of": utc_now().isoformat(),
        }

    def standings_payload(self) -> StandingsUpdatedPayload | None:
        """The `StandingsUpdated` contract, once the event is published."""
        if self.published is None:
            return None
        standings = self.standings()
        return StandingsUpdatedPayload(
            competition=self.published.competition,
            event=self.published.event,
            lines=to_result_lines(standings, list(self.roster.values())),
            marks_counted=standings.marks_counted,
            flagged_entries=standings.flagged_entries,
            as_of=utc_now(),
        )
