"""The queue's configuration section."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from otlp_meter.queue import QueueConfig


def test_defaults_are_safe_for_production() -> None:
    config = QueueConfig()

    assert config.sync is True
    assert config.max_bytes == 1024**3
    assert config.dead_letter_max_bytes == 256 * 1024**2
    assert config.dedupe_window == 24 * 3600
    assert config.path == Path("otlp-meter-data") / "queue"


def test_sizes_and_durations_accept_units() -> None:
    config = QueueConfig.model_validate({"max_bytes": "64MiB", "dedupe_window": "1h", "map_size": "2GiB"})

    assert (config.max_bytes, config.dedupe_window, config.effective_map_size()) == (
        64 * 1024**2,
        3600.0,
        2 * 1024**3,
    )


def test_the_default_map_size_leaves_headroom_beyond_the_limits() -> None:
    config = QueueConfig.model_validate({"max_bytes": "1GiB", "dead_letter_max_bytes": "256MiB"})

    assert config.effective_map_size() >= 2 * (1024**3 + 256 * 1024**2)


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError, match="max_bytez"):
        QueueConfig.model_validate({"max_bytez": 1})
