"""The exporter when OpenMeter says no: retry, pause, split, dead-letter — and never lose an event.

Retry waits run in virtual time (:class:`VirtualTime`), so the realistic defaults (1 s doubling to
60 s, 300 s after a 401) are asserted exactly without waiting for them.
"""

from __future__ import annotations

import gc
import json
import logging

import pytest

from otlp_meter.exporters.delivery import MIN_BATCH_BYTES
from otlp_meter.exporters.retry import Verdict
from otlp_meter.exporters.sink import SendResult
from tests.unit.exporters.conftest import HarnessFactory
from tests.unit.exporters.helpers import (
    DELIVERED,
    Harness,
    ScriptedSink,
    VirtualTime,
    cloud_events,
    exporter_config,
    retry_result,
)
from tests.unit.exporters.mock_openmeter import MockOpenMeter

KiB = 1024
REAL_RETRY = {"initial_backoff": 1.0, "max_backoff": 60.0, "auth_backoff": 300.0}


def failed(h: Harness, status_class: str) -> float:
    return h.metric("otlp_meter_exporter_failed_requests_total", status_class=status_class)


def assert_drained(h: Harness, delivered: int, dead: int = 0) -> None:
    stats = h.queue.stats()
    assert (stats.depth, stats.leased, stats.dead_letters) == (0, 0, dead)
    assert (h.sent_events, h.dead_lettered) == (delivered, dead)
    assert h.metric("otlp_meter_exporter_in_flight_batches") == 0
    h.assert_accounted()


# -- transient failures ------------------------------------------------------------------------


async def test_503_then_200_delivers_once_after_the_servers_retry_after(make_harness: HarnessFactory) -> None:
    openmeter = MockOpenMeter()
    openmeter.fail_next.append((503, "7"))
    time = VirtualTime()
    h = make_harness(openmeter.sink(), exporter_config(retry=REAL_RETRY), time=time)
    await h.append(cloud_events(5))
    await openmeter.wait_until(lambda: len(openmeter.events) == 5)
    await h.stop()

    assert openmeter.statuses == [503, 204]
    assert openmeter.ids == [f"e-{n}" for n in range(5)]
    assert time.waits == [7.0]
    assert h.metric("otlp_meter_exporter_retries_total") == 1
    assert failed(h, "5xx") == 1
    assert h.metric("otlp_meter_exporter_sent_batches_total") == 1
    assert h.metric("otlp_meter_exporter_last_success_timestamp_seconds") > 0
    assert_drained(h, delivered=5)


async def test_transient_failures_back_off_exponentially_and_are_counted_by_class(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink(retry_result(503), retry_result(429), retry_result(None), retry_result(408))
    time = VirtualTime()
    h = make_harness(sink, exporter_config(retry=REAL_RETRY), time=time)
    await h.append(cloud_events(3))
    await sink.wait_until(lambda: len(sink.delivered) == 3)
    await h.stop()

    assert time.waits == [1.0, 2.0, 4.0, 8.0]
    assert len(sink.requests) == 5
    assert [failed(h, c) for c in ("5xx", "429", "network", "4xx")] == [1, 1, 1, 1]
    assert h.metric("otlp_meter_exporter_retries_total") == 4
    assert sink.delivered_ids == ["e-0", "e-1", "e-2"]
    assert_drained(h, delivered=3)


async def test_an_outage_of_thousands_of_attempts_keeps_retrying_at_the_cap(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink(*[retry_result(503)] * 1100)
    time = VirtualTime()
    h = make_harness(sink, exporter_config(retry=REAL_RETRY), time=time)
    await h.append(cloud_events(2))
    await sink.wait_until(lambda: len(sink.delivered) == 2)
    await h.stop()

    assert time.waits[-1] == 60.0
    assert len(time.waits) == 1100  # one unbroken delivery: never crashed and restarted
    assert "exporter_delivery_crashed" not in caplog.text
    assert_drained(h, delivered=2)


# -- authentication ----------------------------------------------------------------------------


async def test_401_keeps_the_events_and_pauses_for_auth_backoff_until_the_token_works(
    make_harness: HarnessFactory,
) -> None:
    openmeter = MockOpenMeter(token="rotated-token")  # OpenMeter no longer takes our token
    time = VirtualTime()
    h = make_harness(openmeter.sink(token="test-token"), exporter_config(retry=REAL_RETRY), time=time)
    await h.append(cloud_events(5))
    await openmeter.wait_until(lambda: openmeter.statuses.count(401) >= 3)
    stats = h.queue.stats()
    assert (stats.depth, stats.dead_letters) == (5, 0)

    openmeter.token = "test-token"  # the operator fixes the token
    await openmeter.wait_until(lambda: len(openmeter.events) == 5)
    await h.stop()

    assert set(time.waits) == {300.0}
    refused = openmeter.statuses.count(401)
    assert failed(h, "auth") == refused
    assert h.metric("otlp_meter_exporter_retries_total") == refused
    assert openmeter.duplicates() == []
    assert_drained(h, delivered=5)


async def test_max_elapsed_never_dead_letters_events_held_back_by_a_bad_token(
    make_harness: HarnessFactory,
) -> None:
    openmeter = MockOpenMeter(token="rotated-token")
    time = VirtualTime()
    config = exporter_config(retry={**REAL_RETRY, "max_elapsed": 60.0})
    h = make_harness(openmeter.sink(token="test-token"), config, time=time)
    await h.append(cloud_events(5))
    await openmeter.wait_until(lambda: openmeter.statuses.count(401) >= 4)  # 900 s > max_elapsed
    await h.stop()

    stats = h.queue.stats()
    assert (stats.depth, stats.leased, stats.dead_letters) == (5, 0, 0)
    h.assert_accounted()


async def test_time_spent_waiting_for_a_fixed_token_does_not_count_towards_max_elapsed(
    make_harness: HarnessFactory,
) -> None:
    """20 minutes of 401 (the token being rotated), then one 503: the events are retried, not
    dead-lettered as if they had been failing for 20 minutes."""
    unauthorized = SendResult(Verdict.AUTH, 401, None, "unauthorized")
    sink = ScriptedSink(unauthorized, unauthorized, unauthorized, unauthorized, retry_result(503))
    time = VirtualTime()
    h = make_harness(sink, exporter_config(retry={**REAL_RETRY, "max_elapsed": 600.0}), time=time)
    await h.append(cloud_events(5))
    await sink.wait_until(lambda: len(sink.delivered) == 5)
    await h.stop()

    assert len(sink.requests) == 6
    assert_drained(h, delivered=5)


# -- refused content ---------------------------------------------------------------------------


def single_event_refusals(openmeter: MockOpenMeter) -> int:
    return sum(
        1
        for request, status in zip(openmeter.requests, openmeter.statuses, strict=True)
        if status in (400, 413, 422) and len(json.loads(request.content)) == 1
    )


@pytest.mark.parametrize("status", [400, 422])
async def test_a_refused_batch_is_split_to_deliver_the_good_events_and_dead_letter_the_poison(
    make_harness: HarnessFactory, status: int
) -> None:
    openmeter = MockOpenMeter()
    openmeter.poison, openmeter.poison_status = {"e-5"}, status
    h = make_harness(openmeter.sink(), exporter_config(batch={"max_events": 8}), time=VirtualTime())
    events = cloud_events(8)
    await h.append(events)
    await openmeter.wait_until(lambda: len(openmeter.events) == 7 and single_event_refusals(openmeter) == 1)
    await h.stop()

    assert sorted(openmeter.ids) == sorted(f"e-{n}" for n in range(8) if n != 5)
    assert openmeter.duplicates() == []
    (dead,) = h.queue.list_dead()
    assert (dead.id, dead.payload) == ("e-5", events[5].payload)
    assert str(status) in dead.reason
    assert "event[0].data: rejected id 'e-5'" in dead.reason  # the server's problem details
    # 8 → 4 + [4] → 2 + [2] → 1 + 1: three splits; refused: the 8, the 4, the 2 and the poison itself.
    assert h.metric("otlp_meter_exporter_batch_splits_total") == 3
    assert failed(h, "4xx") == 4
    assert h.metric("otlp_meter_exporter_retries_total") == 0
    assert_drained(h, delivered=7, dead=1)


@pytest.mark.parametrize(
    "poison",
    [{"e-0", "e-15"}, {"e-3", "e-4", "e-9"}, {f"e-{n}" for n in range(16)}],
    ids=["ends", "three", "all"],
)
async def test_every_poison_event_is_isolated_and_every_good_one_delivered_exactly_once(
    make_harness: HarnessFactory, poison: set[str]
) -> None:
    openmeter = MockOpenMeter()
    openmeter.poison = poison
    h = make_harness(openmeter.sink(), exporter_config(batch={"max_events": 16}), time=VirtualTime())
    await h.append(cloud_events(16))
    good = sorted(f"e-{n}" for n in range(16) if f"e-{n}" not in poison)
    await openmeter.wait_until(
        lambda: len(openmeter.events) == len(good) and single_event_refusals(openmeter) == len(poison)
    )
    await h.stop()

    assert sorted(openmeter.ids) == good
    assert sorted(d.id for d in h.queue.list_dead()) == sorted(poison)
    assert_drained(h, delivered=len(good), dead=len(poison))


async def test_413_splits_the_batch_and_halves_the_byte_budget_of_later_batches(
    make_harness: HarnessFactory,
) -> None:
    openmeter = MockOpenMeter()
    openmeter.max_body = 100 * KiB
    config = exporter_config(batch={"max_events": 1000, "max_bytes": 256 * KiB}, max_in_flight=1)
    h = make_harness(openmeter.sink(), config, time=VirtualTime())
    await h.append(cloud_events(600, size=KiB))
    await openmeter.wait_until(lambda: len(openmeter.events) == 600)
    await h.stop()

    # The first lease (~256 KiB) and its halves (~128 KiB) are too large; every later lease fits.
    assert openmeter.statuses.count(413) == 3
    assert h.exporter.max_batch_bytes == 64 * KiB
    assert openmeter.duplicates() == []
    assert_drained(h, delivered=600)


async def test_the_byte_budget_never_shrinks_below_64_kib(make_harness: HarnessFactory) -> None:
    openmeter = MockOpenMeter()
    openmeter.max_body = 20 * KiB  # lower than the floor: splitting does the rest
    config = exporter_config(batch={"max_events": 1000, "max_bytes": 256 * KiB}, max_in_flight=1)
    h = make_harness(openmeter.sink(), config, time=VirtualTime())
    await h.append(cloud_events(300, size=KiB))
    await openmeter.wait_until(lambda: len(openmeter.events) == 300)
    await h.stop()

    assert h.exporter.max_batch_bytes == MIN_BATCH_BYTES == 64 * KiB
    assert openmeter.duplicates() == []
    assert_drained(h, delivered=300)


async def test_an_event_too_large_for_the_server_is_dead_lettered_with_the_413(
    make_harness: HarnessFactory,
) -> None:
    openmeter = MockOpenMeter()
    openmeter.max_body = 2 * KiB
    h = make_harness(openmeter.sink(), exporter_config(batch={"max_events": 4}), time=VirtualTime())
    await h.append([*cloud_events(3, size=200), *cloud_events(1, start=3, size=5 * KiB)])
    await openmeter.wait_until(lambda: len(openmeter.events) == 3 and single_event_refusals(openmeter) == 1)
    await h.stop()

    (dead,) = h.queue.list_dead()
    assert dead.id == "e-3"
    assert "413" in dead.reason
    assert "too large" in dead.reason
    assert_drained(h, delivered=3, dead=1)


# -- giving up, and surviving the unexpected ---------------------------------------------------


async def test_with_max_elapsed_events_are_dead_lettered_after_expiry_never_dropped(
    make_harness: HarnessFactory,
) -> None:
    openmeter = MockOpenMeter()
    openmeter.down = (503, None)
    time = VirtualTime()
    config = exporter_config(retry={**REAL_RETRY, "max_elapsed": 600.0}, batch={"max_events": 10})
    h = make_harness(openmeter.sink(), config, time=time)
    await h.append(cloud_events(15))
    await h.until(lambda: h.queue.stats().dead_letters == 15)
    await h.stop()

    dead = h.queue.list_dead(limit=100)
    assert sorted(d.id for d in dead) == sorted(f"e-{n}" for n in range(15))
    assert all("max_elapsed" in d.reason and "503" in d.reason for d in dead)
    assert sum(time.waits) >= 600.0
    assert failed(h, "5xx") == len(openmeter.statuses)
    assert openmeter.events == []
    assert_drained(h, delivered=0, dead=15)


async def test_when_the_dead_letter_store_is_full_the_refused_event_stays_queued_and_is_retried(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    openmeter = MockOpenMeter()
    openmeter.poison = {"e-0"}
    h = make_harness(
        openmeter.sink(), exporter_config(), time=VirtualTime(), queue={"dead_letter_max_bytes": 1}
    )
    await h.append(cloud_events(1))
    # Refused, not dead-lettered (no room), released — and leased again without any new append.
    await openmeter.wait_until(lambda: openmeter.statuses.count(400) >= 3)
    await h.stop()

    stats = h.queue.stats()
    assert (stats.depth, stats.leased, stats.dead_letters) == (1, 0, 0)
    assert "exporter_queue_unavailable" in caplog.text
    h.assert_accounted()


async def test_a_crash_while_delivering_releases_the_batch_which_is_then_delivered(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink(RuntimeError("a bug in a sink"))
    time = VirtualTime()
    h = make_harness(sink, exporter_config(retry=REAL_RETRY), time=time)
    caplog.set_level(logging.ERROR)
    await h.append(cloud_events(4))
    await sink.wait_until(lambda: len(sink.delivered) == 4)
    await h.stop()

    assert "exporter_delivery_crashed" in caplog.text
    assert time.waits == [60.0]  # a crash pauses like the longest backoff, not a hot loop
    assert sink.delivered_ids == ["e-0", "e-1", "e-2", "e-3"]
    assert_drained(h, delivered=4)


async def test_stop_during_the_pause_after_a_crash_keeps_the_events_and_leaves_no_failed_task(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = ScriptedSink(RuntimeError("a bug in a sink"))
    h = make_harness(sink, exporter_config(retry={"max_backoff": 3600.0}))  # real sleep: a long pause
    await h.append(cloud_events(2))
    await sink.wait_until(lambda: len(sink.requests) == 1 and sink.in_flight == 0)
    await h.stop()
    gc.collect()  # an unretrieved task exception is reported when the task is collected

    stats = h.queue.stats()
    assert (stats.depth, stats.leased) == (2, 0)
    assert "exception was never retrieved" not in caplog.text
    h.assert_accounted()


# -- the ledger --------------------------------------------------------------------------------


async def test_every_accepted_event_is_delivered_queued_dead_lettered_or_deduplicated(
    make_harness: HarnessFactory,
) -> None:
    def respond(events: list[dict[str, object]]) -> SendResult:
        if any(e["id"] == "e-7" for e in events):
            return SendResult(Verdict.REFUSED, 400, None, '{"detail":"event[0].data: bad"}')
        return DELIVERED

    sink = ScriptedSink(retry_result(503), retry_result(None), respond=respond)
    h = make_harness(sink, exporter_config(batch={"max_events": 10}), time=VirtualTime())
    await h.append(cloud_events(20))
    await h.append(cloud_events(5, start=3))  # a client retried: copies within the dedupe window
    await h.until(lambda: h.sent_events == 19 and h.queue.stats().dead_letters == 1)
    gate = sink.hold()  # the next batch will be on the wire when we stop
    await h.append(cloud_events(6, start=100))
    await sink.wait_until(lambda: sink.in_flight == 1)
    await h.stop(deadline=0)
    gate.set()

    assert (h.accepted, h.deduplicated) == (31, 5)
    assert (h.sent_events, h.queue.stats().depth, h.dead_lettered) == (19, 6, 1)
    assert sorted(sink.delivered_ids) == sorted(f"e-{n}" for n in range(20) if n != 7)
    h.assert_accounted()
