"""MongoDB adapter of the notifications service.

Collections:
- `subscriptions`: one document per leader (`_id` = leader id).
- `decisions`: every award decision consumed (`_id` = decision event id), kept verbatim as
  JSON so a delivery renders from exactly what the awards service said, and so a dead-letter
  record republishes the original envelope unchanged.
- `deliveries`: one document per delivery (`_id` = delivery key: decision, leader, channel),
  holding the `DeliveryRecord` (status, every attempt) plus a lease for the worker that
  currently sends it.
- `feed`: one document per live-feed delivery (`_id` = delivery key); its inserts feed every
  replica's live feed through a change stream.
- `standings`: latest standings per competition event (`_id` = event id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, UpdateOne

from shared.events import DecisionEvent, StandingsUpdated
from shared.mongo import Database, Doc, Session

from .channels import LiveFeedItem
from .domain import Decision, DeliveryRecord, Subscription, decision_kind

SUBSCRIPTIONS = "subscriptions"
# What `jinchui replay notifications` may clear: the latest standings (rebuilt from
# scoring.standings). Decisions, deliveries and the feed stay: a replay never re-sends.
DERIVED_COLLECTIONS: tuple[str, ...] = ("standings",)
DECISIONS = "decisions"
DELIVERIES = "deliveries"
FEED = "feed"
STANDINGS = "standings"

INDEXES: dict[str, Sequence[IndexModel]] = {
    DECISIONS: [IndexModel([("award_id", ASCENDING)])],
    DELIVERIES: [
        # The worker's claim query: pending deliveries by due time.
        IndexModel([("status", ASCENDING), ("due_at", ASCENDING)]),
        IndexModel([("award_id", ASCENDING)]),
        IndexModel([("leader_id", ASCENDING), ("created_at", ASCENDING)]),
        IndexModel([("competition_id", ASCENDING), ("created_at", ASCENDING)]),
    ],
    FEED: [IndexModel([("published_at", DESCENDING)])],
}

_decision_adapter: TypeAdapter[Decision] = TypeAdapter(DecisionEvent)


def decode_decision(raw: str | bytes) -> Decision:
    return _decision_adapter.validate_json(raw)


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this worker holds the lease on; `lease_token` proves it when settling."""

    record: DeliveryRecord
    competition_id: str
    lease_token: str


def _record_fields(record: DeliveryRecord) -> Doc:
    return {
        "status": record.status,
        "attempts": [attempt.model_dump() for attempt in record.attempts],
        "next_attempt_at": record.next_attempt_at,
    }


def _record_of(doc: Doc) -> DeliveryRecord:
    return DeliveryRecord.model_validate(
        {
            "plan": doc["plan"],
            "status": doc["status"],
            "attempts": doc.get("attempts", []),
            "next_attempt_at": doc.get("next_attempt_at"),
        }
    )


def _subscription_of(doc: Doc) -> Subscription:
    fields = {k: v for k, v in doc.items() if k not in ("_id", "updated_at")}
    return Subscription.model_validate(fields)


class NotificationsRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- subscriptions ------------------------------------------------------------------

    async def save_subscription(
        self, subscription: Subscription, now: datetime, session: Session
    ) -> None:
        document = subscription.model_dump(mode="json")
        document["channels"] = sorted(subscription.channels)
        document["updated_at"] = now
        await self.db[SUBSCRIPTIONS].replace_one(
            {"_id": subscription.leader_id},
            {"_id": subscription.leader_id, **document},
            upsert=True,
            session=session,
        )

    async def subscriptions(self, session: Session | None = None) -> list[Subscription]:
        # Sorted by leader id: recipients_for needs a stable order to pick address/language.
        docs = await self.db[SUBSCRIPTIONS].find({}, session=session).sort("_id", 1).to_list()
        return [_subscription_of(doc) for doc in docs]

    # --- decisions ----------------------------------------------------------------------

    async def save_decision(self, decision: Decision, now: datetime, session: Session) -> None:
        payload = decision.payload
        await self.db[DECISIONS].replace_one(
            {"_id": str(decision.event_id)},
            {
                "_id": str(decision.event_id),
                "kind": decision_kind(decision),
                "award_id": payload.award_id,
                "competition_id": payload.competition.competition_id,
                "recipient_id": payload.recipient.recipient_id,
                "occurred_at": decision.occurred_at,
                "received_at": now,
                "envelope": decision.model_dump_json(),
            },
            upsert=True,
            session=session,
        )

    async def decision(self, decision_event_id: str) -> Decision | None:
        doc = await self.db[DECISIONS].find_one({"_id": decision_event_id})
        return decode_decision(doc["envelope"]) if doc else None

    # --- deliveries ---------------------------------------------------------------------

    async def add_deliveries(
        self,
        records: Sequence[DeliveryRecord],
        competition_id: str,
        now: datetime,
        session: Session,
    ) -> None:
        """Create the deliveries; an existing key is left untouched (one per key, ever)."""
        if not records:
            return
        operations = [
            UpdateOne(
                {"_id": record.delivery_key},
                {
                    "$setOnInsert": {
                        "plan": record.plan.model_dump(),
                        **_record_fields(record),
                        "award_id": record.plan.award_id,
                        "decision_event_id": record.plan.decision_event_id,
                        "leader_id": record.plan.leader_id,
                        "channel": record.plan.channel,
                        "kind": record.plan.kind,
                        "competition_id": competition_id,
                        "due_at": now,
                        "lease_token": None,
                        "lease_until": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                },
                upsert=True,
            )
            for record in records
        ]
        await self.db[DELIVERIES].bulk_write(operations, ordered=True, session=session)

    async def claim_due(
        self, now: datetime, lease_token: str, lease: timedelta
    ) -> ClaimedDelivery | None:
        """Atomically take the lease on the most overdue pending delivery, if any.

        find_one_and_update is atomic per document, so two replicas never hold the same
        delivery at once; an expired lease (a crashed worker) is taken over.
        """
        doc = await self.db[DELIVERIES].find_one_and_update(
            {
                "status": "pending",
                "due_at": {"$lte": now},
                "$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}],
            },
            {"$set": {"lease_token": lease_token, "lease_until": now + lease}},
            sort=[("due_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        return ClaimedDelivery(_record_of(doc), doc.get("competition_id", ""), lease_token)

    async def save_attempt(
        self,
        claimed: ClaimedDelivery,
        record: DeliveryRecord,
        now: datetime,
        session: Session,
        *,
        dead_letter: Doc | None = None,
    ) -> bool:
        """Store the record after an attempt and release the lease; False if the lease was
        lost (another worker took the delivery over), in which case nothing is written."""
        fields: Doc = {
            **_record_fields(record),
            "due_at": record.next_attempt_at or now,
            "lease_token": None,
            "lease_until": None,
            "updated_at": now,
        }
        if dead_letter is not None:
            fields["dead_letter"] = dead_letter
        result = await self.db[DELIVERIES].update_one(
            {"_id": record.delivery_key, "status": "pending", "lease_token": claimed.lease_token},
            {"$set": fields},
            session=session,
        )
        return result.modified_count == 1

    async def next_due_at(self) -> datetime | None:
        doc = await self.db[DELIVERIES].find_one(
            {"status": "pending"}, {"due_at": 1}, sort=[("due_at", ASCENDING)]
        )
        return doc["due_at"] if doc else None

    async def deliveries(self, filters: Doc, limit: int) -> list[Doc]:
        query = {key: value for key, value in filters.items() if value is not None}
        cursor = self.db[DELIVERIES].find(query).sort("created_at", ASCENDING).limit(limit)
        return await cursor.to_list()

    # --- live feed ----------------------------------------------------------------------

    async def add_feed_item(self, item: LiveFeedItem, session: Session) -> None:
        await self.db[FEED].insert_one(feed_document(item), session=session)

    async def recent_feed(self, limit: int, since: datetime | None = None) -> list[LiveFeedItem]:
        query: Doc = {"published_at": {"$gt": since}} if since else {}
        docs = (
            await self.db[FEED].find(query).sort("published_at", DESCENDING).limit(limit).to_list()
        )
        return [feed_item_of(doc) for doc in reversed(docs)]

    # --- standings ----------------------------------------------------------------------

    async def save_standings(self, event: StandingsUpdated, session: Session) -> bool:
        """Keep the latest standings per event; an older `as_of` than stored is ignored."""
        payload = event.payload
        event_id = payload.event.event_id
        stored = await self.db[STANDINGS].find_one({"_id": event_id}, {"as_of": 1}, session=session)
        if stored is not None and stored["as_of"] >= payload.as_of:
            return False
        await self.db[STANDINGS].replace_one(
            {"_id": event_id},
            {"_id": event_id, "as_of": payload.as_of, "payload": payload.model_dump(mode="json")},
            upsert=True,
            session=session,
        )
        return True

    async def standings(self) -> list[Doc]:
        docs = await self.db[STANDINGS].find({}).sort("_id", ASCENDING).to_list()
        return [standings_view(doc) for doc in docs]


def feed_document(item: LiveFeedItem) -> Doc:
    return {"_id": item.delivery_key, **item.model_dump()}


def feed_item_of(doc: Doc) -> LiveFeedItem:
    return LiveFeedItem.model_validate({k: v for k, v in doc.items() if k != "_id"})


def standings_view(doc: Doc) -> dict[str, Any]:
    """The public shape of one event's standings (GET /standings and the SSE stream)."""
    payload: dict[str, Any] = doc["payload"]
    return {
        "event_id": payload["event"]["event_id"],
        "event_name": payload["event"]["name"],
        "trade": payload["event"]["trade"],
        "format": payload["event"]["format"],
        "competition_id": payload["competition"]["competition_id"],
        "competition_name": payload["competition"]["name"],
        "lines": payload["lines"],
        "marks_counted": payload["marks_counted"],
        "flagged_entries": payload["flagged_entries"],
        "as_of": payload["as_of"],
    }
