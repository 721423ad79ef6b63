"""The awards service's MongoDB adapter: awards, applied results, competitions, counters.

Every write takes the caller's transaction `session`. Two unique indexes are the last line of
defence behind the engine: one standing award per award key, and one standing once-per-year
award per person, level and year (the May Day Labour Medal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument

from services.awards.domain import (
    Decision,
    ExistingAward,
    KnownPriorMedals,
    PriorAward,
    certificate_number,
)
from services.awards.policy import AwardPolicy
from shared.events import (
    AwardReason,
    AwardType,
    CompetitionLevel,
    CompetitionRef,
    EventRef,
    EventResultsPayload,
    Recipient,
    RecipientKind,
)
from shared.mongo import Database, Doc, Session

AWARDS = "awards"
EVENT_RESULTS = "event_results"
COMPETITIONS = "competitions"
CERTIFICATE_COUNTERS = "certificate_counters"
LOCKS = "award_locks"

# What `jinchui replay awards` may clear: the competitions' event lists, rebuilt from
# registration.entries. Awards, applied result versions and certificate counters stay, so a
# replay of scoring.results reconciles against what stands and never grants twice.
DERIVED_COLLECTIONS: tuple[str, ...] = (COMPETITIONS,)

GRANTED = "granted"
REVOKED = "revoked"

INDEXES: dict[str, Sequence[IndexModel]] = {
    AWARDS: [
        IndexModel(
            [("award_key", ASCENDING)],
            unique=True,
            partialFilterExpression={"status": GRANTED},
            name="one_standing_award_per_key",
        ),
        IndexModel(
            [("once_key", ASCENDING)],
            unique=True,
            partialFilterExpression={"once_key": {"$exists": True}},
            name="once_per_person_per_year_per_level",
        ),
        IndexModel([("scope_id", ASCENDING), ("status", ASCENDING)]),
        IndexModel([("competition.competition_id", ASCENDING), ("granted_at", ASCENDING)]),
        IndexModel([("recipient.union_id", ASCENDING), ("granted_at", ASCENDING)]),
        IndexModel([("member_ids", ASCENDING)]),
        IndexModel(
            [("award_type", ASCENDING), ("level", ASCENDING), ("year", ASCENDING)],
        ),
    ],
    EVENT_RESULTS: [IndexModel([("competition_id", ASCENDING)])],
}


def once_key(award_type: AwardType, level: CompetitionLevel, year: int, worker_id: str) -> str:
    return f"{award_type.value}:{level.value}:{year}:{worker_id}"


class AwardsRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- serialisation -----------------------------------------------------------------------

    async def lock_level_year(self, level: CompetitionLevel, year: int, session: Session) -> None:
        """Write one lock document per level and year inside the transaction.

        Two transactions deciding awards of the same level and year both write it, so MongoDB
        makes the later one retry (WriteConflict) after the earlier commits: the once-per-year
        check and the organisation award always see each other's grants.
        """
        await self._db[LOCKS].update_one(
            {"_id": f"{level.value}:{year}"}, {"$inc": {"writes": 1}}, upsert=True, session=session
        )

    # --- competitions and their events --------------------------------------------------------

    async def record_event(
        self, competition: CompetitionRef, event: EventRef, session: Session
    ) -> None:
        await self._db[COMPETITIONS].update_one(
            {"_id": competition.competition_id},
            {
                "$set": {"competition": competition.model_dump(mode="json")},
                "$addToSet": {"event_ids": event.event_id},
            },
            upsert=True,
            session=session,
        )

    async def competition_state(self, competition_id: str, session: Session) -> Doc | None:
        return await self._db[COMPETITIONS].find_one({"_id": competition_id}, session=session)

    async def set_organisation_version(
        self, competition: CompetitionRef, version: int, session: Session
    ) -> None:
        await self._db[COMPETITIONS].update_one(
            {"_id": competition.competition_id},
            {
                "$set": {
                    "competition": competition.model_dump(mode="json"),
                    "organisation_applied_version": version,
                }
            },
            upsert=True,
            session=session,
        )

    # --- applied results ----------------------------------------------------------------------

    async def applied_version(self, event_id: str, session: Session) -> int | None:
        doc = await self._db[EVENT_RESULTS].find_one(
            {"_id": event_id}, {"applied_version": 1}, session=session
        )
        return None if doc is None else int(doc["applied_version"])

    async def save_applied_result(self, result: EventResultsPayload, session: Session) -> None:
        await self._db[EVENT_RESULTS].update_one(
            {"_id": result.event.event_id},
            {
                "$set": {
                    "competition_id": result.competition.competition_id,
                    "applied_version": result.version,
                    "result": result.model_dump_json(),
                }
            },
            upsert=True,
            session=session,
        )

    async def applied_results(
        self, competition_id: str, session: Session
    ) -> list[EventResultsPayload]:
        docs = await (
            self._db[EVENT_RESULTS]
            .find({"competition_id": competition_id}, session=session)
            .to_list()
        )
        return [EventResultsPayload.model_validate_json(d["result"]) for d in docs]

    # --- awards ---------------------------------------------------------------------------------

    async def standing_awards(self, scope_id: str, session: Session) -> list[ExistingAward]:
        docs = await (
            self._db[AWARDS].find({"scope_id": scope_id, "status": GRANTED}, session=session)
        ).to_list()
        return [existing_award_from(d) for d in docs]

    async def prior_medals(
        self, policy: AwardPolicy, result: EventResultsPayload, session: Session | None
    ) -> KnownPriorMedals:
        """The once-per-year awards the result's contestants already hold at this level/year."""
        limited = [r.award_type.value for r in policy.rules if r.once_per_person_per_year_per_level]
        workers = sorted({m.worker_id for line in result.lines for m in line.members})
        if not limited or not workers:
            return KnownPriorMedals()
        competition = result.competition
        docs = await (
            self._db[AWARDS]
            .find(
                {
                    "status": GRANTED,
                    "award_type": {"$in": limited},
                    "level": competition.level.value,
                    "year": competition.year,
                    "recipient.kind": RecipientKind.PERSON.value,
                    "recipient.recipient_id": {"$in": workers},
                },
                {"award_type": 1, "recipient.recipient_id": 1, "scope_id": 1},
                session=session,
            )
            .to_list()
        )
        return KnownPriorMedals(
            frozenset(
                PriorAward(
                    award_type=AwardType(d["award_type"]),
                    worker_id=d["recipient"]["recipient_id"],
                    year=competition.year,
                    level=competition.level,
                    event_id=d["scope_id"],
                )
                for d in docs
            )
        )

    async def reserve_certificate_numbers(
        self,
        level: CompetitionLevel,
        year: int,
        award_type: AwardType,
        count: int,
        session: Session,
    ) -> list[str]:
        """The next `count` certificate numbers of one series, reserved in one round trip."""
        counter = await self._db[CERTIFICATE_COUNTERS].find_one_and_update(
            {"_id": f"{level.value}:{year}:{award_type.value}"},
            {"$inc": {"seq": count}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert counter is not None  # upsert with ReturnDocument.AFTER always returns one
        last = int(counter["seq"])
        return [
            certificate_number(level, year, award_type, seq)
            for seq in range(last - count + 1, last + 1)
        ]

    async def insert_grants(self, documents: list[Doc], session: Session) -> None:
        if documents:
            await self._db[AWARDS].insert_many(documents, ordered=True, session=session)

    @staticmethod
    def grant_document(
        decision: Decision,
        *,
        award_id: str,
        certificate_no: str,
        granted_at: datetime,
        once_per_year: bool,
    ) -> Doc:
        competition = decision.competition
        doc: Doc = {
            "_id": award_id,
            "award_id": award_id,
            "award_key": decision.award_key,
            "status": GRANTED,
            "certificate_no": certificate_no,
            "award_type": decision.award_type.value,
            "competition": competition.model_dump(mode="json"),
            "event": decision.event.model_dump(mode="json") if decision.event else None,
            "scope_id": decision.scope_id,
            "level": competition.level.value,
            "year": competition.year,
            "recipient": decision.recipient.model_dump(mode="json"),
            "member_ids": [m.worker_id for m in decision.recipient.members],
            "rank": decision.rank,
            "reason": decision.reason.model_dump(mode="json"),
            "result_version": decision.result_version,
            "mark_ids": list(decision.mark_ids),
            "publicity_ends_on": decision.publicity_ends_on.isoformat(),
            "granted_at": granted_at,
            "revoked_at": None,
            "revocation": None,
        }
        if once_per_year and decision.recipient.kind is RecipientKind.PERSON:
            doc["once_key"] = once_key(
                decision.award_type,
                competition.level,
                competition.year,
                decision.recipient.recipient_id,
            )
        return doc

    async def mark_revoked(
        self,
        award_id: str,
        *,
        reason: AwardReason,
        result_version: int,
        revoked_at: datetime,
        session: Session,
    ) -> None:
        await self._db[AWARDS].update_one(
            {"_id": award_id, "status": GRANTED},
            {
                "$set": {
                    "status": REVOKED,
                    "revoked_at": revoked_at,
                    "revocation": {
                        "reason": reason.model_dump(mode="json"),
                        "result_version": result_version,
                    },
                },
                # A revoked medal no longer counts against the person's once-per-year limit.
                "$unset": {"once_key": ""},
            },
            session=session,
        )

    # --- reading for the API -------------------------------------------------------------------

    async def find_awards(
        self,
        *,
        competition_id: str | None = None,
        union_ids: Iterable[str] | None = None,
        person_id: str | None = None,
        event_id: str | None = None,
        status: str | None = None,
        limit: int = 1000,
    ) -> list[Doc]:
        query: Doc = {}
        if competition_id is not None:
            query["competition.competition_id"] = competition_id
        if union_ids is not None:
            query["recipient.union_id"] = {"$in": sorted(set(union_ids))}
        if person_id is not None:
            query["$or"] = [{"recipient.recipient_id": person_id}, {"member_ids": person_id}]
        if event_id is not None:
            query["event.event_id"] = event_id
        if status is not None:
            query["status"] = status
        cursor = (
            self._db[AWARDS]
            .find(query)
            .sort([("granted_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return await cursor.to_list()

    async def get_award(self, award_id: str) -> Doc | None:
        return await self._db[AWARDS].find_one({"_id": award_id})


def existing_award_from(doc: Doc) -> ExistingAward:
    return ExistingAward(
        award_key=doc["award_key"],
        award_id=doc["award_id"],
        certificate_no=doc["certificate_no"],
        award_type=AwardType(doc["award_type"]),
        competition=_validate(CompetitionRef, doc["competition"]),
        event=_validate(EventRef, doc["event"]) if doc.get("event") else None,
        recipient=_validate(Recipient, doc["recipient"]),
        result_version=int(doc["result_version"]),
    )


def _validate(model: Any, data: Any) -> Any:
    # The contracts are strict; stored JSON-mode dicts are validated as JSON would be.
    return model.model_validate(data, strict=False)
