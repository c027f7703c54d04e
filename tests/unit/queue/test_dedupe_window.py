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
    stored=st.dictionaries(keys, st.booleans(), max_size=12),
    wanted=st.lists(keys, max_size=12),
)
def test_the_window_finds_exactly_the_wanted_keys_stored_and_not_expired(
    make_queue: QueueFactory, stored: dict[bytes, bool], wanted: list[bytes]
) -> None:
    queue: LmdbQueue = make_queue()
    h = queue._require_handles()
    txn = h.env.begin(write=True)
    try:
        for key, alive in stored.items():
            txn.put(key, codec.encode_expiry(NOW_NS + (10**9 if alive else -(10**9))), db=h.dedupe)
        group = Group(txn, h, queue.config, Counters(), NOW)

        distinct, seen = group.window(wanted)

        assert distinct == sorted(set(wanted))
        assert seen == {key for key in wanted if stored.get(key)}
    finally:
        txn.abort()
        queue.close()
