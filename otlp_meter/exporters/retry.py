"""The one retry policy: which answers are retried, and how long to wait before the next attempt.

Shaped like stamina/OpenTelemetry's exporters: capped exponential backoff with jitter, the server's
``Retry-After`` honoured (within the cap x 10, so a bad header cannot stall delivery for days),
no time limit unless one is configured.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from otlp_meter.exporters.config import RetryConfig


class Verdict(Enum):
    """What to do with a batch after one attempt."""

    DELIVERED = "delivered"  # 2xx: ack
    RETRY = "retry"  # 408/429/5xx/network/timeout: keep and retry with backoff
    REFUSED = "refused"  # 400/413/422: the content is bad; split to isolate, dead-letter the bad ones
    AUTH = "auth"  # 401/403: keep everything, pause, retry slowly


RETRYABLE_STATUSES = frozenset({408, 425, 429})
REFUSED_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})


def verdict_for_status(status: int) -> Verdict:
    """Classify an HTTP status. Unknown 4xx are retried: never drop what we cannot prove is bad."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in REFUSED_STATUSES:
        return Verdict.REFUSED
    if status in AUTH_STATUSES:
        return Verdict.AUTH
    return Verdict.RETRY


def status_class(status: int | None) -> str:
    """Low-cardinality label for a failed attempt."""
    if status is None:
        return "network"
    if status in AUTH_STATUSES:
        return "auth"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone admits "²", which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; an HTTP-date is always UTC, never local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _growth(multiplier: float, exponent: int) -> float:
    """``multiplier ** exponent`` saturating at infinity: after an outage of days the attempt count is
    in the thousands, and a float power that large raises OverflowError instead of capping."""
    try:
        return float(multiplier ** max(0, exponent))
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class Backoff:
    """Computes waits between attempts from a :class:`RetryConfig`."""

    config: RetryConfig
    random: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before attempt number ``attempt + 1`` (``attempt`` ≥ 1 failed attempts so far)."""
        c = self.config
        grown = c.initial_backoff * _growth(c.multiplier, attempt - 1) if c.initial_backoff > 0 else 0.0
        base = min(c.max_backoff, grown)
        spread = 2.0 * self.random() - 1.0
        jittered = base * (1.0 + c.jitter * spread)
        if retry_after is not None:
            # Never sooner than the server asked, but not all at once either: every batch in flight
            # (and every collector of a DaemonSet) got the same Retry-After.
            asked = min(retry_after, c.max_backoff * 10) * (1.0 + c.jitter * abs(spread))
            return max(jittered, asked)
        return max(0.0, jittered)

    def expired(self, first_attempt_at: float, now: float) -> bool:
        """True when ``max_elapsed`` is set and has passed since the first attempt."""
        return self.config.max_elapsed is not None and now - first_attempt_at >= self.config.max_elapsed
