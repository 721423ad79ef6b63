"""A small async client for the four services' HTTP APIs (docs/http-api.md), with tokens.

The demo, the end-to-end test, the fault suite and the benchmark drive the platform the way a
union officer's, a judge's and a leader's tools would: over HTTP with bearer tokens.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx

from shared.auth import Role, issue_token
from shared.settings import Settings


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        try:
            self.body: Any = response.json()
        except ValueError:
            self.body = response.text
        super().__init__(f"HTTP {response.status_code} {response.request.url}: {self.body}")

    @property
    def rule(self) -> str | None:
        if isinstance(self.body, dict):
            error = self.body.get("error")
            if isinstance(error, dict):
                return error.get("rule")
        return None


class Tokens:
    """Issues demo tokens with the platform's own secret (what `jinchui token issue` does)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def make(self, role: Role, subject: str, scopes: Iterable[str] = ()) -> str:
        return issue_token(self._settings, subject=subject, role=role, scopes=scopes)

    def admin(self) -> str:
        return self.make(Role.ADMIN, "admin", ["*"])

    def officer(self, union_id: str) -> str:
        return self.make(Role.UNION_OFFICER, f"officer-{union_id}", [f"union:{union_id}"])

    def judge(self, judge_id: str, event_ids: Iterable[str]) -> str:
        return self.make(Role.JUDGE, judge_id, [f"event:{e}" for e in event_ids])

    def chief_judge(self, judge_id: str, event_ids: Iterable[str]) -> str:
        return self.make(Role.CHIEF_JUDGE, judge_id, [f"event:{e}" for e in event_ids])

    def leader(self, leader_id: str = "leader") -> str:
        return self.make(Role.LEADER, leader_id, ["*"])


class ServiceClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def close(self) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        json_body: Any = None,
        content: bytes | str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Iterable[int] = (200, 201),
    ) -> Any:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        response = await self.http.request(
            method,
            path,
            json=json_body,
            content=content,
            params=params,
            headers=all_headers,
        )
        if response.status_code not in set(expect):
            raise ApiError(response)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    async def post(self, path: str, token: str | None, body: Any = None, **kw: Any) -> Any:
        headers = {"Idempotency-Key": str(uuid.uuid4()), **kw.pop("headers", {})}
        return await self.call("POST", path, token, json_body=body, headers=headers, **kw)

    async def put(self, path: str, token: str | None, body: Any = None, **kw: Any) -> Any:
        return await self.call("PUT", path, token, json_body=body, **kw)

    async def get(self, path: str, token: str | None = None, **kw: Any) -> Any:
        return await self.call("GET", path, token, **kw)

    async def sse(self, path: str, token: str | None = None) -> AsyncIterator[tuple[str, Any]]:
        """Yield (event name, parsed data) from a server-sent-events endpoint."""
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.stream(
            "GET", path, headers=headers, timeout=httpx.Timeout(None, connect=10.0)
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise ApiError(response)
            event, data = "message", list[str]()
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        text = "\n".join(data)
                        try:
                            yield event, json.loads(text)
                        except ValueError:
                            yield event, text
                    event, data = "message", list[str]()
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())


class Platform:
    """Clients for all four services of one running stack."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.registration = ServiceClient(urls["registration"])
        self.scoring = ServiceClient(urls["scoring"])
        self.awards = ServiceClient(urls["awards"])
        self.notifications = ServiceClient(urls["notifications"])
        self.urls = dict(urls)

    async def close(self) -> None:
        for client in (self.registration, self.scoring, self.awards, self.notifications):
            await client.close()

    def ws_url(self, path: str) -> str:
        return self.urls["scoring"].replace("http://", "ws://", 1) + path
