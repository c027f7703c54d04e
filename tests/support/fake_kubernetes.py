"""A strict fake of the Kubernetes API for pods and nodes: a real HTTP server on 127.0.0.1.

What it serves, as kube-apiserver does (``k8s.io/apiserver`` list/watch semantics):

* ``GET /api/v1/pods`` and ``/api/v1/namespaces/{ns}/pods`` — a list (``kind: PodList``) at the current
  resourceVersion, in key order (namespace/name), paged with ``limit``/``continue`` from one consistent
  snapshot; or, with ``watch=true``, a chunked stream of JSON watch events after ``resourceVersion``:
  ADDED / MODIFIED / DELETED (an object that stops or starts matching the selectors is DELETED /
  ADDED, like the real cache), BOOKMARK (with ``allowWatchBookmarks``), and an ERROR event with a
  410 Status when the resourceVersion is older than the last compaction (``compact``). The watch ends
  after ``timeoutSeconds``.
* ``GET /api/v1/nodes/{name}``.

Strict like the server: a bearer token when one is set (401 Status otherwise), only known query
parameters (400), field selectors only on the fields pods support (400 ``field label not supported``),
label selectors parsed (equality- and set-based), booleans as Go's ParseBool reads them. Errors are
``Status`` objects. Failure injection: ``fail_next``, ``drop_watches`` (the connection just ends),
``compact`` (410 on old versions), ``gone_as_status`` (answer a too-old watch with HTTP 410).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

POD_FIELDS = {
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
}
LIST_PARAMS = {
    "fieldSelector",
    "labelSelector",
    "limit",
    "continue",
    "resourceVersion",
    "resourceVersionMatch",
    "pretty",
}
WATCH_PARAMS = {
    "fieldSelector",
    "labelSelector",
    "resourceVersion",
    "allowWatchBookmarks",
    "timeoutSeconds",
    "watch",
    "pretty",
    "sendInitialEvents",
    "resourceVersionMatch",
}
_BOOL = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}
_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def status_object(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def field_of(pod: Obj, path: str) -> str:
    value: Any = pod
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def parse_field_selector(text: str) -> Callable[[Obj], bool]:
    terms: list[tuple[str, str, str]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", raw)
        if m is None:
            raise BadRequest(400, "BadRequest", f"invalid field selector: {raw!r}")
        key, op, value = m.groups()
        if key not in POD_FIELDS:
            raise BadRequest(400, "BadRequest", f"field label not supported: {key}")
        terms.append((key, op, value))
    return lambda pod: all((field_of(pod, k) == v) == (op != "!=") for k, op, v in terms)


Requirement = tuple[str, str, frozenset[str]]  # key, operator (in, notin, exists, !exists), values


def _holds(labels: Mapping[str, str], requirement: Requirement) -> bool:
    key, op, values = requirement
    if op == "in":
        return labels.get(key) in values
    if op == "notin":
        return labels.get(key) not in values
    return (key in labels) == (op == "exists")


def parse_label_selector(text: str) -> Callable[[Obj], bool]:
    requirements: list[Requirement] = []
    for raw in _split_selector(text):
        if m := _SET_RE.match(raw):
            values = frozenset(v.strip() for v in m[3].split(",") if v.strip())
            requirements.append((m[1], m[2], values))
        elif m := re.fullmatch(r"\s*([\w./-]+)\s*(==|!=|=)\s*([\w.-]*)\s*", raw):
            requirements.append((m[1], "notin" if m[2] == "!=" else "in", frozenset([m[3]])))
        elif m := re.fullmatch(r"\s*(!?)([\w./-]+)\s*", raw):
            requirements.append((m[2], "!exists" if m[1] else "exists", frozenset()))
        else:
            raise BadRequest(400, "BadRequest", f"unable to parse requirement: {raw!r}")

    def matches(pod: Obj) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return all(_holds(labels, r) for r in requirements)

    return matches


def _split_selector(text: str) -> Iterator[str]:
    depth, current = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            if current.strip():
                yield current
            current = ""
        else:
            current += ch
    if current.strip():
        yield current


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass
class Change:
    rv: int
    kind: str  # ADDED | MODIFIED | DELETED
    old: Obj | None
    new: Obj


@dataclass
class FakeKubernetes:
    """The server. Use as a context manager; ``url`` is its base URL."""

    token: str | None = None
    gone_as_status: bool = False
    bookmark_every: float = 0.0  # seconds between automatic bookmarks on idle watches; 0: none
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._rv = 100
        self._compacted = 0
        self._pods: dict[tuple[str, str], Obj] = {}
        self._changes: list[Change] = []
        self._nodes: dict[str, Obj] = {}
        self._failures: list[tuple[str, int]] = []
        self._watch_generation = 0
        self._bookmark_requests = 0
        self._down: int | None = None
        self.watches_open = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, path: str, context: str = "fake") -> str:
        """Write a kubeconfig pointing at this server (with its token) and return the path."""
        user: Obj = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
        }
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    # --- objects -------------------------------------------------------------------------------
    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def add_pod(self, pod: Obj) -> Obj:
        with self._lock:
            pod = copy.deepcopy(pod)
            meta = pod.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("namespace", "default")
            rv = self._next_rv()
            meta["resourceVersion"] = str(rv)
            key = (meta["namespace"], meta["name"])
            assert key not in self._pods, f"pod {key} exists"
            self._pods[key] = pod
            self._changes.append(Change(rv, "ADDED", None, copy.deepcopy(pod)))
            self._lock.notify_all()
            return copy.deepcopy(pod)

    def update_pod(self, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        with self._lock:
            old = self._pods[(namespace, name)]
            new = copy.deepcopy(old)
            change(new)
            rv = self._next_rv()
            new["metadata"]["resourceVersion"] = str(rv)
            self._pods[(namespace, name)] = new
            self._changes.append(Change(rv, "MODIFIED", copy.deepcopy(old), copy.deepcopy(new)))
            self._lock.notify_all()
            return copy.deepcopy(new)

    def delete_pod(self, namespace: str, name: str, final: Callable[[Obj], None] | None = None) -> None:
        with self._lock:
            old = self._pods.pop((namespace, name))
            gone = copy.deepcopy(old)
            if final is not None:
                final(gone)
            rv = self._next_rv()
            gone["metadata"]["resourceVersion"] = str(rv)
            self._changes.append(Change(rv, "DELETED", copy.deepcopy(old), gone))
            self._lock.notify_all()

    def add_node(self, name: str, labels: Mapping[str, str]) -> None:
        with self._lock:
            self._nodes[name] = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": name, "labels": dict(labels), "resourceVersion": str(self._next_rv())},
            }

    def compact(self) -> None:
        """Forget history: watches from any older resourceVersion now get 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._lock.notify_all()

    def drop_watches(self) -> None:
        """End every open watch abruptly (a network failure)."""
        with self._lock:
            self._watch_generation += 1
            self._lock.notify_all()

    def bookmark(self) -> None:
        """Send a bookmark on every open watch that asked for them."""
        with self._lock:
            self._bookmark_requests += 1
            self._lock.notify_all()

    def down(self, status: int | None) -> None:
        """Answer every request with ``status`` (None: serve again); open watches keep going."""
        with self._lock:
            self._down = status

    def fail_next(self, path_prefix: str, status: int, count: int = 1) -> None:
        with self._lock:
            self._failures += [(path_prefix, status)] * count

    def count(self, *, watch: bool | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (path is None or r.path == path)
                and (watch is None or (r.query.get("watch", ["false"])[0] in ("true", "True", "1")) == watch)
            )

    # --- serving -------------------------------------------------------------------------------
    def _state_at(self, rv: int) -> dict[tuple[str, str], Obj]:
        state: dict[tuple[str, str], Obj] = {}
        for change in self._changes:
            if change.rv > rv:
                break
            key = (change.new["metadata"]["namespace"], change.new["metadata"]["name"])
            if change.kind == "DELETED":
                state.pop(key, None)
            else:
                state[key] = change.new
        return state

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    fake._serve(self)
                except BadRequest as error:
                    self._json(error.status, status_object(error.status, error.reason, str(error)))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, status: int, body: Obj) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._json(405, status_object(405, "MethodNotAllowed", "method not allowed"))

        return Handler

    def _serve(self, handler: Any) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append(Request("GET", parts.path, query, handler.headers.get("Authorization")))
            failure = next((f for f in self._failures if parts.path.startswith(f[0])), None)
            if failure is not None:
                self._failures.remove(failure)
        if self.token is not None and handler.headers.get("Authorization") != f"Bearer {self.token}":
            raise BadRequest(401, "Unauthorized", "Unauthorized")
        if failure is not None:
            raise BadRequest(failure[1], "InternalError", f"injected failure {failure[1]}")
        if self._down is not None:
            raise BadRequest(self._down, "ServiceUnavailable", "down (test)")
        if m := re.fullmatch(r"/api/v1/nodes/([^/]+)", parts.path):
            _only(query, {"pretty"})
            with self._lock:
                node = self._nodes.get(m[1])
            if node is None:
                raise BadRequest(404, "NotFound", f'nodes "{m[1]}" not found')
            handler._json(200, node)
            return
        if parts.path == "/api/v1/pods":
            namespace = None
        elif m := re.fullmatch(r"/api/v1/namespaces/([a-z0-9-]+)/pods", parts.path):
            namespace = m[1]
        else:
            raise BadRequest(404, "NotFound", "the server could not find the requested resource")
        watching = _bool(query, "watch")
        _only(query, WATCH_PARAMS if watching else LIST_PARAMS | {"watch"})
        fields = parse_field_selector(_one(query, "fieldSelector") or "")
        labels = parse_label_selector(_one(query, "labelSelector") or "")

        def selected(pod: Obj | None) -> bool:
            return (
                pod is not None
                and (namespace is None or pod["metadata"]["namespace"] == namespace)
                and fields(pod)
                and labels(pod)
            )

        if watching:
            self._watch(handler, query, selected)
        else:
            self._list(handler, query, selected)

    def _list(
        self, handler: Any, query: dict[str, list[str]], selected: Callable[[Obj | None], bool]
    ) -> None:
        limit = int(_one(query, "limit") or 0)
        token = _one(query, "continue")
        with self._lock:
            if token:
                rv_text, _, start = token.partition(":")
                rv = int(rv_text)
                if rv < self._compacted:
                    raise BadRequest(410, "Expired", "The provided continue parameter is too old")
            else:
                rv, start = self._rv, ""
            state = self._state_at(rv)
        keys = sorted(k for k, pod in state.items() if selected(pod) and "/".join(k) > start)
        page = keys[:limit] if limit else keys
        metadata: Obj = {"resourceVersion": str(rv)}
        if limit and len(keys) > limit:
            metadata["continue"] = f"{rv}:{'/'.join(page[-1])}"
        handler._json(
            200,
            {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": [state[k] for k in page]},
        )

    def _watch(
        self, handler: Any, query: dict[str, list[str]], selected: Callable[[Obj | None], bool]
    ) -> None:
        since = int(_one(query, "resourceVersion") or 0)
        timeout = int(_one(query, "timeoutSeconds") or 1800)
        bookmarks = _bool(query, "allowWatchBookmarks")
        with self._lock:
            too_old = since < self._compacted
            generation = self._watch_generation
            bookmark_seen = self._bookmark_requests
        if too_old and self.gone_as_status:
            raise BadRequest(410, "Expired", f"too old resource version: {since} ({self._compacted})")
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event: Obj) -> None:
            data = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        if too_old:
            send(
                {
                    "type": "ERROR",
                    "object": status_object(
                        410, "Expired", f"too old resource version: {since} ({self._compacted})"
                    ),
                }
            )
            handler.wfile.write(b"0\r\n\r\n")
            return
        deadline = time.monotonic() + timeout
        last_bookmark = time.monotonic()
        position = since
        with self._lock:
            self.watches_open += 1
        try:
            while True:
                with self._lock:
                    pending = [c for c in self._changes if c.rv > position]
                    dropped = self._watch_generation != generation
                    want_bookmark = self._bookmark_requests != bookmark_seen
                    bookmark_seen = self._bookmark_requests
                    if not pending and not dropped and not want_bookmark:
                        self._lock.wait(0.05)
                        current = self._rv
                    else:
                        current = self._rv
                if dropped:
                    handler.close_connection = True
                    return  # no terminating chunk: the connection just ends
                for change in pending:
                    was, now = selected(change.old), selected(change.new)
                    kind = change.kind
                    if kind == "MODIFIED" and was != now:
                        kind = "ADDED" if now else "DELETED"
                    if (kind == "DELETED" and was) or (kind != "DELETED" and now):
                        send({"type": kind, "object": change.new})
                    position = change.rv
                auto = self.bookmark_every and time.monotonic() - last_bookmark >= self.bookmark_every
                if bookmarks and (want_bookmark or auto):
                    position = max(position, current)
                    send(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Pod",
                                "apiVersion": "v1",
                                "metadata": {
                                    "resourceVersion": str(position),
                                    "annotations": {"k8s.io/initial-events-end": "false"},
                                },
                            },
                        }
                    )
                    last_bookmark = time.monotonic()
                if time.monotonic() >= deadline:
                    handler.wfile.write(b"0\r\n\r\n")
                    return
        finally:
            with self._lock:
                self.watches_open -= 1


def _one(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(400, "BadRequest", f"{key} given {len(values)} times")
    return values[0]


def _bool(query: Mapping[str, list[str]], key: str) -> bool:
    value = _one(query, key)
    if value is None:
        return False
    if value not in _BOOL:
        raise BadRequest(400, "BadRequest", f"{key}: invalid boolean {value!r}")
    return _BOOL[value]


def _only(query: Mapping[str, list[str]], allowed: set[str]) -> None:
    if unknown := sorted(set(query) - allowed):
        raise BadRequest(400, "BadRequest", f"unknown query parameters: {', '.join(unknown)}")


# --- pod builders ----------------------------------------------------------------------------

_names = itertools.count(1)


Seconds = float | Fraction


def rfc3339(seconds: Seconds) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(seconds)))


def container(
    name: str,
    requests: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Obj:
    resources: Obj = {}
    if requests:
        resources["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        resources["limits"] = {k: str(v) for k, v in limits.items()}
    return {"name": name, "image": "busybox", "resources": resources, **extra}


def make_pod(
    name: str | None = None,
    *,
    namespace: str = "default",
    node: str | None = "node-1",
    containers: list[Obj] | None = None,
    init_containers: list[Obj] | None = None,
    started: Seconds | None = None,
    phase: str = "Running",
    finished: Seconds | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    created: Seconds | None = None,
) -> Obj:
    """A pod as the API shows it: spec, and a status whose container states match ``phase``."""
    name = name or f"pod-{next(_names)}"
    containers = containers or [container("app", {"cpu": "500m", "memory": "1Gi"})]
    meta: Obj = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
    }
    if created is not None or started is not None:
        meta["creationTimestamp"] = rfc3339(created if created is not None else (started or 0) - 5)
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner[0],
                "name": owner[1],
                "uid": str(uuid.uuid4()),
                "controller": True,
            }
        ]
    spec: Obj = {"containers": containers, "restartPolicy": "Always", "schedulerName": "default-scheduler"}
    if init_containers:
        spec["initContainers"] = init_containers
    if node:
        spec["nodeName"] = node
    status: Obj = {"phase": phase}
    if started is not None:
        status["startTime"] = rfc3339(started)
        states = []
        for c in containers:
            if finished is not None:
                state = {
                    "terminated": {
                        "startedAt": rfc3339(started),
                        "finishedAt": rfc3339(finished),
                        "exitCode": 0,
                        "reason": "Completed",
                    }
                }
            else:
                state = {"running": {"startedAt": rfc3339(started)}}
            states.append(
                {
                    "name": c["name"],
                    "ready": finished is None,
                    "restartCount": 0,
                    "image": "busybox",
                    "state": state,
                }
            )
        status["containerStatuses"] = states
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(started - 1)}
        ]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}


@contextmanager
def fake_kubernetes(**kwargs: Any) -> Iterator[FakeKubernetes]:
    with FakeKubernetes(**kwargs) as server:
        yield server


class FakeTime:
    """Test time for a periodic source: ``clock`` is ``now``; every ``wait`` parks the source until
    the test calls :meth:`advance`, which moves ``now`` by the wait asked for and lets it go on."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._gate: asyncio.Future[None] | None = None
        self._parked: asyncio.Event | None = None

    def __call__(self) -> float:
        return self.now

    def _event(self) -> asyncio.Event:
        if self._parked is None:
            self._parked = asyncio.Event()
        return self._parked

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self._gate = asyncio.get_running_loop().create_future()
        stopping = asyncio.ensure_future(stop.wait())
        self._event().set()
        try:
            waiting: list[asyncio.Future[Any]] = [self._gate, stopping]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._event().clear()
        return stop.is_set()

    async def parked(self, limit: float = 20.0) -> float:
        """Until the source waits; returns how long it asked to wait."""
        await asyncio.wait_for(self._event().wait(), limit)
        return self.sleeps[-1]

    async def advance(self, limit: float = 20.0) -> float:
        """Let the parked wait end (time moves by its length); returns the next wait asked for."""
        self.now += self.sleeps[-1]
        self._event().clear()
        assert self._gate is not None
        self._gate.set_result(None)
        return await self.parked(limit)
