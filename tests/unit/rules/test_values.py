"""Coercions and times: numeric text is read exactly or refused, never rounded or cut; a number
used as an event time is read in the unit its size says."""

from __future__ import annotations

import pytest

from otlp_meter.rules.values import as_float, as_int, as_number, event_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" 42 ", 42), ("4.0e2", 400), ("9007199254740993.0", 9007199254740993), ("-7", -7), ("0e-50", 0)],
)
def test_numeric_text_becomes_an_int_exactly(text: str, expected: int) -> None:
    assert as_int(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("123456789012345678.5", "not a whole number"),  # a float would round it to a whole one
        ("1_000", ""),
        ("\uff11\uff12", ""),  # full-width digits
        ("1e30", "out of 64-bit range"),
        ("nan", "not finite"),
    ],
)
def test_other_text_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"cannot convert .* to int{f' .{why}' if why else ''}"):
        as_int(text)


def test_numbers_from_text_keep_every_digit_or_become_a_finite_float() -> None:
    assert as_number("9007199254740993.0") == 9007199254740993
    assert as_number("1.5") == 1.5
    with pytest.raises(ValueError, match="not finite"):
        as_number("1e400")
    with pytest.raises(ValueError, match="not finite"):
        as_float("-Infinity")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1717200000, "2024-06-01T00:00:00Z"),  # seconds
        (1717200000.5, "2024-06-01T00:00:00.500Z"),
        (1717200000123, "2024-06-01T00:00:00.123Z"),  # milliseconds
        (1717200000123456, "2024-06-01T00:00:00.123456Z"),  # microseconds
        (1717200000123456789, "2024-06-01T00:00:00.123456789Z"),  # nanoseconds
    ],
)
def test_a_number_as_event_time_is_read_in_the_unit_its_size_says(value: int | float, text: str) -> None:
    assert event_time(value) == text


@pytest.mark.parametrize("text", ["2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00-01:60"])
def test_an_offset_out_of_range_is_no_rfc_3339_time(text: str) -> None:
    with pytest.raises(ValueError, match="offset out of range"):
        event_time(text)
