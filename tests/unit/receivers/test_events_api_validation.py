"""CloudEvents validation takes exactly what OpenMeter takes.

The strict fake OpenMeter (``tests/support/fake_openmeter.py``) encodes OpenMeter's rules; the
property below checks that our validator finds a problem in the same fields for any event-shaped
input, as v1 and as v3. An event we acknowledged and OpenMeter then refused would be dead-lettered
instead of refused to its sender.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otlp_meter.errors import InvalidEventError
from otlp_meter.events import payload_time_ms, rfc3339_millis
from otlp_meter.receivers.cloudevents import BATCH, parse_events, rfc3339_problem, validate_event
from tests.support import fake_openmeter

strings = st.one_of(
    st.sampled_from(
        ["", "1.0", "0.3", "a", "app", "https://x.example/a?b=%zz", "a:b", "a b", "%41", "x%4", "\x01"]
    ),
    st.text(max_size=6),
)
times = st.sampled_from(
    [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.123456789+02:00",
        "2026-01-01t00:00:00z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:60Z",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01 00:00:00Z",
        "yesterday",
    ]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
attribute_values = st.one_of(strings, times, json_values)
keys = st.sampled_from(
    [
        *("id", "source", "specversion", "type", "subject", "time", "data", "datacontenttype", "dataschema"),
        *("region", "Region", "x_y", "n1"),  # extensions: valid and invalid names
    ]
)


@st.composite
def events(draw: st.DrawFn) -> Any:
    """Mostly valid events with a few attributes removed, replaced or added."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e1",
        "source": "app",
        "type": "t",
        "subject": "s",
        "time": "2026-01-01T00:00:00Z",
        "data": {"v": 1},
    }
    for _ in range(draw(st.integers(0, 3))):
        key = draw(keys)
        if draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(attribute_values)
    return draw(st.sampled_from([event, event, event, [event], "event", None]))


def fields(problems: list[tuple[int | None, str, str]]) -> set[str]:
    return {f for _, f, _ in problems}


@settings(max_examples=400, deadline=None)
@given(events(), st.sampled_from(["v1", "v3"]))
def test_we_refuse_what_openmeter_refuses_in_the_same_fields(candidate: Any, api: str) -> None:
    ours = validate_event(candidate, 0, strict=api == "v3")
    theirs = fake_openmeter.validate_event(candidate, 0, api)  # type: ignore[arg-type]

    assert fields(ours) == {issue.field for issue in theirs}


@pytest.mark.parametrize(
    "value",
    ["2026-01-01T00:00:00Z", "2026-12-31T23:59:59.999999999-12:30", "2024-02-29T00:00:00+00:00"],
)
def test_rfc3339_times_go_accepts(value: str) -> None:
    assert rfc3339_problem(value) is None
    assert fake_openmeter.rfc3339_problem(value) is None


def test_problems_are_capped_so_a_huge_bad_batch_answers_briefly() -> None:
    body = orjson.dumps([{"id": ""} for _ in range(10_000)])

    with pytest.raises(InvalidEventError) as refused:
        parse_events(body, BATCH, strict=False, max_events=10_000)

    assert len(refused.value.problems) == 100
    assert str(refused.value) == "invalid event: event[0].id: must not be empty (and 99 more)"


def test_duplicate_keys_resolve_to_the_last_as_in_go_and_are_sent_once() -> None:
    body = b'[{"specversion":"1.0","id":"a","id":"b","source":"s","type":"t","subject":"x"}]'

    (encoded,) = parse_events(body, BATCH, strict=False, max_events=10)

    assert (encoded.source, encoded.id) == ("s", "b")
    assert orjson.loads(encoded.payload)["id"] == "b"
    assert encoded.payload.count(b'"id"') == 1


@pytest.mark.parametrize(
    ("time", "ms"),
    [
        ("2026-01-01T00:00:00Z", 1_767_225_600_000),
        ("2026-01-01T00:00:00.123456789Z", 1_767_225_600_123),
        ("2026-01-01T01:00:00.5+01:00", 1_767_225_600_500),
        ("2025-12-31T23:30:00.0019-00:30", 1_767_225_600_001),
        ("1969-12-31T23:59:59Z", 0),  # before 1970: no time for the dedupe key
    ],
)
def test_events_carry_their_time_in_milliseconds(time: str | None, ms: int) -> None:
    event = {"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "x", "time": time}

    (encoded,) = parse_events(orjson.dumps([event]), BATCH, strict=False, max_events=10)

    assert encoded.time_ms == ms
    assert payload_time_ms(encoded.payload) == ms


@pytest.mark.parametrize(
    "body",
    [
        b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x"}',
        b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","time":null}',
    ],
    ids=["absent", "null"],
)
def test_an_event_without_a_time_gets_the_time_it_was_received(body: bytes) -> None:
    """As OpenMeter stamps it on arrival: held here through an outage, it must still be billed in
    the period it happened in, not the one it is delivered in."""
    received = 1_767_225_600_123_000_000

    single = "application/cloudevents+json"
    (encoded,) = parse_events(body, single, strict=False, max_events=10, received_ns=received)

    assert orjson.loads(encoded.payload)["time"] == "2026-01-01T00:00:00.123Z"
    assert encoded.time_ms == payload_time_ms(encoded.payload) == 1_767_225_600_123


def test_texts_that_are_no_rfc_3339_time_read_as_no_time() -> None:
    assert (rfc3339_millis("not a time"), rfc3339_millis("2026-01-01T00:00:00"), rfc3339_millis(5)) == (
        0,
        0,
        0,
    )
