"""Bearer tokens: signed JWTs carrying a role and scopes.

Scopes are strings such as `union:U1`, `event:E1`, `competition:C1` or `*` (everything);
every endpoint declares the roles it admits and checks the scope of the object it touches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

import jwt
import typer
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from shared.errors import DomainError
from shared.events import utc_now
from shared.settings import Settings, get_settings

ALGORITHM = "HS256"


class Role(StrEnum):
    UNION_OFFICER = "union_officer"
    JUDGE = "judge"
    CHIEF_JUDGE = "chief_judge"
    LEADER = "leader"
    ADMIN = "admin"
    SERVICE = "service"


class Unauthenticated(DomainError):
    status_code = 401


class NotPermitted(DomainError):
    status_code = 403


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    subject: str
    role: Role
    scopes: frozenset[str]

    def has_scope(self, kind: str, value: str) -> bool:
        return "*" in self.scopes or f"{kind}:{value}" in self.scopes

    def scoped_values(self, kind: str) -> set[str]:
        prefix = f"{kind}:"
        return {s[len(prefix) :] for s in self.scopes if s.startswith(prefix)}

    def require_scope(self, kind: str, value: str) -> None:
        if not self.has_scope(kind, value):
            raise NotPermitted(
                "out_of_scope",
                f"{self.role.value} {self.subject} may not act on {kind} {value}",
                field=kind,
            )


def issue_token(
    settings: Settings,
    *,
    subject: str,
    role: Role,
    scopes: Iterable[str] = (),
    ttl: timedelta | None = None,
) -> str:
    now = utc_now()
    claims = {
        "sub": subject,
        "role": role.value,
        "scope": sorted(set(scopes)),
        "iss": settings.jwt_issuer,
        "iat": int(now.timestamp()),
        "exp": int((now + (ttl or timedelta(seconds=settings.jwt_ttl_seconds))).timestamp()),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


def decode_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token_expired", "the bearer token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("token_invalid", f"the bearer token is invalid: {exc}") from exc
    try:
        role = Role(str(claims.get("role")))
    except ValueError as exc:
        raise Unauthenticated("token_invalid", "the token names an unknown role") from exc
    scopes = claims.get("scope", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise Unauthenticated("token_invalid", "the token's scope must be a list of strings")
    return Principal(subject=str(claims["sub"]), role=role, scopes=frozenset(scopes))


_bearer = HTTPBearer(auto_error=False)


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("token_missing", "send Authorization: Bearer <token>")
    principal = decode_token(get_settings(), credentials.credentials)
    request.state.principal = principal
    return principal


def require(*roles: Role) -> Callable[..., Principal]:
    """FastAPI dependency: an authenticated principal holding one of `roles`."""
    allowed = frozenset(roles)

    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role not in allowed:
            raise NotPermitted(
                "role_not_allowed",
                f"role {principal.role.value} may not call this endpoint; "
                f"allowed: {', '.join(sorted(r.value for r in allowed))}",
                field="role",
            )
        return principal

    return dependency


token_app = typer.Typer(help="Issue bearer tokens for people and tools.", no_args_is_help=True)


@token_app.command("issue")
def issue_command(
    role: Annotated[Role, typer.Option(help="role of the bearer")],
    scope: Annotated[
        list[str] | None, typer.Option(help="scope such as union:U1, event:E1 or *; repeatable")
    ] = None,
    subject: Annotated[str, typer.Option(help="who the token is for")] = "demo",
    ttl_hours: Annotated[float, typer.Option(help="lifetime in hours")] = 8.0,
) -> None:
    """Print a signed token (uses JINCHUI_JWT_SECRET)."""
    token = issue_token(
        get_settings(),
        subject=subject,
        role=role,
        scopes=scope or [],
        ttl=timedelta(hours=ttl_hours),
    )
    typer.echo(token)
