"""OpenMeter's ingest API behind ``httpx.MockTransport``: no sockets, as strict as the real service.

Checks, in order (the first failing one answers): ``down``; path and method; bearer token; the
content type compared exactly (OpenMeter v1 refuses ``…; charset=utf-8`` with 400); ``max_body``
(413); a JSON array of events, each validated with the socket fake's ``validate_event``;
``fail_next``; ``poison`` ids (400 problem+json naming the event). Otherwise 204 (v1) / 202 (v3).
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr

from otlp_meter.exporters.config import Target
from otlp_meter.exporters.openmeter import OpenMeterSink
from tests.support.fake_openmeter import Api, validate_event
from tests.unit.exporters.helpers import Changes

Event = dict[str, Any]
BASE = "http://openmeter.test"
PATHS: dict[str, str] = {"v1": "/api/v1/events", "v3": "/v3/openmeter/events"}
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class MockOpenMeter:
    """A scripted, validating ingest endpoint; ``sink()`` gives a real OpenMeterSink wired to it."""

    def __init__(self, api: Api = "v1", token: str | None = "test-token") -> None:
        self.api = api
        self.token = token
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []
        self.details: list[str] = []
        self.events: list[Event] = []
        self.batches: list[list[Event]] = []
        self.down: tuple[int, str | None] | None = None  # (status, Retry-After) for every request
        self.fail_next: deque[tuple[int, str | None]] = deque()
        self.poison: set[str] = set()
        self.poison_status = 400
        self.max_body: int | None = None
        self.changes = Changes(lambda: f"answers {self.statuses[-30:]}, accepted {len(self.events)} events")

    @property
    def endpoint(self) -> str:
        return f"{BASE}{PATHS[self.api]}"

    def sink(self, token: str | None = "test-token", max_connections: int = 4) -> OpenMeterSink:
        target = Target("openmeter", self.endpoint, SecretStr(token) if token else None, self.api)
        return OpenMeterSink(target, 5.0, max_connections, transport=httpx.MockTransport(self.handle))

    def duplicates(self) -> list[str]:
        return [i for i, n in Counter(e["id"] for e in self.events).items() if n > 1]

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        await self.changes.until(predicate)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        response, detail, events = self._answer(request)
        self.requests.append(request)
        self.statuses.append(response.status_code)
        self.details.append(detail)
        if response.is_success:
            self.events.extend(events)
            self.batches.append(events)
        self.changes.notify()
        return response

    def _answer(self, request: httpx.Request) -> tuple[httpx.Response, str, list[Event]]:
        if self.down is not None:
            return self._problem(self.down[0], "service is down", self.down[1])
        if request.url.path != PATHS[self.api]:
            return self._problem(404, f"no route for {request.url.path}")
        if request.method != "POST":
            return self._problem(405, f"method {request.method} not allowed")
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return self._problem(401, "Invalid credentials")
        if request.headers.get("content-type") != BATCH_CONTENT_TYPE:
            return self._problem(400, f"invalid content type: {request.headers.get('content-type')!r}")
        if self.max_body is not None and len(request.content) > self.max_body:
            return self._problem(413, f"request body of {len(request.content)} bytes is too large")
        try:
            events = json.loads(request.content)
        except ValueError as exc:
            return self._problem(400, f"invalid event: request body is not valid JSON: {exc}")
        if not isinstance(events, list):
            return self._problem(400, "invalid event: body must be an array of events")
        issues = [issue for i, e in enumerate(events) for issue in validate_event(e, i, self.api)]
        if issues:
            return self._problem(400, f"invalid event: {issues[0]}")
        if self.fail_next:
            status, retry_after = self.fail_next.popleft()
            return self._problem(status, "injected failure", retry_after)
        for i, event in enumerate(events):
            if event["id"] in self.poison:
                return self._problem(self.poison_status, f"event[{i}].data: rejected id {event['id']!r}")
        return httpx.Response(204 if self.api == "v1" else 202), "", events

    def _problem(
        self, status: int, detail: str, retry_after: str | None = None
    ) -> tuple[httpx.Response, str, list[Event]]:
        doc = {"type": "about:blank", "title": "Error", "status": status, "detail": detail}
        headers = {"content-type": "application/problem+json"}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        return httpx.Response(status, headers=headers, content=json.dumps(doc).encode()), detail, []
