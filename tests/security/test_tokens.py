"""Bearer tokens under attack: algorithm confusion, missing or wrong claims, tampering.

Each hostile token is checked twice: against `decode_token` directly (exhaustively, with
hypothesis for tampering) and over HTTP against a running service, where it must give 401,
and over the scoring WebSocket, where it must be refused before any mark is read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from shared.auth import Role, Unauthenticated, decode_token, issue_token
from shared.events import utc_now
from shared.settings import Settings
from tests.security.conftest import ServicePool
from tests.security.policy import Ids

SETTINGS = Settings()
# What an attacker would use as the HMAC key in an RS256→HS256 confusion: the public key.
PUBLIC_KEY_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
    "-----END PUBLIC KEY-----\n"
)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(utc_now().timestamp())
    base: dict[str, Any] = {
        "sub": "mallory",
        "role": "admin",
        "scope": ["*"],
        "iss": SETTINGS.jwt_issuer,
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand, so that any algorithm name can be put in the header."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    if key is None:
        signature = ""
    else:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(
            str(header.get("alg")), hashlib.sha256
        )
        signature = b64url(hmac.new(key, signing_input.encode(), digest).digest())
    return signing_input + "." + signature


SECRET = SETTINGS.jwt_secret.encode()

HOSTILE_TOKENS: dict[str, Callable[[], str]] = {
    "alg none, no signature": lambda: hand_signed(
        {"alg": "none", "typ": "JWT"}, claims(), key=None
    ),
    "alg None (capitalised), no signature": lambda: hand_signed(
        {"alg": "None", "typ": "JWT"}, claims(), key=None
    ),
    "alg none with the real HMAC appended": lambda: hand_signed(
        {"alg": "none", "typ": "JWT"}, claims(), key=SECRET
    ),
    "HS256 signed with another secret": lambda: hand_signed(
        {"alg": "HS256", "typ": "JWT"}, claims(), key=b"another-secret-of-enough-length-0123456789"
    ),
    "HS256 signed with an RSA public key (RS/HS confusion)": lambda: hand_signed(
        {"alg": "HS256", "typ": "JWT"}, claims(), key=PUBLIC_KEY_PEM.encode()
    ),
    "RS256 header with an HMAC signature (RS/HS confusion)": lambda: hand_signed(
        {"alg": "RS256", "typ": "JWT"}, claims(), key=SECRET
    ),
    "HS512 with the right secret (algorithm not allowed)": lambda: hand_signed(
        {"alg": "HS512", "typ": "JWT"}, claims(), key=SECRET
    ),
    "ES256 header": lambda: hand_signed({"alg": "ES256", "typ": "JWT"}, claims(), key=SECRET),
    "missing exp": lambda: hand_signed({"alg": "HS256"}, claims(exp=None), key=SECRET),
    "missing iat": lambda: hand_signed({"alg": "HS256"}, claims(iat=None), key=SECRET),
    "missing sub": lambda: hand_signed({"alg": "HS256"}, claims(sub=None), key=SECRET),
    "missing iss": lambda: hand_signed({"alg": "HS256"}, claims(iss=None), key=SECRET),
    "wrong issuer": lambda: hand_signed({"alg": "HS256"}, claims(iss="evil-corp"), key=SECRET),
    "expired": lambda: hand_signed(
        {"alg": "HS256"},
        claims(exp=int(utc_now().timestamp()) - 60),
        key=SECRET,
    ),
    "not yet valid (nbf in the future)": lambda: hand_signed(
        {"alg": "HS256"}, claims(nbf=int(utc_now().timestamp()) + 3600), key=SECRET
    ),
    "exp as a string": lambda: hand_signed({"alg": "HS256"}, claims(exp="never"), key=SECRET),
    "unknown role": lambda: hand_signed({"alg": "HS256"}, claims(role="root"), key=SECRET),
    "scope as a string, not a list": lambda: hand_signed(
        {"alg": "HS256"}, claims(scope="*"), key=SECRET
    ),
    "tampered payload (judge promoted to admin)": lambda: tampered_role(),
    "empty string": lambda: "",
    "two segments only": lambda: ".".join(
        issue_token(SETTINGS, subject="a", role=Role.ADMIN, scopes=["*"]).split(".")[:2]
    ),
    "garbage": lambda: "not.a.jwt",
}


def tampered_role() -> str:
    genuine = issue_token(SETTINGS, subject="j1", role=Role.JUDGE, scopes=["event:E1"])
    header, payload, signature = genuine.split(".")
    body = json.loads(b64url_decode(payload))
    body["role"] = "admin"
    body["scope"] = ["*"]
    return f"{header}.{b64url(json.dumps(body).encode())}.{signature}"


@pytest.mark.parametrize("name", sorted(HOSTILE_TOKENS))
def test_decode_refuses_hostile_token(name: str) -> None:
    token = HOSTILE_TOKENS[name]()
    with pytest.raises(Unauthenticated) as refused:
        decode_token(SETTINGS, token)
    assert refused.value.status_code == 401


def test_a_genuine_token_still_decodes() -> None:
    """The refusals above mean something only if a well-formed token is accepted."""
    principal = decode_token(
        SETTINGS, hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), key=SECRET)
    )
    assert (principal.subject, principal.role, principal.scopes) == (
        "mallory",
        Role.ADMIN,
        frozenset({"*"}),
    )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-xyz019"))
def test_any_change_to_a_signed_token_is_refused(position: int, replacement: str) -> None:
    genuine = issue_token(SETTINGS, subject="o1", role=Role.UNION_OFFICER, scopes=["union:U1"])
    index = position % len(genuine)
    if genuine[index] in ".=" or genuine[index] == replacement:
        return
    forged = genuine[:index] + replacement + genuine[index + 1 :]
    try:
        principal = decode_token(SETTINGS, forged)
    except Unauthenticated:
        return
    # Base64url's last character can carry unused bits: the same bytes decode either way.
    assert principal == decode_token(SETTINGS, genuine), f"forged token accepted: {forged}"


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(role=st.text(min_size=0, max_size=20), scope=st.lists(st.text(max_size=10), max_size=3))
def test_a_signed_token_with_an_unknown_role_is_refused(role: str, scope: list[str]) -> None:
    if role in {r.value for r in Role}:
        return
    token = hand_signed({"alg": "HS256"}, claims(role=role, scope=scope), key=SECRET)
    with pytest.raises(Unauthenticated):
        decode_token(SETTINGS, token)


def test_a_token_lives_no_longer_than_asked() -> None:
    token = issue_token(SETTINGS, subject="a", role=Role.LEADER, ttl=timedelta(minutes=5))
    payload = json.loads(b64url_decode(token.split(".")[1]))
    assert payload["exp"] - payload["iat"] == 300


@pytest.mark.integration
async def test_every_hostile_token_gets_401_over_http(services: ServicePool) -> None:
    service = await services.get("awards")
    assert service.settings.jwt_secret == SETTINGS.jwt_secret
    wrong: list[str] = []
    async with service.client() as http:
        for name, make in sorted(HOSTILE_TOKENS.items()):
            # HTTP forbids a trailing space in a header value: an empty token is "Bearer".
            header = f"Bearer {make()}".strip()
            answer = await http.get("/policies", headers={"Authorization": header})
            if answer.status_code != 401 or "error" not in answer.json():
                wrong.append(f"{name}: {answer.status_code} {answer.text[:200]}")
        for scheme in ("Basic", "Token", "bearer"):
            genuine = issue_token(SETTINGS, subject="a", role=Role.ADMIN, scopes=["*"])
            answer = await http.get("/policies", headers={"Authorization": f"{scheme} {genuine}"})
            expected = 200 if scheme == "bearer" else 401
            if answer.status_code != expected:
                wrong.append(f"scheme {scheme}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.integration
async def test_the_mark_stream_refuses_bad_tokens_before_reading_marks(
    services: ServicePool, ids: Ids
) -> None:
    service = await services.get("scoring")
    base = service.url.replace("http://", "ws://") + f"/events/{ids.event}/marks/stream"
    other_event = issue_token(
        service.settings, subject=ids.judge, role=Role.JUDGE, scopes=[f"event:{ids.other_event}"]
    )
    leader = issue_token(service.settings, subject=ids.leader, role=Role.LEADER, scopes=["*"])
    refused: dict[str, str] = {
        "no token": base,
        "forged": base + "?token=" + HOSTILE_TOKENS["HS256 signed with another secret"](),
        "alg none": base + "?token=" + HOSTILE_TOKENS["alg none, no signature"](),
        "judge of another event": base + "?token=" + other_event,
        "leader": base + "?token=" + leader,
    }
    accepted_anyway: list[str] = []
    for name, url in refused.items():
        try:
            async with connect(url, open_timeout=10) as socket:
                await socket.send(json.dumps({"mark_id": "m", "entry_id": "e"}))
                await socket.recv()
                accepted_anyway.append(name)
        except (websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed):
            continue
    judge = issue_token(
        service.settings, subject=ids.judge, role=Role.JUDGE, scopes=[f"event:{ids.event}"]
    )
    async with connect(base + "?token=" + judge, open_timeout=10) as socket:
        await socket.send(json.dumps({"mark_id": ids.mark + "-ws", "entry_id": "nope"}))
        answer = json.loads(await socket.recv())
    assert not accepted_anyway, f"mark stream accepted: {accepted_anyway}"
    assert "mark_id" in answer, "a judge of the event must get an answer per mark"


@pytest.mark.integration
async def test_public_endpoints_answer_without_token(services: ServicePool) -> None:
    service = await services.get("notifications")
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        for path in ("/healthz", "/readyz", "/asyncapi.json", "/openapi.json", "/standings", "/"):
            answer = await http.get(path)
            assert answer.status_code == 200, (path, answer.status_code)
