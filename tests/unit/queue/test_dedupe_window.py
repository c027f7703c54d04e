"""The dedupe window's lookup (:meth:`Group.window`) finds exactly the wanted keys stored with an
expiry ahead, whatever the stored keys around them: it only skips lookups it can prove useless."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from otlp_meter.queue import LmdbQueue, codec
from otlp_meter.queue.group import Group
from otlp_meter.queue.ledger import Counters
from tests.unit.queue.conftest import QueueFactory

NOW = 1_700_000_000.0
NOW_NS = int(NOW * 1e9)

# Few distinct first bytes, so stored and wanted keys interleave, share ends, and fall outside
# each other's range; 16 bytes like the real keys.
keys = st.builds(
    lambda head, tail: bytes([head]) + tail.to_bytes(15, "big"), st.integers(0, 6), st.integers(0, 3)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stored=st.dictionaries(keys, st.sampled_from([-1, 0, 1]), max_size=12),
    remembered=st.lists(keys, max_size=4),
    wanted=st.lists(keys, max_size=12),
)
def test_the_window_finds_exactly_the_wanted_keys_stored_and_not_expired(
    make_queue: QueueFactory, stored: dict[bytes, int], remembered: list[bytes], wanted: list[bytes]
) -> None:
    """``stored``: key → expiry one second ago, now (expired too) or in a second; ``remembered``:
    keys remembered earlier in the same transaction, through the cursor the window uses too."""
    queue: LmdbQueue = make_queue()
    h = queue._require_handles()
    txn = h.env.begin(write=True)
    try:
        for key, when in stored.items():
            txn.put(key, codec.encode_expiry(NOW_NS + when * 10**9), db=h.dedupe)
        group = Group(txn, h, queue.config, Counters(), NOW)
        group.remember(sorted(set(remembered)))
        alive = {key for key, when in stored.items() if when > 0} | set(remembered)

        first = group.window(wanted)
        again = group.window(reversed(wanted))

        assert first == again == (sorted(set(wanted)), {key for key in wanted if key in alive})
    finally:
        txn.abort()
        queue.close()
