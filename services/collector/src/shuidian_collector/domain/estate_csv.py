"""Bulk commissioning as CSV: one line per meter with its bus and gateway. Every line is validated and
every bad line reported with its line number before anything is written (all or nothing)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import astuple, fields

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shuidian_collector.domain.devices import BusProtocol, EstateRow, meter_problems
from shuidian_shared.messages import Identifier, Utility

COLUMNS = tuple(f.name for f in fields(EstateRow))
MAX_LINES = 100_000


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    gateway_id: Identifier
    bus_id: Identifier
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    protocol: BusProtocol
    baud: int = Field(default=2400, ge=300, le=115200)
    timeout_ms: int = Field(default=1000, ge=50, le=30000)
    retries: int = Field(default=1, ge=0, le=5)
    meter_id: Identifier
    address: str = Field(min_length=1, max_length=14)
    model: str = Field(min_length=1, max_length=64)
    utility: Utility
    poll_interval_s: int = Field(default=60, ge=1, le=86400)


def parse(text: str) -> tuple[list[EstateRow], list[dict[str, object]]]:
    """Rows, and the problems found (each with its line number; line 1 is the header)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _parse(reader)
    except csv.Error as err:
        # The reader has consumed the lines before the one it choked on.
        return [], [{"line": reader.line_num + 1, "errors": [f"not valid CSV: {err}"]}]


def _parse(reader: csv.DictReader[str]) -> tuple[list[EstateRow], list[dict[str, object]]]:
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header and c not in ("baud", "timeout_ms", "retries", "poll_interval_s")]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        detail = "; ".join(
            part
            for part in (
                f"missing column(s): {', '.join(missing)}" if missing else "",
                f"unknown column(s): {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        return [], [{"line": 1, "errors": [detail]}]
    rows: list[EstateRow] = []
    problems: list[dict[str, object]] = []
    buses: dict[str, tuple[tuple[object, ...], int]] = {}
    meter_lines: dict[str, int] = {}
    address_lines: dict[tuple[str, str], int] = {}
    for record in reader:
        line = reader.line_num
        if line > MAX_LINES:
            problems.append({"line": line, "errors": [f"more than {MAX_LINES} lines: split the file"]})
            break
        errors: list[str] = []
        values = {k: v for k, v in record.items() if k is not None and v not in (None, "")}
        if None in record:
            errors.append("more fields than columns")
        try:
            parsed = _Line.model_validate(values)
        except ValidationError as err:
            errors += [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
            problems.append({"line": line, "errors": errors})
            continue
        row = EstateRow(**parsed.model_dump())
        errors += meter_problems(row.protocol, row.address, row.model)
        bus = astuple(row)[:8]
        seen = buses.setdefault(row.bus_id, (bus, line))
        if seen[0] != bus:
            errors.append(f"bus {row.bus_id} is described differently on line {seen[1]}")
        if meter_lines.setdefault(row.meter_id, line) != line:
            errors.append(f"meter {row.meter_id} is already on line {meter_lines[row.meter_id]}")
        if address_lines.setdefault((row.bus_id, row.address), line) != line:
            errors.append(
                f"address {row.address} on bus {row.bus_id} is already on line {address_lines[row.bus_id, row.address]}"
            )
        if errors:
            problems.append({"line": line, "errors": errors})
        else:
            rows.append(row)
    if not rows and not problems:
        problems.append({"line": 1, "errors": ["no meters in the file"]})
    return rows, problems


def render(rows: Iterable[EstateRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(str(v.value) if isinstance(v, (BusProtocol, Utility)) else v for v in astuple(row))
    return out.getvalue()
