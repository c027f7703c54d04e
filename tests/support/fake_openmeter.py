"""A strict fake of the OpenMeter ingest API: a real HTTP server on 127.0.0.1, in a background thread.

It answers like OpenMeter (see /work/shared/openmeter-ingest-openapi.yaml and the OpenMeter handlers
``openmeter/ingest/httpdriver/ingest.go`` (v1) and ``api/v3/handlers/events/ingest.go`` (v3)) and
validates every event as strictly as the real service, so a test that passes against it does not fail
against OpenMeter. Checks run in this order, the first failing one answers:

1. ``set_delay`` latency; ``set_down(status)`` answers everything (any path/method) with ``status``.
2. path ``/api/v1/events`` (v1) or ``/v3/openmeter/events`` (v3), else 404; method POST, else 405.
3. ``Authorization: Bearer <token>`` when a token is set, else 401.
4. Content type, else **400** (OpenMeter answers 400 ``invalid content type``, not 415; the fake
   mirrors it so the exporter's handling of that answer is tested as it will happen). v1 compares the
   header exactly, like OpenMeter's v1 handler, so ``application/json; charset=utf-8`` is refused;
   v3 parses it (``mime.ParseMediaType``) and ignores parameters. ``allow_content_type_params``
   overrides either.
5. JSON body of the right shape (``cloudevents+json``: object; ``cloudevents-batch+json``: array,
   ``[]`` accepted as zero events; ``application/json``: either, ``[]`` refused "no events found").
6. Every event against the Event schema; any invalid event refuses the whole request with 400 naming
   ``event[<index>].<field>`` for every problem found.
7. ``fail_next`` queue, then ``reject_events`` predicate; otherwise 204 (v1) / 202 (v3), empty body.

Deliberately stricter than OpenMeter (our encoder must never produce these): duplicate top-level keys
in an event, trailing bytes after the JSON value, invalid UTF-8, ``NaN``/``Infinity``, and (v3)
any attribute outside the schema (``additionalProperties: false``). GET (list events) is not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast

import pytest

Api = Literal["v1", "v3"]
Event = dict[str, Any]
Predicate = Callable[[Event], bool]

_PATHS: dict[str, str] = {"v1": "/api/v1/events", "v3": "/v3/openmeter/events"}
_SUCCESS: dict[str, int] = {"v1": 204, "v3": 202}
_SINGLE, _BATCH, _JSON = (
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "application/json",
)
_REQUIRED = ("id", "source", "specversion", "type", "subject")
_SCHEMA_KEYS = frozenset((*_REQUIRED, "time", "data", "datacontenttype", "dataschema"))
_EXTENSION_NAME = re.compile(r"[a-z0-9]+", re.ASCII)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:", re.ASCII)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation problem: ``event[index].field`` (index None for a single-event body)."""

    index: int | None
    field: str
    message: str

    @property
    def path(self) -> str:
        where = "event" if self.index is None else f"event[{self.index}]"
        return f"{where}.{self.field}" if self.field else where

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the fake saw it, and the status it answered."""

    method: str
    path: str  # the request target, query string included
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    status: int
    detail: str | None = None  # the problem detail when refused
    events: tuple[Event, ...] = ()  # the events accepted from it

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: str | None = None
    body: Mapping[str, Any] | None = None


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    detail: str | None = None
    events: list[Event] = field(default_factory=list)


class _Rejected(Exception):
    def __init__(self, detail: str, issues: list[Issue] | None = None) -> None:
        super().__init__(detail)
        self.detail, self.issues = detail, issues or []


class _Object(dict[str, Any]):
    """A JSON object that remembers keys it saw more than once."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.duplicates = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", str: "string", int: "number", float: "number", list: "array"}
    return names.get(type(value), "object")


def rfc3339_problem(value: str) -> str | None:
    """Why ``value`` is not an RFC 3339 date-time (Go's ``time.RFC3339Nano``), or None."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return f"must be an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM)), got {value!r}"
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone = match.group(8)
    try:
        if zone != "Z":
            zh, zm = int(zone[1:3]), int(zone[4:6])
            if zh > 23 or zm > 59:
                raise ValueError("offset out of range")
        datetime(year, month, day, hour, minute, second, tzinfo=timezone(timedelta(0)))
    except ValueError as exc:
        return f"must be a valid RFC 3339 date-time, got {value!r} ({exc})"
    return None


def _uri_reference_problem(value: str) -> str | None:
    """Why Go's ``url.Parse`` (which CloudEvents' sdk-go uses for ``source``) would refuse ``value``."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must be a URI-reference (contains a control character)"
    unquoted = re.sub(r"\?[^#]*", "", value)  # Go does not validate escapes in the query
    if _BAD_ESCAPE.search(unquoted):
        return f"must be a URI-reference (invalid percent-escape in {value!r})"
    if _SCHEME.match(value) is None and ":" in re.split(r"[/?#]", value, maxsplit=1)[0]:
        return f"must be a URI-reference (missing scheme or colon in first path segment: {value!r})"
    return None


def _extension_value_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int | float) and _INT32_MIN <= value <= _INT32_MAX and float(value).is_integer():
        return None
    return f"CloudEvents extension must be a string, boolean or 32-bit integer, got {_kind(value)} {value!r}"


def validate_event(event: Any, index: int | None, api: Api) -> list[Issue]:
    """Every way ``event`` violates the OpenMeter Event / MeteringEvent schema."""
    if not isinstance(event, dict):
        return [Issue(index, "", f"must be a JSON object, got {_kind(event)}")]
    issues = [Issue(index, key, "duplicate key") for key in getattr(event, "duplicates", ())]
    for key in _REQUIRED:
        value = event.get(key)
        if key not in event:
            issues.append(Issue(index, key, "is required"))
        elif not isinstance(value, str):
            issues.append(Issue(index, key, f"must be a string, got {_kind(value)}"))
        elif not value:
            issues.append(Issue(index, key, "must not be empty"))
    if isinstance(event.get("specversion"), str) and event["specversion"] not in ("", "1.0"):
        issues.append(Issue(index, "specversion", f'must be "1.0", got {event["specversion"]!r}'))
    if isinstance(event.get("source"), str) and (problem := _uri_reference_problem(event["source"])):
        issues.append(Issue(index, "source", problem))
    if (value := event.get("time")) is not None:
        problem = (
            rfc3339_problem(value) if isinstance(value, str) else f"must be a string, got {_kind(value)}"
        )
        if problem:
            issues.append(Issue(index, "time", problem))
    if (value := event.get("data")) is not None and not isinstance(value, dict):
        issues.append(Issue(index, "data", f"must be a JSON object, got {_kind(value)}"))
    if (value := event.get("datacontenttype")) is not None and value != "application/json":
        issues.append(Issue(index, "datacontenttype", f'must be "application/json", got {value!r}'))
    if (value := event.get("dataschema")) is not None and (
        not isinstance(value, str) or _SCHEME.match(value) is None or _uri_reference_problem(value)
    ):
        issues.append(Issue(index, "dataschema", f"must be an absolute URI, got {value!r}"))
    for key in [k for k in event if k not in _SCHEMA_KEYS]:  # in the order sent
        if api == "v3":
            issues.append(Issue(index, key, "is not allowed (MeteringEvent has additionalProperties: false)"))
        elif _EXTENSION_NAME.fullmatch(key) is None:
            issues.append(Issue(index, key, "is not a CloudEvents attribute name (only a-z and 0-9)"))
        elif problem := _extension_value_problem(event[key]):
            issues.append(Issue(index, key, problem))
    return issues


class FakeOpenMeter:
    """A strict fake OpenMeter ingest endpoint. Start with ``with FakeOpenMeter() as fake:`` or ``start()``.

    Thread-safe; every accessor returns a copy. Use ``wait_for_events`` (or ``wait_for_events_async``
    from a coroutine, so the event loop keeps running) instead of sleeping.
    """

    def __init__(
        self,
        token: str | None = "test-token",
        api: Api = "v1",
        *,
        allow_content_type_params: bool | None = None,
    ) -> None:
        if api not in _PATHS:
            raise ValueError(f"api must be 'v1' or 'v3', got {api!r}")
        self.token, self.api = token, api
        self.allow_content_type_params = (
            api == "v3" if allow_content_type_params is None else allow_content_type_params
        )
        self._cond = threading.Condition(threading.RLock())
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._events: list[Event] = []
        self._batches: list[list[Event]] = []
        self._requests: list[RecordedRequest] = []
        self._errors: list[BaseException] = []
        self._failures: deque[_Failure] = deque()
        self._down: _Failure | None = None
        self._reject: tuple[Predicate, int] | None = None
        self._delay = 0.0
        self._problems = 0
        self._received = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeOpenMeter:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread (idempotent)."""
        if self._server is None:
            if self._stopping.is_set():
                raise RuntimeError("a stopped FakeOpenMeter cannot be restarted")
            self._server = _Server(self)
            self._port = int(self._server.server_address[1])  # kept after stop(): the URL then refuses
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.01},
                name="fake-openmeter",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, drop open connections, interrupt delays, and join the server threads."""
        server, self._server = self._server, None
        self._stopping.set()
        if server is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenMeter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if exc_type is None and self._errors:
            raise AssertionError(
                f"FakeOpenMeter hit errors while serving: {self._errors!r}"
            ) from self._errors[0]

    # -- addresses -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeOpenMeter was never started; use it as a context manager or call start()")
        return self._port

    @property
    def url(self) -> str:
        """Base URL as a user configures it: v1 ``http://127.0.0.1:PORT``, v3 ``…/v3/openmeter``."""
        base = f"http://127.0.0.1:{self.port}"
        return base if self.api == "v1" else f"{base}/v3/openmeter"

    @property
    def events_url(self) -> str:
        """The full ingest URL."""
        return f"http://127.0.0.1:{self.port}{_PATHS[self.api]}"

    # -- what was received -----------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """Every accepted event, in arrival order."""
        with self._cond:
            return list(self._events)

    @property
    def batches(self) -> list[list[Event]]:
        """The accepted events of each accepted request."""
        with self._cond:
            return [list(batch) for batch in self._batches]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (accepted or not), in the order answered."""
        with self._cond:
            return list(self._requests)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised while serving (e.g. by a ``reject_events`` predicate); fail the test."""
        with self._cond:
            return list(self._errors)

    def unique_ids(self) -> set[tuple[str, str]]:
        """The (source, id) pairs accepted."""
        with self._cond:
            return {(e["source"], e["id"]) for e in self._events}

    def duplicates(self) -> list[tuple[str, str]]:
        """The (source, id) pairs accepted more than once (double counting), in first-seen order."""
        with self._cond:
            counts = Counter((e["source"], e["id"]) for e in self._events)
        return [key for key, n in counts.items() if n > 1]

    # -- failure injection -----------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, retry_after: str | None = None, body: Mapping[str, Any] | None = None
    ) -> None:
        """Answer the next ``n`` otherwise-accepted requests with ``status`` (queued after earlier calls)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        failure = _Failure(_error_status(status), retry_after, body)
        with self._cond:
            self._failures.extend([failure] * n)

    def set_down(self, status: int | None, retry_after: str | None = None) -> None:
        """Answer every request with ``status`` until called with None."""
        with self._cond:
            self._down = None if status is None else _Failure(_error_status(status), retry_after)

    def reject_events(self, predicate: Predicate | None, status: int = 400) -> None:
        """Refuse (whole request, with ``status``) any request holding an event matching ``predicate``.

        Replaces the previous predicate; None clears it.
        """
        with self._cond:
            self._reject = None if predicate is None else (predicate, _error_status(status))

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering each request (interrupted by ``stop``)."""
        with self._cond:
            self._delay = max(0.0, seconds)

    def clear_faults(self) -> None:
        """Forget ``fail_next``, ``set_down``, ``reject_events`` and ``set_delay``."""
        with self._cond:
            self._failures.clear()
            self._down, self._reject, self._delay = None, None, 0.0

    # -- waiting ---------------------------------------------------------------------------------

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[Event]:
        """Block until at least ``count`` events were accepted; return them all. AssertionError on timeout."""
        with self._cond:
            self._wait(lambda: len(self._events), count, timeout, "accepted event(s)")
            return list(self._events)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``count`` requests were answered; return them all. AssertionError on timeout."""
        with self._cond:
            self._wait(lambda: len(self._requests), count, timeout, "answered request(s)")
            return list(self._requests)

    def wait_for_received(self, count: int, timeout: float = 10.0) -> int:
        """Block until ``count`` requests arrived, answered or not (e.g. held by ``set_delay``)."""
        with self._cond:
            self._wait(lambda: self._received, count, timeout, "received request(s)")
            return self._received

    @property
    def received(self) -> int:
        """How many requests arrived, including those not answered yet."""
        with self._cond:
            return self._received

    def _wait(self, current: Callable[[], int], count: int, timeout: float, what: str) -> None:
        if not self._cond.wait_for(lambda: current() >= count, timeout):
            raise AssertionError(
                self._describe(f"expected >= {count} {what} within {timeout}s, got {current()}")
            )

    # The timeout bounds the waiting thread, not the coroutine: cancelling the await would leave it running.
    async def wait_for_events_async(self, count: int, timeout: float = 10.0) -> list[Event]:  # noqa: ASYNC109
        """``wait_for_events`` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_events, count, timeout)

    async def wait_for_requests_async(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[RecordedRequest]:
        """``wait_for_requests`` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_requests, count, timeout)

    def _describe(self, headline: str) -> str:
        lines = [f"FakeOpenMeter ({self.api}): {headline}."]
        lines.append(f"Accepted ids: {[e.get('id') for e in self._events][-50:]}")
        lines.append(f"Requests ({len(self._requests)}, last 20):")
        for r in self._requests[-20:]:
            lines.append(f"  {r.method} {r.path} -> {r.status}" + (f" ({r.detail})" if r.detail else ""))
        if self._errors:
            lines.append(f"Errors while serving: {self._errors!r}")
        return "\n".join(lines)

    # -- the request path ------------------------------------------------------------------------

    def _answer(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> _Answer:
        with self._cond:
            down = self._down
        if down is not None:
            return self._problem(down.status, "service is down (set_down)", retry_after=down.retry_after)
        if target.split("?", 1)[0] != _PATHS[self.api]:
            return self._problem(404, f"no route for {target.split('?', 1)[0]}")
        if method != "POST":
            answer = self._problem(405, f"method {method} not allowed")
            answer.headers["Allow"] = "POST"
            return answer
        if self.token is not None:
            scheme, _, credentials = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or credentials.strip() != self.token:
                return self._problem(401, "Invalid credentials")
        try:
            if body is None:
                raise _Rejected("unreadable request body framing")
            events = self._decode(headers.get("content-type", ""), body)
        except _Rejected as exc:
            return self._problem(400, exc.detail, issues=exc.issues)
        with self._cond:
            failure = self._failures.popleft() if self._failures else None
            reject = self._reject
        if failure is not None:
            return self._problem(
                failure.status, "injected failure (fail_next)", failure.retry_after, failure.body
            )
        if reject is not None:
            predicate, status = reject
            for i, event in enumerate(events):
                if predicate(event):
                    issue = Issue(i, "", f"rejected (source={event['source']!r}, id={event['id']!r})")
                    return self._problem(status, str(issue), issues=[issue])
        return _Answer(_SUCCESS[self.api], events=events)

    def _decode(self, content_type: str, body: bytes) -> list[Event]:
        media = (
            content_type.split(";", 1)[0].strip().lower() if self.allow_content_type_params else content_type
        )
        if media not in (_SINGLE, _BATCH, _JSON):
            raise _Rejected(f"invalid content type: {content_type!r}")
        try:
            document = json.loads(
                body.decode("utf-8"), object_pairs_hook=_Object, parse_constant=_no_constants
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Rejected(f"invalid event: request body is not valid JSON: {exc}") from None
        if media == _SINGLE and not isinstance(document, dict):
            raise _Rejected(f"invalid event: {_SINGLE} body must be one event object, got {_kind(document)}")
        if media == _BATCH and not isinstance(document, list):
            raise _Rejected(f"invalid event: {_BATCH} body must be an array of events, got {_kind(document)}")
        if media == _JSON and not isinstance(document, dict | list):
            raise _Rejected(
                f"invalid event: body must be an event or an array of events, got {_kind(document)}"
            )
        if media == _JSON and document == []:
            raise _Rejected("invalid event: no events found")
        batch = isinstance(document, list)
        items = document if batch else [document]
        issues = [
            issue for i, e in enumerate(items) for issue in validate_event(e, i if batch else None, self.api)
        ]
        if issues:
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            raise _Rejected(f"invalid event: {issues[0]}{more}", issues)
        plain: Any = json.loads(body)  # plain dicts for the test to inspect
        return list(plain) if batch else [plain]

    def _problem(
        self,
        status: int,
        detail: str,
        retry_after: str | None = None,
        body: Mapping[str, Any] | None = None,
        issues: list[Issue] | None = None,
    ) -> _Answer:
        with self._cond:
            self._problems += 1
            n = self._problems
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        doc: dict[str, Any]
        if body is not None:
            doc = dict(body)
        elif self.api == "v1":
            doc = {"type": "about:blank", "title": title, "status": status, "detail": detail}
            doc["instance"] = f"urn:request:fake-openmeter/{n:06d}"
            if issues:
                errors = [
                    {"code": "validation_error", "message": str(i), "index": i.index, "field": i.field}
                    for i in issues
                ]
                doc["extensions"] = {"validationErrors": errors}
        else:
            doc = {
                "type": f"https://httpstatuses.com/{status}",
                "title": title,
                "status": status,
                "detail": detail,
            }
            doc["instance"] = f"kong:trace:fake-{n:06d}"
            if status == 400:
                params = [{"field": i.path, "reason": i.message, "source": "body"} for i in issues or []]
                doc["invalid_parameters"] = params or [{"field": "body", "reason": detail, "source": "body"}]
        headers = {"Content-Type": "application/problem+json"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return _Answer(status, json.dumps(doc).encode(), headers, detail)

    def _serve(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> _Answer | None:
        """The answer to send, recorded (and its events accepted) first; None: stopping, drop the request."""
        with self._cond:
            self._received += 1
            self._cond.notify_all()
            delay = self._delay
        if delay and self._stopping.wait(delay):
            return None
        try:
            answer = self._answer(method, target, headers, body)
        except Exception as exc:  # a bug in the fake or in a test predicate: answer, and fail the test later
            with self._cond:
                self._errors.append(exc)
            answer = self._problem(500, f"FakeOpenMeter error: {exc!r}")
        with self._cond:  # record and accept atomically, before the client sees the answer
            self._requests.append(
                RecordedRequest(
                    method,
                    target,
                    dict(headers),
                    body or b"",
                    answer.status,
                    answer.detail,
                    tuple(answer.events),
                )
            )
            if 200 <= answer.status < 300:
                self._events.extend(answer.events)
                self._batches.append(list(answer.events))
            self._cond.notify_all()
        return answer


def _error_status(status: int) -> int:
    if not 400 <= status <= 599:
        raise ValueError(f"an injected status must be 4xx or 5xx, got {status}")
    return status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, fake: FakeOpenMeter) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def drop_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so they exit now."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client disconnects and shutdown races; the fake's own errors are recorded in _serve


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the exporter's pooled client expects
    server_version = "FakeOpenMeter/1.0"
    timeout = 30  # an idle keep-alive connection does not pin its thread forever
    disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stall

    def setup(self) -> None:
        super().setup()
        with self._server.connections_lock:
            self._server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self._server.connections_lock:
                self._server.connections.discard(self.connection)

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded, not printed

    def _read_body(self) -> bytes | None:
        """The request body (chunked or Content-Length); None when the framing is broken."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return b"".join(self._chunks())
            length = self.headers.get("Content-Length")
            if length is None:
                return b""
            return self.rfile.read(int(length, 10)) if length.strip().isdigit() else None
        except ValueError:
            return None

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True  # the framing is unknown: the rest of the stream is garbage
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = self._server.fake._serve(self.command, self.path, headers, body)
        if answer is None:
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        if answer.status != 204:
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD" and answer.status != 204:
            self.wfile.write(answer.body)

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


@pytest.fixture
def fake_openmeter() -> Iterator[FakeOpenMeter]:
    """A running v1 FakeOpenMeter (token ``test-token``); import into a conftest to use."""
    with FakeOpenMeter() as fake:
        yield fake


@pytest.fixture
def fake_openmeter_v3() -> Iterator[FakeOpenMeter]:
    """A running v3 (Konnect-style) FakeOpenMeter (token ``test-token``); import into a conftest to use."""
    with FakeOpenMeter(api="v3") as fake:
        yield fake
