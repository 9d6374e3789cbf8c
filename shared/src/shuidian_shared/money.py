"""Money and metered quantities on Decimal, serialised as decimal strings, never floats.

Rounding rule (the one rule, used everywhere): amounts are computed at full precision and
posted in whole fen (0.01 CNY) by rounding toward zero; what is cut off is carried to the
next posting of the same meter, so nothing is lost or invented. `split_cents` implements it.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

CENT = Decimal("0.01")


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        raise ValueError("money and quantities must be decimal strings, not floats")
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        result = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as err:
        raise ValueError(f"not a decimal number: {value!r}") from err
    if not result.is_finite():
        raise ValueError("must be finite")
    return result


def _to_money(value: Any) -> Decimal:
    result = _to_decimal(value)
    if result != result.quantize(CENT, rounding=ROUND_DOWN):
        raise ValueError("money has at most two decimals (whole fen)")
    return result.quantize(CENT)


Money = Annotated[Decimal, BeforeValidator(_to_money), PlainSerializer(lambda d: str(d), return_type=str)]
"""An amount in CNY with at most two decimals, e.g. ``"12.30"``."""

Quantity = Annotated[Decimal, BeforeValidator(_to_decimal), PlainSerializer(lambda d: str(d), return_type=str)]
"""A metered quantity (kWh, m³ …) or an unrounded amount, at full precision."""


def to_money(value: Decimal | int | str) -> Decimal:
    """Validate and normalise an amount to whole fen; raise ValueError otherwise."""
    return _to_money(value)


def split_cents(exact: Decimal) -> tuple[Decimal, Decimal]:
    """Split an exact amount into (postable whole fen rounded toward zero, remainder to carry)."""
    posted = exact.quantize(CENT, rounding=ROUND_DOWN)
    return posted, exact - posted
