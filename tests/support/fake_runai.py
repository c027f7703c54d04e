"""A strict fake of the Run:ai control-plane API: a real HTTP server on 127.0.0.1, in a thread.

Shapes follow the public API (``/api/v1/token``, ``/api/v1/clusters``, ``/api/v1/workloads``,
``/api/v1/workloads/pods``, ``.../metrics``):

* ``POST /api/v1/token`` — JSON ``{"grantType": "app_token", "appID", "appSecret"}`` (or
  ``client_credentials`` with ``clientID``/``clientSecret``) → ``{"accessToken": <JWT with exp>}``;
  wrong credentials 401. Tokens expire after ``token_lifetime`` seconds of the fake's clock
  (``expire_tokens`` ends them at once): then every call answers 401.
* Lists take ``offset``, ``limit`` (1..500), ``sortBy`` (the API's enum), ``sortOrder``, ``filterBy``
  (``field==value``, ``!=``, ``>=``, ``<=``, ``=@``, ``=^``, ``=$``; dates compared as times),
  ``deleted``, ``search``; pods also ``verbosity`` and ``completed``. They answer ``{"workloads" |
  "pods": [...], "next": <offset>}`` (``next`` absent on the last page). Unknown parameters: 400.
* Metrics take ``metricType`` (repeated, from the API's enums), ``start``, ``end`` (ISO 8601,
  start < end), ``numberOfSamples`` (0..1000) and answer ``{"measurements": [{"type", "labels",
  "values": [{"value": "<text>", "timestamp"}]}]}``, sampling ``series(type, t) -> value | None`` at
  ``start + i * (end - start) / n`` for i in 0..n (both ends, like a Prometheus range query).
  Unknown resources: 404.

Failure injection: ``fail_next(path_regex, status, count, retry_after)``, ``slow(path_regex,
seconds)``, ``before_page`` (a hook run before a list page is answered, e.g. to delete a row and
shift the pages), ``expire_tokens``. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
Series = Callable[[str, float], float | None]

WORKLOAD_METRICS = {
    "GPU_UTILIZATION", "GPU_MEMORY_USAGE_BYTES", "GPU_MEMORY_REQUEST_BYTES", "CPU_USAGE_CORES",
    "CPU_REQUEST_CORES", "CPU_LIMIT_CORES", "CPU_MEMORY_USAGE_BYTES", "CPU_MEMORY_REQUEST_BYTES",
    "CPU_MEMORY_LIMIT_BYTES", "POD_COUNT", "RUNNING_POD_COUNT", "GPU_ALLOCATION",
}  # fmt: skip
POD_METRICS = {
    "GPU_UTILIZATION_PER_GPU", "GPU_UTILIZATION", "GPU_MEMORY_USAGE_BYTES_PER_GPU", "GPU_MEMORY_USAGE_BYTES",
    "CPU_USAGE_CORES", "CPU_MEMORY_USAGE_BYTES",
}  # fmt: skip
WORKLOAD_SORT = {
    "type", "name", "clusterId", "projectId", "projectName", "departmentId", "departmentName", "createdAt",
    "deletedAt", "submittedBy", "phase", "completedAt", "nodepool", "allocatedGPU",
}  # fmt: skip
POD_SORT = {"clusterId", "workloadId", "nodeName", "currentNodepool", "createdAt", "completedAt", "deletedAt"}
LIST_PARAMS = {"offset", "limit", "sortBy", "sortOrder", "filterBy", "deleted", "search"}
_FILTER = re.compile(r"([A-Za-z]+)(==|!=|<=|>=|=@|!@|=\^|=\$)(.*)")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    if not _ISO.fullmatch(text):
        raise Refused(400, f"not an ISO 8601 time: {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def jwt(claims: Obj) -> str:
    def part(value: Obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: Any = None


@dataclass
class FakeRunai:
    """The server. Use as a context manager; ``url`` is its base URL. ``clock`` is the fake's time."""

    app_id: str = "otlp-meter"
    app_secret: str = "app-s3cret"
    token_lifetime: float = 3600.0
    clock: Callable[[], float] = time.time
    workloads: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    clusters: list[Obj] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)  # workload or pod id -> samples
    requests: list[Request] = field(default_factory=list)
    before_page: Callable[[str, int], None] | None = None  # (path, offset) before a page is answered

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._tokens: dict[str, float] = {}
        self._issued = 0
        self._failures: list[tuple[re.Pattern[str], int, str | None]] = []
        self._slow: list[tuple[re.Pattern[str], float]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeRunai:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test controls -------------------------------------------------------------------------
    def fail_next(self, path: str, status: int, count: int = 1, retry_after: str | None = None) -> None:
        with self._lock:
            self._failures += [(re.compile(path), status, retry_after)] * count

    def slow(self, path: str, seconds: float, count: int = 1) -> None:
        """Answer the next ``count`` requests to ``path`` after ``seconds``."""
        with self._lock:
            self._slow += [(re.compile(path), seconds)] * count

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def delete_workload(self, workload_id: str, at: float) -> None:
        with self._lock:
            for w in self.workloads:
                if w["id"] == workload_id:
                    w["deletedAt"] = iso(at)

    def calls(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if re.fullmatch(path, r.path)]

    @property
    def tokens_issued(self) -> int:
        return self._issued

    # --- serving -------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                try:
                    status, body = fake._serve(self, method)
                    headers: dict[str, str] = {}
                except Refused as refused:
                    status, body, headers = (
                        refused.status,
                        {"code": refused.status, "message": str(refused)},
                        refused.headers,
                    )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        return Handler

    def _serve(self, handler: Any, method: str) -> tuple[int, Any]:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        body = None
        if method == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            raw = handler.rfile.read(length)
            if handler.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                raise Refused(415, "content type must be application/json")
            try:
                body = json.loads(raw)
            except ValueError:
                raise Refused(400, "body is not JSON") from None
        with self._lock:
            self.requests.append(
                Request(method, parts.path, query, handler.headers.get("Authorization"), body)
            )
            failure = next((f for f in self._failures if f[0].fullmatch(parts.path)), None)
            if failure is not None:
                self._failures.remove(failure)
            slow = next((entry for entry in self._slow if entry[0].fullmatch(parts.path)), None)
            if slow is not None:
                self._slow.remove(slow)
            delay = slow[1] if slow is not None else 0.0
        if delay:
            time.sleep(delay)
        if failure is not None:
            headers = {"Retry-After": failure[2]} if failure[2] is not None else {}
            raise Refused(failure[1], f"injected {failure[1]}", headers)
        if parts.path == "/api/v1/token":
            if method != "POST":
                raise Refused(405, "method not allowed")
            return 200, self._token(body)
        if method != "GET":
            raise Refused(405, "method not allowed")
        self._authorize(handler.headers.get("Authorization"))
        if parts.path == "/api/v1/clusters":
            _only(query, {"verbosity", "includeRequestedForDelete"})
            return 200, self.clusters
        if parts.path == "/api/v1/workloads":
            return 200, self._list(parts.path, "workloads", self.workloads, query, WORKLOAD_SORT, set())
        if parts.path == "/api/v1/workloads/pods":
            return 200, self._list(parts.path, "pods", self.pods, query, POD_SORT, {"verbosity", "completed"})
        if m := re.fullmatch(r"/api/v1/workloads/([^/]+)/metrics", parts.path):
            if not any(w["id"] == m[1] for w in self.workloads):
                raise Refused(404, f"workload {m[1]} not found")
            return 200, self._metrics(m[1], query, WORKLOAD_METRICS)
        if m := re.fullmatch(r"/api/v1/workloads/([^/]+)/pods/([^/]+)/metrics", parts.path):
            if not any(p["id"] == m[2] and p["workloadId"] == m[1] for p in self.pods):
                raise Refused(404, f"pod {m[2]} of workload {m[1]} not found")
            return 200, self._metrics(m[2], query, POD_METRICS)
        raise Refused(404, "not found")

    def _token(self, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise Refused(400, "body must be an object")
        grant = body.get("grantType")
        if grant == "app_token":
            given = (body.get("appID"), body.get("appSecret"))
        elif grant == "client_credentials":
            given = (body.get("clientID"), body.get("clientSecret"))
        else:
            raise Refused(400, f"unsupported grantType {grant!r}")
        if given != (self.app_id, self.app_secret):
            raise Refused(401, "invalid credentials")
        with self._lock:
            self._issued += 1
            expires = self.clock() + self.token_lifetime
            token = jwt({"sub": self.app_id, "exp": int(expires), "n": self._issued})
            self._tokens[token] = expires
        return {"accessToken": token, "idToken": "", "refreshToken": "", "externalToken": ""}

    def _authorize(self, header: str | None) -> None:
        if not header or not header.startswith("Bearer "):
            raise Refused(401, "missing bearer token")
        with self._lock:
            expires = self._tokens.get(header[7:])
        if expires is None or self.clock() >= expires:
            raise Refused(401, "token expired or invalid")

    def _list(
        self,
        path: str,
        key: str,
        rows: list[Obj],
        query: dict[str, list[str]],
        sortable: set[str],
        extra: set[str],
    ) -> Obj:
        _only(query, LIST_PARAMS | extra)
        offset = int(_one(query, "offset") or 0)
        limit = int(_one(query, "limit") or 50)
        if not 1 <= limit <= 500 or offset < 0:
            raise Refused(400, "limit must be 1..500 and offset >= 0")
        sort_by = _one(query, "sortBy")
        if sort_by is not None and sort_by not in sortable:
            raise Refused(400, f"sortBy: unsupported {sort_by!r}")
        order = _one(query, "sortOrder") or "asc"
        if order not in ("asc", "desc"):
            raise Refused(400, "sortOrder must be asc or desc")
        deleted = (_one(query, "deleted") or "false") == "true"
        filters = [_parse_filter(f) for f in query.get("filterBy", [])]
        if self.before_page is not None:
            self.before_page(path, offset)
        with self._lock:
            selected = [r for r in rows if bool(r.get("deletedAt")) == deleted and all(f(r) for f in filters)]
        selected.sort(
            key=lambda r: (str(r.get(sort_by or "createdAt") or ""), r["id"]), reverse=order == "desc"
        )
        page = selected[offset : offset + limit]
        answer: Obj = {key: page}
        if offset + len(page) < len(selected):
            answer["next"] = offset + len(page)
        return answer

    def _metrics(self, resource: str, query: dict[str, list[str]], allowed: set[str]) -> Obj:
        _only(query, {"metricType", "start", "end", "numberOfSamples"})
        types = query.get("metricType") or []
        if not types or any(t not in allowed for t in types):
            raise Refused(400, f"metricType: unsupported {types!r}")
        start, end = parse_iso(_one(query, "start") or ""), parse_iso(_one(query, "end") or "")
        samples = int(_one(query, "numberOfSamples") or 20)
        if start >= end or not 0 <= samples <= 1000:
            raise Refused(400, "start must be before end; numberOfSamples 0..1000")
        series: Series = self.series.get(resource, _no_samples)
        measurements = []
        for metric_type in types:
            values = []
            for i in range(samples + 1):
                at = start + i * (end - start) / samples if samples else start
                value = series(metric_type, at)
                if value is not None:
                    values.append(
                        {
                            "value": repr(value) if isinstance(value, float) else str(value),
                            "timestamp": iso(at),
                        }
                    )
            measurements.append({"type": metric_type, "labels": None, "values": values})
        return {"measurements": measurements}


def _no_samples(metric_type: str, at: float) -> float | None:
    return None


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise Refused(400, f"{key} given more than once")
    return values[0]


def _only(query: dict[str, list[str]], allowed: set[str]) -> None:
    if unknown := sorted(set(query) - allowed):
        raise Refused(400, f"unknown query parameters: {', '.join(unknown)}")


def _parse_filter(text: str) -> Callable[[Obj], bool]:
    m = _FILTER.fullmatch(text)
    if m is None:
        raise Refused(400, f"filterBy: cannot parse {text!r}")
    name, op, value = m.groups()

    def holds(row: Obj) -> bool:
        have = row.get(name)
        if have is None:
            return op in ("!=", "!@")
        if _ISO.fullmatch(value) and isinstance(have, str) and _ISO.fullmatch(have):
            left: Any = parse_iso(have)
            right: Any = parse_iso(value)
        else:
            left, right = str(have), value
        outcome: dict[str, bool] = {
            "==": left == right,
            "!=": left != right,
            "<=": left <= right,
            ">=": left >= right,
            "=@": str(right) in str(left),
            "!@": str(right) not in str(left),
            "=^": str(left).startswith(str(right)),
            "=$": str(left).endswith(str(right)),
        }
        return outcome[op]

    return holds


def workload(
    workload_id: str,
    name: str,
    *,
    created: float,
    project: str = "llm-team",
    department: str = "research",
    workload_type: str = "training",
    cluster: str = "c1",
    completed: float | None = None,
    gpus: float = 1,
) -> Obj:
    """A workload row as the API lists it (the fields the source reads, and a few it does not)."""
    return {
        "tenantId": 1001,
        "id": workload_id,
        "name": name,
        "type": workload_type,
        "clusterId": cluster,
        "projectName": project,
        "projectId": f"p-{project}",
        "departmentName": department,
        "departmentId": f"d-{department}",
        "namespace": f"runai-{project}",
        "createdAt": iso(created),
        "completedAt": iso(completed) if completed is not None else None,
        "deletedAt": None,
        "phase": "Completed" if completed is not None else "Running",
        "runningPods": 0 if completed is not None else 1,
        "allocatedResources": {"gpu": gpus, "cpu": 4, "cpuMemory": "16Gi"},
        "submittedBy": "researcher@example.com",
    }


def pod(
    pod_id: str,
    name: str,
    workload_row: Obj,
    *,
    created: float,
    started: float | None,
    node: str = "dgx-1",
    gpus: float | None = 1,
    completed: float | None = None,
    phase: str = "Running",
) -> Obj:
    return {
        "id": pod_id,
        "name": name,
        "workloadId": workload_row["id"],
        "workloadName": workload_row["name"],
        "clusterId": workload_row["clusterId"],
        "projectId": workload_row["projectId"],
        "projectName": workload_row["projectName"],
        "nodeName": node,
        "currentNodePool": "default",
        "createdAt": iso(created),
        "completedAt": iso(completed) if completed is not None else None,
        "deletedAt": None,
        "k8sPhase": phase,
        "containers": [{"name": "main", "image": "pytorch", "startedAt": iso(started)}]
        if started is not None
        else [],
        "allocatedResources": {"gpu": gpus} if gpus is not None else None,
        "requestedResources": {"gpu": {"request": gpus}} if gpus is not None else None,
        "tenantId": 1001,
    }
