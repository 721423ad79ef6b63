"""Use cases of the awards service and its Kafka consumers: where I/O meets the pure engine.

- `scoring.results` (EventFinalized / EventResultsAmended): decide the event's awards under the
  competition level's policy, reconcile them with the awards that stand, and write grants,
  revocations, the applied result version and their `AwardGranted` / `AwardRevoked` events in one
  transaction (with the processed-event record, so a redelivery changes nothing). Then, once every
  known event of the competition has a result, the organisation award is decided and reconciled
  in the same transaction.
- `registration.entries` (EventPublished): remember which events a competition has, so the
  organisation award waits for all of them. Entries themselves are not needed here: the final
  result carries every fact an award depends on.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from services.awards.domain import (
    Decision,
    Evaluation,
    ExistingAward,
    Reconciliation,
    decide,
    decide_organisation_award,
    dry_run,
    reconcile,
)
from services.awards.policy import AwardPolicy
from services.awards.repository import AwardsRepository
from shared import topics
from shared.errors import DomainError
from shared.events import (
    AwardGranted,
    AwardRevoked,
    AwardType,
    CompetitionLevel,
    EntryRegistered,
    EntryWithdrawn,
    Envelope,
    EventFinalized,
    EventPublished,
    EventResultsAmended,
    EventResultsPayload,
    RegistrationEvent,
    ResultsEvent,
    new_event,
    utc_now,
)
from shared.http import audit, audit_document, audit_many
from shared.kafka import consumer_options, strict_decoder
from shared.logging import correlation, get_logger
from shared.mongo import Doc, Session
from shared.runtime import ServiceRuntime

log = get_logger(__name__)
PRODUCER = "awards"

Policies = Mapping[CompetitionLevel, AwardPolicy]


class NoPolicy(DomainError):
    """No awarding policy is loaded for the competition's level."""


@dataclass(frozen=True)
class Applied:
    """What one result did to the standing awards (for logs and tests)."""

    granted: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    ignored: bool = False
    note: str = ""


def policy_for(policies: Policies, level: CompetitionLevel) -> AwardPolicy:
    policy = policies.get(level)
    if policy is None:
        raise NoPolicy("no_policy", f"no awarding policy loaded for level {level.value}", "level")
    return policy


class AwardsService:
    """The use cases; each write method runs inside the caller's transaction."""

    def __init__(self, runtime: ServiceRuntime, repo: AwardsRepository, policies: Policies):
        self.runtime = runtime
        self.repo = repo
        self.policies = policies

    async def apply_result(
        self, incoming: Envelope[EventResultsPayload], session: Session
    ) -> Applied:
        result = incoming.payload
        policy = policy_for(self.policies, result.competition.level)
        competition = result.competition
        event_id = result.event.event_id
        await self.repo.lock_level_year(competition.level, competition.year, session)

        applied_version = await self.repo.applied_version(event_id, session)
        standing = await self.repo.standing_awards(event_id, session)
        prior = await self.repo.prior_medals(policy, result, session)
        decisions = decide(policy, result, prior)
        plan = reconcile(
            standing,
            decisions,
            incoming_version=result.version,
            applied_version=applied_version,
        )
        if plan.ignored:
            return Applied(ignored=True, note=plan.note)
        changed = await self._carry_out(plan, policy, incoming, result.version, session)
        await self.repo.save_applied_result(result, session)
        organisation = await self._reconcile_organisation_award(policy, incoming, session)
        return Applied(
            granted=changed.granted + organisation.granted,
            revoked=changed.revoked + organisation.revoked,
            note=plan.note,
        )

    async def record_published_event(self, incoming: EventPublished, session: Session) -> None:
        payload = incoming.payload
        await self.repo.record_event(payload.competition, payload.event, session)

    def dry_run(self, result: EventResultsPayload, prior: Any) -> Evaluation:
        return dry_run(policy_for(self.policies, result.competition.level), result, prior)

    async def _reconcile_organisation_award(
        self, policy: AwardPolicy, incoming: Envelope[EventResultsPayload], session: Session
    ) -> Applied:
        if policy.rule_for(AwardType.ORGANISATION_AWARD) is None:
            return Applied()
        competition = incoming.payload.competition
        state = await self.repo.competition_state(competition.competition_id, session) or {}
        results = await self.repo.applied_results(competition.competition_id, session)
        finished = {r.event.event_id for r in results}
        published = set(state.get("event_ids", []))
        if not published:
            # Without EventPublished we cannot know how many events the competition has.
            return Applied(ignored=True, note="competition's events not known yet")
        # An event known only from its result (its EventPublished still on the way) counts too.
        all_event_ids = published | finished
        if all_event_ids - finished:
            return Applied(ignored=True, note="competition not finished")
        decisions: list[Decision] = decide_organisation_award(
            policy, competition, results, all_event_ids=all_event_ids
        )
        version = sum(r.version for r in results)
        applied_version = state.get("organisation_applied_version")
        standing = await self.repo.standing_awards(competition.competition_id, session)
        plan = reconcile(
            standing,
            decisions,
            incoming_version=version,
            applied_version=None if applied_version is None else int(applied_version),
        )
        if plan.ignored:
            return Applied(ignored=True, note=plan.note)
        changed = await self._carry_out(plan, policy, incoming, version, session)
        await self.repo.set_organisation_version(competition, version, session)
        return changed

    async def _carry_out(
        self,
        plan: Reconciliation,
        policy: AwardPolicy,
        incoming: Envelope[EventResultsPayload],
        version: int,
        session: Session,
    ) -> Applied:
        """Store revocations and grants and put their events in the outbox, in that order."""
        now = utc_now()
        outgoing: list[tuple[str, str, Envelope[Any]]] = []
        revoked: list[str] = []
        for award in plan.revocations:
            outgoing.append(await self._revoke(award, incoming, version, now, session))
            revoked.append(award.award_id)
        granted = await self._grant_all(plan.grants, policy, incoming, now, session, outgoing)
        await self.runtime.outbox.add_many(session, outgoing)
        return Applied(granted=granted, revoked=tuple(revoked))

    async def _revoke(
        self,
        award: ExistingAward,
        incoming: Envelope[EventResultsPayload],
        version: int,
        now: Any,
        session: Session,
    ) -> tuple[str, str, Envelope[Any]]:
        payload = award.revoked_payload(result_version=version, revoked_at=now)
        await self.repo.mark_revoked(
            award.award_id,
            reason=payload.reason,
            result_version=version,
            revoked_at=now,
            session=session,
        )
        await audit(
            self.runtime,
            session,
            None,
            "award.revoke",
            award.award_id,
            {"award_key": award.award_key, "version": version, "cause": str(incoming.event_id)},
        )
        event = new_event(
            AwardRevoked,
            payload,
            producer=PRODUCER,
            correlation_id=incoming.correlation_id,
            causation_id=str(incoming.event_id),
        )
        return topics.AWARDS_DECISIONS, award.recipient.recipient_id, event

    async def _grant_all(
        self,
        decisions: Sequence[Decision],
        policy: AwardPolicy,
        incoming: Envelope[EventResultsPayload],
        now: datetime,
        session: Session,
        outgoing: list[tuple[str, str, Envelope[Any]]],
    ) -> tuple[str, ...]:
        """Grant every decision with a handful of round trips whatever their number (one
        certificate reservation per series, one insert of the awards, one of their audit):
        a finalisation's awards sit on the path to the leadership's notification."""
        series: dict[tuple[CompetitionLevel, int, AwardType], list[int]] = defaultdict(list)
        for index, decision in enumerate(decisions):
            competition = decision.competition
            series[(competition.level, competition.year, decision.award_type)].append(index)
        numbers: dict[int, str] = {}
        for (level, year, award_type), indexes in series.items():
            reserved = await self.repo.reserve_certificate_numbers(
                level, year, award_type, len(indexes), session
            )
            numbers.update(zip(indexes, reserved, strict=True))
        documents: list[Doc] = []
        audits: list[Doc] = []
        granted: list[str] = []
        for index, decision in enumerate(decisions):
            certificate_no = numbers[index]
            award_id = "aw-" + uuid.uuid4().hex
            rule = policy.rule_for(decision.award_type)
            documents.append(
                self.repo.grant_document(
                    decision,
                    award_id=award_id,
                    certificate_no=certificate_no,
                    granted_at=now,
                    once_per_year=bool(rule and rule.once_per_person_per_year_per_level),
                )
            )
            audits.append(
                audit_document(
                    None,
                    "award.grant",
                    award_id,
                    {
                        "award_key": decision.award_key,
                        "certificate_no": certificate_no,
                        "version": decision.result_version,
                        "cause": str(incoming.event_id),
                    },
                )
            )
            event = new_event(
                AwardGranted,
                decision.granted_payload(
                    award_id=award_id, certificate_no=certificate_no, granted_at=now
                ),
                producer=PRODUCER,
                correlation_id=incoming.correlation_id,
                causation_id=str(incoming.event_id),
            )
            outgoing.append((topics.AWARDS_DECISIONS, decision.recipient.recipient_id, event))
            granted.append(award_id)
        await self.repo.insert_grants(documents, session)
        await audit_many(self.runtime, session, audits)
        return tuple(granted)


def register_handlers(runtime: ServiceRuntime, service: AwardsService) -> None:
    """Subscribe to results and published events; declare what the service publishes."""
    broker = runtime.broker
    broker.publisher(
        topics.AWARDS_DECISIONS,
        schema=AwardGranted | AwardRevoked,
        title="awards.decisions",
        description="AwardGranted when a final result earns an award, AwardRevoked when an "
        "amendment takes it back; keyed by recipient id.",
    )

    @broker.subscriber(
        topics.SCORING_RESULTS,
        decoder=strict_decoder(TypeAdapter(ResultsEvent)),
        title="scoring.results:awards",
        **consumer_options(runtime.group_id("results")),
    )
    async def on_results(event: ResultsEvent) -> None:
        assert isinstance(event, EventFinalized | EventResultsAmended)
        with correlation(event.correlation_id, event_id=str(event.event_id)):
            outcome = Applied()

            async def work(session: Session) -> None:
                nonlocal outcome
                outcome = await service.apply_result(event, session)

            applied = await runtime.consume_once(event, work)
            payload = event.payload
            log.info(
                "result applied" if applied and not outcome.ignored else "result changed nothing",
                event_type=event.event_type,
                competition_event=payload.event.event_id,
                version=payload.version,
                granted=len(outcome.granted),
                revoked=len(outcome.revoked),
                note=outcome.note if applied else "event already processed",
            )

    @broker.subscriber(
        topics.REGISTRATION_ENTRIES,
        decoder=strict_decoder(TypeAdapter(RegistrationEvent)),
        title="registration.entries:awards",
        **consumer_options(runtime.group_id("entries")),
    )
    async def on_registration(event: RegistrationEvent) -> None:
        if isinstance(event, EntryRegistered | EntryWithdrawn):
            return  # final results carry every fact about entries that an award needs
        assert isinstance(event, EventPublished)
        with correlation(event.correlation_id, event_id=str(event.event_id)):

            async def work(session: Session) -> None:
                await service.record_published_event(event, session)

            await runtime.consume_once(event, work)
