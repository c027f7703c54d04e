"""Kubernetes resource quantities (``500m``, ``1Gi``, ``1e3``, ``100Ki``), parsed exactly.

The grammar is Kubernetes' own (``k8s.io/apimachinery/pkg/api/resource``)::

    quantity        ::= signedNumber suffix
    suffix          ::= binarySI | decimalExponent | decimalSI
    binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI       ::= n | u | m | "" | k | M | G | T | P | E
    decimalExponent ::= (e | E) signedNumber
    number          ::= digits | digits . digits | digits . | . digits

Values are :class:`fractions.Fraction`, never floats: ``100m`` CPU for 60 s is exactly 6 core-seconds,
and byte-seconds of a ``64Gi`` pod stay exact integers. ``1E`` is an exa suffix, ``1E3`` an exponent.
"""

from __future__ import annotations

import re
from fractions import Fraction

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|[eE](?P<exponent>[+-]?\d+)|(?P<decimal>[numkMGTPE]?))",
    re.ASCII,
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Kubernetes refuses quantities beyond this many digits of exponent; so do we, so a hostile
# "1e999999999" cannot make us build a gigantic integer.
_MAX_EXPONENT = 100


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity."""


def parse_quantity(value: str | int) -> Fraction:
    """The exact value of a quantity; raises :class:`QuantityError` for anything else."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if not isinstance(value, str):
        raise QuantityError(f"not a quantity: {value!r}")
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise QuantityError(f"not a quantity: {value!r}")
    number = Fraction(match["number"])
    if match["binary"]:
        return number * _BINARY[match["binary"]]
    exponent = int(match["exponent"]) if match["exponent"] is not None else _DECIMAL[match["decimal"]]
    if abs(exponent) > _MAX_EXPONENT:
        raise QuantityError(f"quantity out of range: {value!r}")
    return number * Fraction(10) ** exponent


def as_number(value: Fraction) -> int | float:
    """An int when the value is whole and fits OTLP's int64 (exact), else the nearest float."""
    if value.denominator == 1 and _INT64_MIN <= value.numerator <= _INT64_MAX:
        return int(value)
    return float(value)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
