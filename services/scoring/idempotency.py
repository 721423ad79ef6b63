"""`Idempotency-Key` on POSTs: the first response to a key is stored with the write itself.

The record commits in the same transaction as the state change, so "stored response" and "state
changed" are one fact. Keys are per caller (the token's subject). The same key with the same
method, path and body replays the stored response; with anything else it is a 409. Error
answers are not stored: a retry of a refused request is judged again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from shared.auth import Principal
from shared.errors import Conflict
from shared.events import utc_now
from shared.mongo import Database, Session

from .repository import IDEMPOTENCY

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    record_id: str
    fingerprint: str


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def check(
        self, request: Request, principal: Principal
    ) -> tuple[IdempotencyClaim | None, JSONResponse | None]:
        """(claim to store the answer under, or the stored answer to replay)."""
        key = request.headers.get(HEADER)
        if not key:
            return None, None
        if len(key) > MAX_KEY_LENGTH:
            raise Conflict("idempotency.key_too_long", "the key is too long", field=HEADER)
        body = await request.body()
        digest = hashlib.sha256()
        digest.update(request.method.encode() + b" " + request.url.path.encode() + b"\n")
        digest.update(body)
        claim = IdempotencyClaim(f"{principal.subject}:{key}", digest.hexdigest())
        stored = await self.replay(claim)
        return (None, stored) if stored is not None else (claim, None)

    async def replay(self, claim: IdempotencyClaim) -> JSONResponse | None:
        doc = await self._db[IDEMPOTENCY].find_one({"_id": claim.record_id})
        if doc is None:
            return None
        if doc["fingerprint"] != claim.fingerprint:
            raise Conflict(
                "idempotency.key_reused",
                "this Idempotency-Key was already used for a different request",
                field=HEADER,
            )
        return JSONResponse(doc["body"], status_code=int(doc["status"]))

    async def remember(
        self, session: Session, claim: IdempotencyClaim | None, status: int, body: Any
    ) -> None:
        if claim is None:
            return
        await self._db[IDEMPOTENCY].insert_one(
            {
                "_id": claim.record_id,
                "fingerprint": claim.fingerprint,
                "status": status,
                "body": body,
                "at": utc_now(),
            },
            session=session,
        )
