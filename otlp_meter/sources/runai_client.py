"""The Run:ai control-plane API as the runai source uses it: token, paged lists, metrics.

* Token: ``POST /api/v1/token`` with ``{"grantType": "app_token", "appID", "appSecret"}`` (or
  ``client_credentials`` with ``clientID``/``clientSecret``) → ``{"accessToken": ...}``. It is
  refreshed ``refresh_margin`` seconds before the JWT's ``exp`` (an opaque token: every hour) and at
  once when a request answers 401.
* Requests are retried on 408/429/5xx, timeouts and network errors (honouring ``Retry-After``), up
  to ``max_attempts``; then :class:`RunaiApiError`. A 404 raises :class:`RunaiNotFoundError`.
* Lists (``offset``/``limit``, sorted by ``createdAt`` ascending) are read *anchored*: each page
  overlaps the previous one, and its new rows are those after the last row already seen. A deletion
  during paging shifts rows left; the anchor notices, steps back and loses nothing. Rows are
  deduplicated by ``id``. So a listing has no gaps and no duplicates.

Counters (``SourceStats``): ``api_requests``, ``api_retries``, ``token_refreshes``, ``list_shifts``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson

from otlp_meter.exporters.retry import parse_retry_after
from otlp_meter.sources.base import WALL_CLOCK, BackoffConfig, Clock, SourceStats, Wait, wait_or_stop
from otlp_meter.telemetry.logging import get_logger

log = get_logger("sources.runai")

Row = dict[str, Any]
GrantType = Literal["app_token", "client_credentials"]
OPAQUE_TOKEN_LIFETIME = 3600.0
MAX_BACKSTEPS = 1000


class RunaiApiError(Exception):
    """The API did not answer usefully (after retries, or with an error that retrying cannot fix)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Run:ai API {status or 'unreachable'}: {message}")
        self.status = status


class RunaiNotFoundError(RunaiApiError):
    """404: the resource does not exist (any more)."""


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only to know when to refresh), else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(claims["exp"]) if isinstance(claims, dict) and "exp" in claims else None
    except (ValueError, TypeError, KeyError):
        return None


def retry_after(response: httpx.Response, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header, read the way the exporter reads it (one parser)."""
    return parse_retry_after(response.headers.get("retry-after"), now)


@dataclass
class RunaiClient:
    """Authenticated, retrying access to one Run:ai tenant."""

    http: httpx.AsyncClient
    base_url: str
    app_id: str
    app_secret: str
    stats: SourceStats
    grant_type: GrantType = "app_token"
    clock: Clock = WALL_CLOCK
    wait: Wait = wait_or_stop
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    max_attempts: int = 5
    refresh_margin: float = 60.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _token: str | None = None
    _refresh_at: float = 0.0

    async def _new_token(self) -> str:
        if self.grant_type == "app_token":
            body = {"grantType": "app_token", "appID": self.app_id, "appSecret": self.app_secret}
        else:
            body = {
                "grantType": "client_credentials",
                "clientID": self.app_id,
                "clientSecret": self.app_secret,
            }
        response = await self._send("POST", "/api/v1/token", json=body, authenticated=False)
        try:
            token = response.json()["accessToken"]
        except (ValueError, KeyError, TypeError):
            raise RunaiApiError(response.status_code, "token response without accessToken") from None
        if not isinstance(token, str) or not token:
            raise RunaiApiError(response.status_code, "empty accessToken")
        now = self.clock()
        expiry = jwt_expiry(token)
        lifetime = (expiry - now) if expiry is not None else OPAQUE_TOKEN_LIFETIME
        # At least 30 s: with clocks apart, an "expired" exp must not make every call fetch a token
        # (a token the server no longer takes answers 401, which refreshes it anyway).
        self._refresh_at = now + max(30.0, lifetime - self.refresh_margin)
        self.stats.add("token_refreshes")
        log.info("runai_token_obtained", refresh_in=round(self._refresh_at - now, 1))
        return token

    async def token(self) -> str:
        """A valid access token, refreshed ahead of its expiry."""
        if self._token is None or self.clock() >= self._refresh_at:
            self._token = None
            self._token = await self._new_token()
        return self._token

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        json: Any = None,
        authenticated: bool = True,
    ) -> httpx.Response:
        """One call with retries; 401 refreshes the token once per attempt series."""
        delays = self.backoff.delays()
        refreshed = False
        last_error = "no attempt"
        for attempt in range(1, self.max_attempts + 1):
            headers = {"Accept": "application/json"}
            if authenticated:
                headers["Authorization"] = f"Bearer {await self.token()}"
            self.stats.add("api_requests")
            wait_at_least = 0.0
            try:
                response = await self.http.request(
                    method, self.base_url + path, params=list(params), json=json, headers=headers
                )
            except httpx.HTTPError as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                last_error = response.text[:300]
                if status == 401 and authenticated and not refreshed:
                    # Expired or revoked: get a new token and try again at once.
                    refreshed, self._token = True, None
                    continue
                if status == 404:
                    raise RunaiNotFoundError(status, last_error)
                if status not in (408, 429) and status < 500:
                    raise RunaiApiError(status, last_error)
                wait_at_least = retry_after(response, self.clock()) or 0.0
                last_error = f"{status} {last_error}"
            if attempt == self.max_attempts:
                break
            delay = max(wait_at_least, next(delays))
            self.stats.add("api_retries")
            log.info(
                "runai_request_retry", path=path, attempt=attempt, error=last_error, retry_in=round(delay, 3)
            )
            if await self.wait(self.stop, delay):
                raise RunaiApiError(0, "stopping")
        raise RunaiApiError(0, f"{method} {path} failed after {self.max_attempts} attempts: {last_error}")

    async def get_json(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """GET ``path`` and decode its JSON body."""
        response = await self._send("GET", path, params=params)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RunaiApiError(response.status_code, f"{path}: body is not JSON") from None

    async def list_all(
        self, path: str, key: str, params: Sequence[tuple[str, str]], page_size: int
    ) -> list[Row]:
        """Every row of a paged list, without gaps or duplicates (see the module docstring)."""
        seen: dict[str, Row] = {}
        offset = 0
        backsteps = 0
        base = [*params, ("sortBy", "createdAt"), ("sortOrder", "asc"), ("limit", str(page_size))]
        while True:
            page = await self.get_json(path, [*base, ("offset", str(offset))])
            rows = page.get(key) if isinstance(page, dict) else None
            if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
                raise RunaiApiError(200, f"{path}: no list of rows with ids under {key!r}")
            anchor = max((i for i, row in enumerate(rows) if str(row["id"]) in seen), default=None)
            if anchor is None and seen and offset > 0:
                # Rows before our position went away and everything shifted left past this page:
                # step back until a row we already have anchors the page.
                backsteps += 1
                self.stats.add("list_shifts")
                if backsteps > MAX_BACKSTEPS:
                    raise RunaiApiError(200, f"{path}: list keeps shifting; giving up this pass")
                offset = max(0, offset - (page_size - 1))
                continue
            if anchor is not None and anchor != 0 and offset > 0:
                self.stats.add("list_shifts")
            for row in rows[(anchor + 1) if anchor is not None else 0 :]:
                seen.setdefault(str(row["id"]), row)
            if len(rows) < page_size:
                return list(seen.values())
            offset += len(rows) - 1  # the next page starts with this page's last row: the anchor

    async def metrics(self, path: str, types: Sequence[str], start: str, end: str, samples: int) -> list[Row]:
        """The ``measurements`` of ``types`` between ``start`` and ``end`` (one request)."""
        params = [("metricType", t) for t in types]
        params += [("start", start), ("end", end), ("numberOfSamples", str(samples))]
        body = await self.get_json(path, params)
        measurements = body.get("measurements") if isinstance(body, dict) else None
        if not isinstance(measurements, list):
            raise RunaiApiError(200, f"{path}: no measurements")
        return [m for m in measurements if isinstance(m, dict)]
