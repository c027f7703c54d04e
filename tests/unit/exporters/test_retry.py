"""The retry policy: what each answer means, and how long to wait before the next attempt."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from otlp_meter.exporters.config import RetryConfig
from otlp_meter.exporters.retry import Backoff, Verdict, parse_retry_after, status_class, verdict_for_status

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


# -- verdicts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert verdict_for_status(status) is Verdict.DELIVERED


@pytest.mark.parametrize("status", [400, 413, 422])
def test_400_413_422_mean_the_content_is_refused(status: int) -> None:
    assert verdict_for_status(status) is Verdict.REFUSED


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_are_auth_failures(status: int) -> None:
    assert verdict_for_status(status) is Verdict.AUTH


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retried(status: int) -> None:
    assert verdict_for_status(status) is Verdict.RETRY


@pytest.mark.parametrize("status", [301, 404, 405, 409, 415, 418, 425, 451, 499])
def test_unknown_answers_are_retried_because_nothing_proves_the_events_bad(status: int) -> None:
    assert verdict_for_status(status) is Verdict.RETRY


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (None, "network"),
        (401, "auth"),
        (403, "auth"),
        (429, "429"),
        (400, "4xx"),
        (408, "4xx"),
        (413, "4xx"),
        (422, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
    ],
)
def test_status_class_labels_are_low_cardinality(status: int | None, label: str) -> None:
    assert status_class(status) == label


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), (" 7 ", 7.0), ("0", 0.0)])
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_is_the_time_until_then() -> None:
    assert parse_retry_after(formatdate(NOW + 90, usegmt=True), now=NOW) == pytest.approx(90.0)


def test_retry_after_in_the_past_means_now() -> None:
    assert parse_retry_after(formatdate(NOW - 3600, usegmt=True), now=NOW) == 0.0


@pytest.fixture
def local_time_is_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_is_not_utc")
def test_an_http_date_with_a_minus_0000_zone_is_utc_not_local_time() -> None:
    # parsedate gives a naive datetime for "-0000"; read as local time it would be 5 hours off.
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:30 -0000", now=NOW) == pytest.approx(90.0)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "1.5", "-1", "1e3", "²", "Mon, 99 Foo 2015"])
def test_absent_or_garbage_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None


# -- Backoff.delay -----------------------------------------------------------------------------


def backoff(random: float = 0.5, **settings: float | None) -> Backoff:
    """A backoff with a fixed "random" draw; 0.5 means no jitter."""
    config = RetryConfig.model_validate(
        {"initial_backoff": 1.0, "max_backoff": 60.0, "multiplier": 2.0, "jitter": 0.2, **settings}
    )
    return Backoff(config, random=lambda: random)


def test_the_wait_grows_exponentially_from_initial_backoff() -> None:
    b = backoff()
    assert [b.delay(attempt) for attempt in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def test_the_wait_is_capped_at_max_backoff() -> None:
    b = backoff()
    assert [b.delay(attempt) for attempt in (7, 8, 50)] == [60.0, 60.0, 60.0]


def test_an_outage_of_thousands_of_attempts_stays_at_the_cap_without_overflowing() -> None:
    # 2.0 ** 10_000 raises OverflowError in Python; a days-long outage reaches such attempt counts.
    b = backoff()
    assert b.delay(10_000) == 60.0
    assert b.delay(10**9) == 60.0
    assert backoff(initial_backoff=0.0).delay(10_000) == 0.0


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 3.2), (0.25, 3.6), (0.5, 4.0), (0.75, 4.4), (1.0, 4.8)])
def test_jitter_spreads_the_wait_by_at_most_the_jitter_fraction(draw: float, expected: float) -> None:
    assert backoff(random=draw).delay(3) == pytest.approx(expected)  # base 4s, jitter ±20%


def test_jitter_also_applies_at_the_cap() -> None:
    assert backoff(random=0.0).delay(100) == pytest.approx(48.0)
    assert backoff(random=1.0).delay(100) == pytest.approx(72.0)


def test_without_jitter_every_draw_gives_the_same_wait() -> None:
    assert {backoff(random=r, jitter=0.0).delay(2) for r in (0.0, 0.3, 1.0)} == {2.0}


def test_retry_after_longer_than_the_backoff_is_honoured() -> None:
    assert backoff().delay(1, retry_after=30.0) == 30.0


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 36.0), (0.25, 33.0), (0.5, 30.0), (1.0, 36.0)])
def test_retry_after_is_spread_but_never_shortened(draw: float, expected: float) -> None:
    """Every batch in flight, and every collector of a DaemonSet, got the same Retry-After: they
    come back over up to the jitter fraction after it, not all at the same instant."""
    assert backoff(random=draw).delay(1, retry_after=30.0) == pytest.approx(expected)


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    assert backoff().delay(4, retry_after=1.0) == 8.0
    assert backoff().delay(4, retry_after=0.0) == 8.0


def test_retry_after_is_capped_at_ten_times_max_backoff() -> None:
    assert backoff().delay(1, retry_after=86_400.0) == 600.0
    assert backoff(max_backoff=5.0).delay(1, retry_after=float("inf")) == 50.0


# -- expiry ------------------------------------------------------------------------------------


def test_without_max_elapsed_a_batch_never_expires() -> None:
    assert not backoff().expired(first_attempt_at=0.0, now=10 * 365 * 86_400.0)


def test_with_max_elapsed_a_batch_expires_once_that_long_has_passed() -> None:
    b = backoff(max_elapsed=3600.0)
    assert not b.expired(first_attempt_at=100.0, now=100.0)
    assert not b.expired(first_attempt_at=100.0, now=3699.9)
    assert b.expired(first_attempt_at=100.0, now=3700.0)
    assert b.expired(first_attempt_at=100.0, now=10**9)
