"""MongoDB adapter of the scoring service: everything the in-memory event state is rebuilt from.

Collections:
- `events`: one document per competition event (`_id` = event id) from `EventPublished`, kept
  verbatim as JSON, plus `result_version` (0 until finalised).
- `entries`: the roster (`_id` = entry id), with `status` registered or withdrawn.
- `panels`: the judging panel of an event (`_id` = event id).
- `marks`: append-only; unique (event_id, mark_id) makes a resubmission safe across restarts,
  and unique (event_id, seq) makes a second writer of the same event fail instead of
  interleaving (the service then reloads and retries).
- `resolutions`: the chief judges' divergence resolutions.
- `results`: every published result version (`_id` = "<event id>:<version>").
- `idempotency`: the first response to each `Idempotency-Key` (see `idempotency.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel

from shared.events import EventPublishedPayload, EventResultsPayload, Member
from shared.mongo import Database, Doc, Session

from .domain import JudgePanel, Mark, Resolution, RosterEntry

EVENTS = "events"
ENTRIES = "entries"
PANELS = "panels"
MARKS = "marks"
RESOLUTIONS = "resolutions"
RESULTS = "results"
IDEMPOTENCY = "idempotency"

# What `jinchui replay scoring` may clear and rebuild from registration.entries: the roster.
# Events carry the result version and marks are the source of truth, so they stay.
DERIVED_COLLECTIONS: tuple[str, ...] = (ENTRIES,)

REGISTERED = "registered"
WITHDRAWN = "withdrawn"

INDEXES: dict[str, Sequence[IndexModel]] = {
    EVENTS: [IndexModel([("competition_id", ASCENDING)])],
    ENTRIES: [IndexModel([("event_id", ASCENDING)])],
    MARKS: [
        IndexModel([("event_id", ASCENDING), ("mark_id", ASCENDING)], unique=True),
        IndexModel([("event_id", ASCENDING), ("seq", ASCENDING)], unique=True),
        IndexModel([("entry_id", ASCENDING), ("seq", ASCENDING)]),
    ],
    RESOLUTIONS: [IndexModel([("event_id", ASCENDING), ("resolved_at", ASCENDING)])],
    RESULTS: [IndexModel([("event_id", ASCENDING), ("version", ASCENDING)], unique=True)],
    IDEMPOTENCY: [IndexModel([("at", ASCENDING)], expireAfterSeconds=7 * 24 * 3600)],
}


def mark_document(event_id: str, seq: int, mark: Mark) -> Doc:
    return {
        "event_id": event_id,
        "seq": seq,
        "mark_id": mark.mark_id,
        "judge_id": mark.judge_id,
        "entry_id": mark.entry_id,
        "member_id": mark.member_id,
        "component": mark.component,
        "value": mark.value,
        "supersedes": mark.supersedes,
        "reason": mark.reason,
        "recorded_at": mark.recorded_at,
    }


def mark_of(doc: Doc) -> Mark:
    return Mark(
        mark_id=doc["mark_id"],
        judge_id=doc["judge_id"],
        entry_id=doc["entry_id"],
        member_id=doc.get("member_id"),
        component=doc["component"],
        value=doc["value"],
        supersedes=doc.get("supersedes"),
        reason=doc.get("reason", ""),
        recorded_at=doc["recorded_at"],
    )


def roster_entry_of(doc: Doc) -> RosterEntry:
    return RosterEntry(
        entry_id=doc["_id"],
        union_id=doc["union_id"],
        union_name=doc["union_name"],
        team_name=doc.get("team_name", ""),
        members=tuple(Member.model_validate(m) for m in doc["members"]),
    )


def panel_of(doc: Doc) -> JudgePanel:
    return JudgePanel(
        event_id=doc["_id"],
        chief_judge_id=doc["chief_judge_id"],
        judges={j["judge_id"]: j.get("union_id") for j in doc["judges"]},
    )


def resolution_of(doc: Doc) -> Resolution:
    return Resolution(
        entry_id=doc["entry_id"],
        member_id=doc.get("member_id"),
        component=doc["component"],
        resolved_by=doc["resolved_by"],
        note=doc["note"],
        covered_mark_ids=frozenset(doc["covered_mark_ids"]),
        resolved_at=doc["resolved_at"],
    )


class EventRecord:
    """What `load_event` returns: every stored fact about one event, ready for the state."""

    def __init__(
        self,
        published: EventPublishedPayload | None,
        result_version: int,
        panel: JudgePanel | None,
        roster: list[RosterEntry],
        withdrawn: set[str],
        marks: list[Mark],
        resolutions: list[Resolution],
    ) -> None:
        self.published = published
        self.result_version = result_version
        self.panel = panel
        self.roster = roster
        self.withdrawn = withdrawn
        self.marks = marks
        self.resolutions = resolutions

    @property
    def known(self) -> bool:
        return self.published is not None or self.panel is not None or bool(self.roster)


class ScoringRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- reads --------------------------------------------------------------------------

    async def load_event(self, event_id: str) -> EventRecord:
        event_doc = await self.db[EVENTS].find_one({"_id": event_id})
        panel_doc = await self.db[PANELS].find_one({"_id": event_id})
        entry_docs = await self.db[ENTRIES].find({"event_id": event_id}).sort("_id", 1).to_list()
        mark_docs = await self.db[MARKS].find({"event_id": event_id}).sort("seq", 1).to_list()
        resolution_docs = (
            await self.db[RESOLUTIONS].find({"event_id": event_id}).sort("resolved_at", 1).to_list()
        )
        published = (
            EventPublishedPayload.model_validate_json(event_doc["published"])
            if event_doc and event_doc.get("published")
            else None
        )
        return EventRecord(
            published=published,
            result_version=int(event_doc.get("result_version", 0)) if event_doc else 0,
            panel=panel_of(panel_doc) if panel_doc else None,
            roster=[roster_entry_of(d) for d in entry_docs if d["status"] == REGISTERED],
            withdrawn={d["_id"] for d in entry_docs if d["status"] == WITHDRAWN},
            marks=[mark_of(d) for d in mark_docs],
            resolutions=[resolution_of(d) for d in resolution_docs],
        )

    async def event_ids_of_competition(self, competition_id: str) -> list[str]:
        docs = await self.db[EVENTS].find({"competition_id": competition_id}, {"_id": 1}).to_list()
        return sorted(d["_id"] for d in docs)

    async def entry_event_id(self, entry_id: str) -> str | None:
        doc = await self.db[ENTRIES].find_one({"_id": entry_id}, {"event_id": 1})
        if doc is not None:
            return str(doc["event_id"])
        mark = await self.db[MARKS].find_one({"entry_id": entry_id}, {"event_id": 1})
        return str(mark["event_id"]) if mark else None

    async def mark_history(self, entry_id: str) -> list[Doc]:
        return (
            await self.db[MARKS].find({"entry_id": entry_id}, {"_id": 0}).sort("seq", 1).to_list()
        )

    async def results(self, event_id: str) -> list[Doc]:
        return await self.db[RESULTS].find({"event_id": event_id}).sort("version", 1).to_list()

    # --- writes (each inside the caller's transaction) ----------------------------------

    async def save_published(self, payload: EventPublishedPayload, session: Session) -> None:
        await self.db[EVENTS].update_one(
            {"_id": payload.event.event_id},
            {
                "$set": {
                    "competition_id": payload.competition.competition_id,
                    "published": payload.model_dump_json(),
                },
                "$setOnInsert": {"result_version": 0},
            },
            upsert=True,
            session=session,
        )

    async def save_entry(
        self, event_id: str, competition_id: str, entry: RosterEntry, at: datetime, session: Session
    ) -> None:
        await self.db[ENTRIES].replace_one(
            {"_id": entry.entry_id},
            {
                "_id": entry.entry_id,
                "event_id": event_id,
                "competition_id": competition_id,
                "union_id": entry.union_id,
                "union_name": entry.union_name,
                "team_name": entry.team_name,
                "members": [m.model_dump(mode="json") for m in entry.members],
                "status": REGISTERED,
                "registered_at": at,
            },
            upsert=True,
            session=session,
        )

    async def withdraw_entry(
        self, entry_id: str, event_id: str, reason: str, at: datetime, session: Session
    ) -> None:
        await self.db[ENTRIES].update_one(
            {"_id": entry_id},
            {
                "$set": {"status": WITHDRAWN, "withdrawn_at": at, "withdraw_reason": reason},
                "$setOnInsert": {"event_id": event_id},
            },
            upsert=True,
            session=session,
        )

    async def save_panel(self, panel: JudgePanel, at: datetime, session: Session) -> None:
        await self.db[PANELS].replace_one(
            {"_id": panel.event_id},
            {
                "_id": panel.event_id,
                "chief_judge_id": panel.chief_judge_id,
                "judges": [{"judge_id": j, "union_id": u} for j, u in panel.judges.items()],
                "updated_at": at,
            },
            upsert=True,
            session=session,
        )

    async def insert_marks(
        self, event_id: str, first_seq: int, marks: Sequence[Mark], session: Session
    ) -> None:
        if marks:
            await self.db[MARKS].insert_many(
                [mark_document(event_id, first_seq + i, m) for i, m in enumerate(marks)],
                ordered=True,
                session=session,
            )

    async def save_resolution(
        self, event_id: str, resolution: Resolution, session: Session
    ) -> None:
        await self.db[RESOLUTIONS].insert_one(
            {
                "event_id": event_id,
                "entry_id": resolution.entry_id,
                "member_id": resolution.member_id,
                "component": resolution.component,
                "resolved_by": resolution.resolved_by,
                "note": resolution.note,
                "covered_mark_ids": sorted(resolution.covered_mark_ids),
                "resolved_at": resolution.resolved_at,
            },
            session=session,
        )

    async def save_result(
        self, event_type: str, payload: EventResultsPayload, session: Session
    ) -> None:
        event_id = payload.event.event_id
        document: dict[str, Any] = {
            "_id": f"{event_id}:{payload.version}",
            "event_id": event_id,
            "competition_id": payload.competition.competition_id,
            "version": payload.version,
            "event_type": event_type,
            "reason": payload.reason,
            "finalised_by": payload.finalised_by,
            "finalised_at": payload.finalised_at,
            "payload": payload.model_dump_json(),
        }
        await self.db[RESULTS].insert_one(document, session=session)
        await self.db[EVENTS].update_one(
            {"_id": event_id}, {"$set": {"result_version": payload.version}}, session=session
        )
