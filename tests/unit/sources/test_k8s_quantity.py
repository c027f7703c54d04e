"""Kubernetes quantities parse exactly, as Kubernetes reads them."""

from __future__ import annotations

from fractions import Fraction

import pytest

from otlp_meter.sources.k8s_quantity import QuantityError, as_number, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("100m", Fraction(1, 10)),
        ("1", Fraction(1)),
        ("2.5", Fraction(5, 2)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
        ("+1k", Fraction(1000)),
        ("1Ki", Fraction(1024)),
        ("100Ki", Fraction(102_400)),
        ("1Mi", Fraction(2**20)),
        ("1Gi", Fraction(2**30)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("129e6", Fraction(129_000_000)),
        ("12e-3", Fraction(3, 250)),
        ("1E", Fraction(10**18)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("3u", Fraction(3, 10**6)),
        ("1n", Fraction(1, 10**9)),
        ("-2M", Fraction(-2_000_000)),
        (" 4 ", Fraction(4)),
        (7, Fraction(7)),
    ],
)
def test_quantities_are_exact(text: str | int, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", "m", "1KiB", "1 Gi", "1.2.3", "abc", "1e", "0x10", "1kk", "1e999999", "--1"]
)
def test_non_quantities_are_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_only_text_and_ints_are_quantities(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(value)  # type: ignore[arg-type]


def test_as_number_keeps_whole_values_exact_and_fits_int64() -> None:
    assert as_number(Fraction(6)) == 6
    assert isinstance(as_number(Fraction(6)), int)
    assert as_number(Fraction(1, 4)) == 0.25
    assert isinstance(as_number(Fraction(2**64)), float)
    assert as_number(parse_quantity("100m") * 60) == 6  # 0.1 * 60 in floats is 6.000000000000001
