"""The exporter's per-batch bookkeeping: which events of a batch are still unsettled."""

from __future__ import annotations

from otlp_meter.exporters.delivery import _unsettled
from otlp_meter.queue.types import LeasedBatch, LeasedEvent


def _batch(seqs: list[int]) -> LeasedBatch:
    return LeasedBatch.of([LeasedEvent(seq, b"{}", 0, 15) for seq in seqs])


def test_a_batch_settled_whole_or_in_parts_has_nothing_left() -> None:
    batch = _batch([5, 6, 7, 9])

    assert _unsettled(batch, [batch.seqs]) == []
    assert _unsettled(batch, [batch[:1].seqs, batch[1:3].seqs, batch[3:].seqs]) == []


def test_the_events_of_parts_never_settled_are_left_in_order() -> None:
    batch = _batch([5, 6, 7, 9, 12])

    assert _unsettled(batch, []) == [5, 6, 7, 9, 12]
    assert _unsettled(batch, [batch[1:2].seqs, batch[3:4].seqs]) == [5, 7, 12]
