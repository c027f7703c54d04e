"""The queue's dedupe keys made in C (``_native.dedupe_keys``) are the Python ones, byte for byte."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otlp_meter import native
from otlp_meter.events import EncodedEvent
from otlp_meter.queue import codec

if native.module is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("the C extension otlp_meter._native is not built (CI has a compiler)")
    pytest.skip("the C extension is not built here (no C compiler?)", allow_module_level=True)
_native: Any = native.module


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["svc", "other", "", "é:x"]) | st.text(max_size=5),
            st.text(max_size=40),
            st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 2**48 - 1, 2**48, 1_717_200_000_000]),
        ),
        max_size=6,
    )
)
def test_dedupe_keys_are_the_queues(items: list[tuple[str, str, int]]) -> None:
    events = [EncodedEvent(source, id_, b"{}", time_ms) for source, id_, time_ms in items]
    expected = codec.python_event_dedupe_keys(events)
    assert _native.dedupe_keys(events, codec.DEDUPE_TIME_BYTES, codec.DEDUPE_HASH_BYTES) == expected
    assert codec.event_dedupe_keys(events) == expected
    assert expected == [codec.event_dedupe_key(*item) for item in items]


def test_odd_events_are_refused_before_any_python_code_runs() -> None:
    """Only str sources and ids and int times: converting anything else could run Python code
    (``__index__``) that changes the list being read."""
    events: list[Any] = []

    class Sneaky:
        def __index__(self) -> int:
            events.clear()
            return 1

    sneaky: Any = Sneaky()
    events.extend(
        [EncodedEvent("s", "i", b"{}", sneaky), *(EncodedEvent(f"s{i}", "i", b"{}", 1) for i in range(50))]
    )
    with pytest.raises(TypeError):
        _native.dedupe_keys(events, codec.DEDUPE_TIME_BYTES, codec.DEDUPE_HASH_BYTES)
    with pytest.raises(TypeError):
        _native.dedupe_keys([EncodedEvent(b"s", "i", b"{}", 1)], 6, 10)  # type: ignore[arg-type]
    assert len(_native.dedupe_keys([EncodedEvent("s", "i", b"{}", True)], 6, 10)) == 1  # bool is an int
