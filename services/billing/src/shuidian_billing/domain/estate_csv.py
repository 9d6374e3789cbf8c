"""The estate import: one room a line, its meters and, for a leased room, its tenant — parsed and
checked in full before anything is written (no I/O)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

CSV_COLUMNS = (
    "building",
    "floor",
    "room",
    "code",
    "area_m2",
    "household_size",
    "electricity_meter",
    "water_meter",
    "tenant_id",
    "tenant_name",
    "phone",
    "move_in",
)
"""Columns of the estate import, one room a line; the tenant columns are empty for a vacant room."""


@dataclass(frozen=True)
class RoomRow:
    line: int
    building: str
    floor: int
    room: str
    code: str
    area_m2: Decimal
    household_size: int
    electricity_meter: str
    water_meter: str
    tenant_id: str
    tenant_name: str
    phone: str
    move_in: date | None


def parse_estate_csv(body: str) -> tuple[list[RoomRow], list[dict[str, Any]]]:
    """Parse and validate every line; return the rows and every error with its line number."""
    errors: list[dict[str, Any]] = []
    reader = csv.DictReader(io.StringIO(body.lstrip("\ufeff")))
    header = tuple(reader.fieldnames or ())
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        return [], [{"line": 1, "column": ",".join(missing), "error": "missing column(s)"}]
    rows: list[RoomRow] = []
    seen_rooms: dict[tuple[str, str], int] = {}
    seen_codes: dict[str, int] = {}
    seen_meters: dict[str, int] = {}
    for raw in reader:
        line = reader.line_num
        problems: list[tuple[str, str]] = []
        cell = {k: (raw.get(k) or "").strip() for k in CSV_COLUMNS}

        def need(column: str, cell: dict[str, str] = cell, problems: list[tuple[str, str]] = problems) -> str:
            if not cell[column]:
                problems.append((column, "required"))
            return cell[column]

        building, room, code = need("building"), need("room"), need("code")
        floor = _int(cell["floor"], "floor", problems, minimum=-5)
        area = _decimal(cell["area_m2"], "area_m2", problems)
        household = _int(cell["household_size"] or "1", "household_size", problems, minimum=1)
        move_in: date | None = None
        if cell["tenant_id"]:
            need("tenant_name")
            try:
                move_in = date.fromisoformat(need("move_in"))
            except ValueError:
                problems.append(("move_in", "not a date (YYYY-MM-DD)"))
        for column in ("building", "room", "code", "electricity_meter", "water_meter", "tenant_id"):
            value = cell[column]
            if value and (len(value) > 64 or not value.replace("-", "").replace("_", "").replace(".", "").isalnum()):
                problems.append((column, "letters, digits, '-', '_' or '.' only (≤ 64)"))
        if len(cell["phone"]) > 30:  # as the tenant API allows; the phone is announced to alarm
            problems.append(("phone", "at most 30 characters"))
        if (building, room) in seen_rooms:
            problems.append(("room", f"room repeated (line {seen_rooms[(building, room)]})"))
        if code in seen_codes:
            problems.append(("code", f"room code repeated (line {seen_codes[code]})"))
        for column in ("electricity_meter", "water_meter"):
            meter = cell[column]
            if meter and meter in seen_meters:
                problems.append((column, f"meter {meter} already on line {seen_meters[meter]}"))
            if meter:
                seen_meters.setdefault(meter, line)
        seen_rooms.setdefault((building, room), line)
        seen_codes.setdefault(code, line)
        if problems:
            errors += [{"line": line, "column": c, "error": e} for c, e in problems]
            continue
        assert floor is not None
        assert area is not None
        assert household is not None
        rows.append(
            RoomRow(
                line,
                building,
                floor,
                room,
                code,
                area,
                household,
                cell["electricity_meter"],
                cell["water_meter"],
                cell["tenant_id"],
                cell["tenant_name"],
                cell["phone"],
                move_in,
            )
        )
    if not rows and not errors:
        errors.append({"line": 1, "column": "", "error": "no rooms in the file"})
    return rows, errors


def _int(value: str, column: str, problems: list[tuple[str, str]], *, minimum: int) -> int | None:
    try:
        number = int(value)
    except ValueError:
        problems.append((column, "not a whole number"))
        return None
    if number < minimum:
        problems.append((column, f"must be ≥ {minimum}"))
    return number


def _decimal(value: str, column: str, problems: list[tuple[str, str]]) -> Decimal | None:
    try:
        number = Decimal(value)
    except InvalidOperation:
        problems.append((column, "not a number"))
        return None
    if not number.is_finite() or number <= 0 or number != number.quantize(Decimal("0.01")):
        problems.append((column, "must be positive with at most two decimals"))
    return number
