"""Bearer-token authentication shared by every ingest endpoint and the telemetry endpoint.

* :class:`TokenSet` holds the accepted tokens: inline ones and those read from files, re-read when a
  file changes (checked at most every ``reload_interval``, on requests; no background task).
* :class:`Authenticator` checks one ``Authorization`` value, raises
  :class:`~otlp_meter.errors.AuthenticationError` (→ UNAUTHENTICATED / 401 via the status table),
  counts the failure and logs it, at most once per interval per receiver.

Comparison is constant-time: the candidate and every token are hashed (so their lengths leak
nothing) and compared with :func:`hmac.compare_digest` against *all* tokens, never stopping at the
first match. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from otlp_meter.errors import AuthenticationError, ConfigError
from otlp_meter.receivers.config import AuthConfig
from otlp_meter.telemetry.logging import get_logger
from otlp_meter.telemetry.metrics import Metrics

log = get_logger("auth")

AUTH_LOG_INTERVAL = 10.0
"""At most one failure line per receiver per this many seconds; the rest are counted in it."""

Clock = Callable[[], float]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def read_token_file(path: Path) -> list[str]:
    """The tokens of ``path``: one per line, blank lines and ``#`` comments skipped. Raises OSError."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass(frozen=True, slots=True)
class _FileState:
    stamp: bytes | None  # digest of the content: any rewrite is a change, whatever the timestamps say
    digests: tuple[bytes, ...]


def _stamp(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


class TokenSet:
    """The accepted tokens. Construct at startup: an unreadable or empty token file is a ConfigError
    (fail closed). Later a file that cannot be read keeps its last good tokens (rotation writes are
    not atomic everywhere), with an error logged."""

    def __init__(
        self, config: AuthConfig, *, config_key: str = "receivers.auth", clock: Clock = time.monotonic
    ):
        self._inline = tuple(_digest(t.get_secret_value()) for t in config.tokens)
        self._paths = list(config.token_files)
        self._interval = config.reload_interval
        self._clock = clock
        self._files: dict[Path, _FileState] = {}
        problems = []
        for i, path in enumerate(self._paths):
            try:
                tokens = read_token_file(path)
            except OSError as exc:
                problems.append((f"{config_key}.token_files[{i}]", f"cannot read token file: {exc.strerror}"))
                continue
            if not tokens:
                problems.append((f"{config_key}.token_files[{i}]", "the token file holds no token"))
            self._files[path] = _FileState(_stamp(path), tuple(_digest(t) for t in tokens))
        if problems:
            raise ConfigError(problems)
        self._checked_at = clock()
        self._digests = self._all()

    @property
    def enabled(self) -> bool:
        return bool(self._inline or self._paths)

    def _all(self) -> tuple[bytes, ...]:
        return self._inline + tuple(d for state in self._files.values() for d in state.digests)

    def matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is one of the tokens; constant time in the candidate's content."""
        self._maybe_reload()
        digest = _digest(candidate)
        found = False
        for accepted in self._digests:  # no early exit: timing must not tell which token matched
            found |= hmac.compare_digest(digest, accepted)
        return found

    def _maybe_reload(self) -> None:
        if not self._paths:
            return
        now = self._clock()
        if now - self._checked_at < self._interval:
            return
        self._checked_at = now
        changed = False
        for path in self._paths:
            stamp = _stamp(path)
            previous = self._files[path]
            if stamp == previous.stamp:
                continue
            try:
                tokens = read_token_file(path)
            except OSError as exc:
                log.error("token_file_unreadable", path=str(path), error=exc.strerror, action="kept")
                continue
            if not tokens:
                log.error("token_file_empty", path=str(path), action="kept previous tokens")
                continue
            self._files[path] = _FileState(stamp, tuple(_digest(t) for t in tokens))
            changed = True
            log.info("token_file_reloaded", path=str(path), tokens=len(tokens))
        if changed:
            self._digests = self._all()


class RateLimitedLog:
    """A warning at most once per ``interval``; the lines held back are counted in the next one."""

    def __init__(self, event: str, interval: float = AUTH_LOG_INTERVAL, clock: Clock = time.monotonic):
        self._event = event
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warning(self, **fields: object) -> bool:
        """Log (and return True) unless a line went out less than ``interval`` ago."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return False
        self._last = now
        log.warning(self._event, suppressed=self._suppressed, **fields)
        self._suppressed = 0
        return True


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of ``Bearer <token>`` (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


class Authenticator:
    """Checks the ``Authorization`` value of requests to one receiver (its name labels the metric)."""

    def __init__(
        self, tokens: TokenSet | None, metrics: Metrics, receiver: str, clock: Clock = time.monotonic
    ):
        self._tokens = tokens if tokens is not None and tokens.enabled else None
        self._metrics = metrics
        self._receiver = receiver
        self._log = RateLimitedLog("auth_failed", clock=clock)

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    def check(self, authorization: str | None, peer: str | None = None) -> None:
        """Return if the request may pass; else count, log (rate-limited) and raise AuthenticationError."""
        if self._tokens is None:
            return
        token = bearer_token(authorization)
        if token is not None and self._tokens.matches(token):
            return
        reason = "missing" if token is None else "invalid"
        self._metrics.receiver_auth_failures.labels(self._receiver, reason).inc()
        self._log.warning(receiver=self._receiver, reason=reason, peer=peer)
        raise AuthenticationError(reason)
