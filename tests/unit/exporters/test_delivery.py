"""The exporter when things go right: batching, concurrency, acknowledgement, and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from otlp_meter.exporters.retry import Verdict
from otlp_meter.exporters.sink import SendResult
from tests.unit.exporters.conftest import HarnessFactory
from tests.unit.exporters.helpers import (
    WAIT_LIMIT,
    Harness,
    ObservedQueue,
    ScriptedSink,
    cloud_events,
    exporter_config,
)
from tests.unit.exporters.mock_openmeter import MockOpenMeter


async def yield_to_the_loop(times: int = 20) -> None:
    """Give every other task a chance to run (and to misbehave) before an assertion."""
    for _ in range(times):
        await asyncio.sleep(0)


def assert_drained(h: Harness, delivered: int) -> None:
    stats = h.queue.stats()
    assert (stats.depth, stats.leased) == (0, 0)
    assert h.sent_events == delivered
    assert h.metric("otlp_meter_exporter_in_flight_batches") == 0
    h.assert_accounted()


# -- batching ----------------------------------------------------------------------------------


async def test_events_are_delivered_once_in_batches_of_at_most_max_events_and_acked(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink()
    h = make_harness(sink, exporter_config(batch={"max_events": 10}))
    await h.append(cloud_events(35))
    await sink.wait_until(lambda: len(sink.delivered) == 35)
    await h.stop()

    assert sorted(sink.delivered_ids) == sorted(f"e-{n}" for n in range(35))
    assert sorted(len(batch) for batch in sink.requests) == [5, 10, 10, 10]
    assert_drained(h, delivered=35)
    assert h.metric("otlp_meter_exporter_sent_batches_total") == 4
    assert h.metric("otlp_meter_exporter_retries_total") == 0
    assert h.metric("otlp_meter_exporter_last_success_timestamp_seconds") > 0
    assert h.metric("otlp_meter_exporter_request_duration_seconds_count") == 4
    assert sink.closed


async def test_a_batch_holds_at_most_max_bytes_of_payload(make_harness: HarnessFactory) -> None:
    sink = ScriptedSink()
    h = make_harness(sink, exporter_config(batch={"max_events": 100, "max_bytes": 1000}))
    events = cloud_events(7, size=400)
    await h.append(events)
    await sink.wait_until(lambda: len(sink.delivered) == 7)
    await h.stop()

    sizes = {e.id: len(e.payload) for e in events}
    assert all(sum(sizes[e["id"]] for e in batch) <= 1000 for batch in sink.requests)
    assert sorted(len(batch) for batch in sink.requests) == [1, 2, 2, 2]
    assert_drained(h, delivered=7)


async def test_an_event_larger_than_max_bytes_still_goes_out_alone(make_harness: HarnessFactory) -> None:
    sink = ScriptedSink()
    h = make_harness(sink, exporter_config(batch={"max_events": 100, "max_bytes": 1000}))
    await h.append([*cloud_events(1, size=3000), *cloud_events(2, start=1, size=300)])
    await sink.wait_until(lambda: len(sink.delivered) == 3)
    await h.stop()
    assert [len(batch) for batch in sink.requests] == [1, 2]
    assert_drained(h, delivered=3)


async def test_a_partial_batch_goes_out_after_flush_interval(make_harness: HarnessFactory) -> None:
    sink = ScriptedSink()
    h = make_harness(sink, exporter_config(batch={"max_events": 100, "flush_interval": 0.05}))
    appended_at = asyncio.get_running_loop().time()
    await h.append(cloud_events(3))
    await sink.wait_until(lambda: len(sink.delivered) == 3)
    await h.stop()
    assert [len(batch) for batch in sink.requests] == [3]
    assert sink.sent_at[0] - appended_at >= 0.05  # it waited for more events first
    assert_drained(h, delivered=3)


async def test_a_full_batch_does_not_wait_for_flush_interval(make_harness: HarnessFactory) -> None:
    sink = ScriptedSink()
    h = make_harness(sink, exporter_config(batch={"max_events": 5, "flush_interval": 3600}))
    await h.append(cloud_events(5))
    await sink.wait_until(lambda: len(sink.delivered) == 5)  # an hour's flush would time this out
    await h.stop()
    assert [len(batch) for batch in sink.requests] == [5]


async def test_events_stored_before_start_and_appended_later_are_all_delivered(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink()
    h = make_harness(sink, start=False)
    await h.append(cloud_events(4))  # e.g. left over from the previous run
    h.exporter.start()
    await sink.wait_until(lambda: len(sink.delivered) == 4)
    await h.append(cloud_events(3, start=4))  # the queue was idle: the append must wake the exporter
    await sink.wait_until(lambda: len(sink.delivered) == 7)
    await h.stop()
    assert sorted(sink.delivered_ids) == sorted(f"e-{n}" for n in range(7))
    assert_drained(h, delivered=7)


# -- concurrency -------------------------------------------------------------------------------


async def test_up_to_max_in_flight_batches_are_sent_at_once_and_never_more(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink()
    gate = sink.hold()
    h = make_harness(sink, exporter_config(max_in_flight=3, batch={"max_events": 4}))
    await h.append(cloud_events(40))
    await sink.wait_until(lambda: sink.in_flight == 3)
    await yield_to_the_loop()  # room for a fourth request, if the exporter were to start one
    assert sink.in_flight == 3
    assert h.metric("otlp_meter_exporter_in_flight_batches") == 3
    assert h.queue.stats().leased == 12

    gate.set()
    await sink.wait_until(lambda: len(sink.delivered) == 40)
    await h.stop()
    assert sink.max_in_flight == 3
    assert len(sink.requests) == 10
    assert_drained(h, delivered=40)


# -- shutdown ----------------------------------------------------------------------------------


async def test_stop_while_openmeter_is_down_returns_at_once_and_keeps_every_event(
    make_harness: HarnessFactory, make_queue: Callable[..., ObservedQueue]
) -> None:
    openmeter = MockOpenMeter()
    openmeter.down = (503, None)
    config = exporter_config(retry={"initial_backoff": 3600, "max_backoff": 3600}, batch={"max_events": 10})
    h = make_harness(openmeter.sink(), config)
    events = cloud_events(25)
    await h.append(events)
    await openmeter.wait_until(lambda: len(openmeter.statuses) == 2)  # both slots now back off for an hour

    await h.stop(deadline=3600)  # returns at once, not in an hour: the backoff is interrupted

    stats = h.queue.stats()
    assert (stats.depth, stats.leased) == (25, 0)
    assert h.sent_events == 0
    assert h.metric("otlp_meter_exporter_failed_requests_total", status_class="5xx") == 2
    assert h.metric("otlp_meter_exporter_in_flight_batches") == 0
    h.assert_accounted()

    h.queue.close()
    reopened = make_queue()
    assert sorted(e.id for e in reopened.lease(100, 10**9)) == sorted(e.id for e in events)


async def test_stop_lets_the_request_in_flight_finish_and_starts_no_new_one(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink()
    gate = sink.hold()
    h = make_harness(sink, exporter_config(max_in_flight=1, batch={"max_events": 5}))
    await h.append(cloud_events(8))
    await sink.wait_until(lambda: sink.in_flight == 1)

    stopping = asyncio.create_task(h.stop(deadline=WAIT_LIMIT / 2))
    await yield_to_the_loop()
    assert not stopping.done()  # waiting for the request on the wire
    gate.set()
    await stopping

    assert sink.delivered_ids == [f"e-{n}" for n in range(5)]
    assert len(sink.requests) == 1  # the next batch waits for the next start
    stats = h.queue.stats()
    assert (stats.depth, stats.leased) == (3, 0)
    assert h.sent_events == 5
    h.assert_accounted()


async def test_stop_abandons_a_request_still_running_at_the_deadline_and_keeps_its_events(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink()
    sink.hold()  # never answers
    h = make_harness(sink, exporter_config(max_in_flight=2, batch={"max_events": 5}))
    await h.append(cloud_events(10))
    await sink.wait_until(lambda: sink.in_flight == 2)

    await h.stop(deadline=0.01)

    stats = h.queue.stats()
    assert (stats.depth, stats.leased) == (10, 0)
    assert sink.in_flight == 0  # the requests were cancelled
    assert h.metric("otlp_meter_exporter_in_flight_batches") == 0
    assert sink.closed
    h.assert_accounted()


async def test_stop_before_anything_was_queued_is_immediate(make_harness: HarnessFactory) -> None:
    sink = ScriptedSink()
    h = make_harness(sink)
    await h.stop(deadline=3600)
    assert sink.requests == []
    assert sink.closed


async def test_a_batch_refused_while_stopping_is_not_split_further_and_stays_queued(
    make_harness: HarnessFactory,
) -> None:
    sink = ScriptedSink(SendResult(Verdict.REFUSED, 400, None, "event[2]: bad"))
    gate = sink.hold()
    h = make_harness(sink, exporter_config(max_in_flight=1, batch={"max_events": 4}))
    await h.append(cloud_events(4))
    await sink.wait_until(lambda: sink.in_flight == 1)

    stopping = asyncio.create_task(h.stop())
    await yield_to_the_loop()
    gate.set()
    await stopping

    assert len(sink.requests) == 1  # no halves sent during shutdown: they go out after the next start
    stats = h.queue.stats()
    assert (stats.depth, stats.leased, stats.dead_letters) == (4, 0, 0)
    h.assert_accounted()


async def test_events_appended_without_a_wakeup_are_found_by_the_idle_recheck(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `otlp-meter dlq replay` does from another process: commit events nobody here is told about.
    monkeypatch.setattr("otlp_meter.exporters.delivery._IDLE_RECHECK_INTERVAL", 0.01)
    sink = ScriptedSink()
    h = make_harness(sink, exporter_config())
    monkeypatch.setattr(h.exporter, "notify", lambda: None)
    await yield_to_the_loop()  # the exporter is idle, waiting

    await h.append(cloud_events(3))

    await sink.wait_until(lambda: len(sink.delivered) == 3)
    await h.stop()
    assert_drained(h, delivered=3)
