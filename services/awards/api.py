"""HTTP edge of the awards service: read awards and policies, dry-run a result."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.awards.domain import Decision, Withheld
from services.awards.handlers import AwardsService, policy_for
from services.awards.repository import AwardsRepository
from shared.auth import Principal, Role, authenticate, require
from shared.errors import DomainError, NotFound
from shared.events import (
    AwardReason,
    AwardType,
    CompetitionRef,
    EventRef,
    EventResultsPayload,
    Recipient,
)
from shared.mongo import Doc

READERS = (Role.ADMIN, Role.LEADER, Role.UNION_OFFICER)
IdParam = Annotated[str | None, Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class Revocation(BaseModel):
    reason: AwardReason
    result_version: int


class AwardView(BaseModel):
    model_config = ConfigDict(frozen=True)

    award_id: str
    award_key: str
    status: Literal["granted", "revoked"]
    certificate_no: str
    award_type: AwardType
    competition: CompetitionRef
    event: EventRef | None
    recipient: Recipient
    rank: int | None
    reason: AwardReason
    result_version: int
    mark_ids: list[str]
    publicity_ends_on: date
    granted_at: datetime
    revoked_at: datetime | None = None
    revocation: Revocation | None = None

    @classmethod
    def from_doc(cls, doc: Doc) -> AwardView:
        fields = {name: doc.get(name) for name in cls.model_fields}
        return cls.model_validate(fields, strict=False)


class DecisionView(BaseModel):
    award_key: str
    award_type: AwardType
    competition: CompetitionRef
    event: EventRef | None
    recipient: Recipient
    rank: int | None
    reason: AwardReason
    result_version: int
    mark_ids: list[str]
    publicity_ends_on: date

    @classmethod
    def of(cls, decision: Decision) -> DecisionView:
        return cls(
            award_key=decision.award_key,
            award_type=decision.award_type,
            competition=decision.competition,
            event=decision.event,
            recipient=decision.recipient,
            rank=decision.rank,
            reason=decision.reason,
            result_version=decision.result_version,
            mark_ids=list(decision.mark_ids),
            publicity_ends_on=decision.publicity_ends_on,
        )


class WithheldView(BaseModel):
    rule: str
    award_type: AwardType
    entry_id: str | None
    rank: int | None
    reason: str

    @classmethod
    def of(cls, withheld: Withheld) -> WithheldView:
        return cls(
            rule=withheld.rule,
            award_type=withheld.award_type,
            entry_id=withheld.entry_id,
            rank=withheld.rank,
            reason=withheld.reason,
        )


class DryRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: EventResultsPayload


class DryRunResponse(BaseModel):
    decisions: list[DecisionView]
    withheld: list[WithheldView]
    note: str = Field(
        default="nothing was stored; the organisation award is decided only once every event "
        "of the competition is final, so it is not part of a dry run",
    )


def _union_scope(principal: Principal, union_id: str | None) -> list[str] | None:
    """The unions a caller may see awards of (None = all); a union officer sees its own only."""
    if principal.role is not Role.UNION_OFFICER or "*" in principal.scopes:
        return None if union_id is None else [union_id]
    if union_id is not None:
        principal.require_scope("union", union_id)
        return [union_id]
    return sorted(principal.scoped_values("union"))


def build_router(repo: AwardsRepository, service: AwardsService) -> APIRouter:
    router = APIRouter(tags=["awards"])

    @router.get("/awards", summary="Awards, granted and revoked, filtered")
    async def list_awards(
        principal: Annotated[Principal, Depends(require(*READERS))],
        competition_id: IdParam = None,
        union_id: IdParam = None,
        person_id: IdParam = None,
        event_id: IdParam = None,
        status: Annotated[Literal["granted", "revoked"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    ) -> list[AwardView]:
        unions = _union_scope(principal, union_id)
        docs = await repo.find_awards(
            competition_id=competition_id,
            union_ids=unions,
            person_id=person_id,
            event_id=event_id,
            status=status,
            limit=limit,
        )
        return [AwardView.from_doc(d) for d in docs]

    @router.get("/awards/{award_id}", summary="One award")
    async def get_award(
        award_id: str, principal: Annotated[Principal, Depends(require(*READERS))]
    ) -> AwardView:
        doc = await repo.get_award(award_id)
        if doc is None:
            raise NotFound("unknown_award", f"no award {award_id}", "award_id")
        if principal.role is Role.UNION_OFFICER:
            principal.require_scope("union", doc["recipient"]["union_id"])
        return AwardView.from_doc(doc)

    @router.get("/policies", summary="The loaded awarding policies, one per competition level")
    async def list_policies(
        _principal: Annotated[Principal, Depends(authenticate)],
    ) -> dict[str, Any]:
        return {
            "policies": [policy.model_dump(mode="json") for policy in service.policies.values()]
        }

    @router.post(
        "/policies/dry-run",
        summary="What a result would earn under its level's policy; stores nothing",
    )
    async def dry_run(
        _principal: Annotated[Principal, Depends(require(Role.ADMIN, Role.CHIEF_JUDGE))],
        body: Annotated[dict[str, Any], Body(description="{result: EventResultsPayload}")],
    ) -> DryRunResponse:
        # The contracts are strict (made for JSON on the wire), so validate the body as JSON.
        try:
            request = DryRunRequest.model_validate_json(json.dumps(body))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error.get("loc", ()))
            raise DomainError("invalid_input", str(error.get("msg")), field) from exc
        result = request.result
        policy = policy_for(service.policies, result.competition.level)
        prior = await repo.prior_medals(policy, result, session=None)
        evaluation = service.dry_run(result, prior)
        return DryRunResponse(
            decisions=[DecisionView.of(d) for d in evaluation.decisions],
            withheld=[WithheldView.of(w) for w in evaluation.withheld],
        )

    return router
