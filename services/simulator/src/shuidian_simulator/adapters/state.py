"""What a simulated meter keeps across a restart of the simulator, as a real meter keeps it across a power cut:
its registers (total, tariffs, settlement reading), prepaid money, relay or valve, keep-power, clock correction,
address and CT ratio after a replacement, tamper count and which one-shot faults it has already been through.

The state file is JSON, written atomically (a temporary file beside it, then a rename) so a crash mid-write
leaves the previous state. A missing file is a first start; an unreadable one is logged and the meters
start from the estate's seed values, as they would without the file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from shuidian_simulator.domain.meter import SimMeter
from shuidian_simulator.errors import StateError
from shuidian_simulator.estate import Fault, FaultKind

log = logging.getLogger(__name__)

VERSION = 1
SAVE_INTERVAL_S = 10.0


def snapshot(meters: Mapping[str, SimMeter]) -> dict[str, Any]:
    """Every meter's lasting state as plain JSON data (registers brought up to now first)."""
    entries: dict[str, Any] = {}
    for meter_id, meter in meters.items():
        meter.advance()
        entries[meter_id] = {
            "exact": str(meter.exact),
            "registered": str(meter.registered),
            "base": str(meter.base),
            "settlement": str(meter.settlement),
            "tariffs": [str(t) for t in meter.tariffs],
            "address": meter.address,
            "ct_ratio": str(meter.ct_ratio),
            "relay_open": meter.relay_open,
            "relay_commanded_trip": meter.relay_commanded_trip,
            "keep_power": meter.keep_power,
            "pre_trip_alarm": meter.pre_trip_alarm,
            "clock_correction": meter.clock_correction,
            "money": None if meter.money is None else str(meter.money),
            "tamper_count": meter.tamper_count,
            "applied": {kind.value: fault.model_dump(mode="json") for kind, fault in meter.applied.items()},
        }
    return {"version": VERSION, "saved_at": time.time(), "meters": entries}


def _decimal(entry: Mapping[str, Any], key: str) -> Decimal:
    raw = entry[key]
    if not isinstance(raw, str):
        raise StateError(f"{key} is not a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise StateError(f"{key} {raw!r} is not a decimal") from None
    if not value.is_finite():
        raise StateError(f"{key} {raw!r} is not finite")
    return value


def _flag(entry: Mapping[str, Any], key: str) -> bool:
    value = entry[key]
    if not isinstance(value, bool):
        raise StateError(f"{key} is not true or false")
    return value


def _restore_one(meter: SimMeter, entry: Mapping[str, Any]) -> None:
    """Parse everything first, then apply: a bad entry leaves the meter as seeded."""
    tariffs = entry["tariffs"]
    if not isinstance(tariffs, list) or len(tariffs) != len(meter.tariffs):
        raise StateError("tariffs is not a list of four registers")
    address, correction, tampers = entry["address"], entry["clock_correction"], entry["tamper_count"]
    if not isinstance(address, str) or not address:
        raise StateError("address is not a string")
    if not isinstance(correction, int | float) or isinstance(correction, bool):
        raise StateError("clock_correction is not a number")
    if not isinstance(tampers, int) or isinstance(tampers, bool):
        raise StateError("tamper_count is not a whole number")
    applied = {FaultKind(kind): Fault.model_validate(fault) for kind, fault in dict(entry["applied"]).items()}
    values = {
        "exact": _decimal(entry, "exact"),
        "registered": _decimal(entry, "registered"),
        "base": _decimal(entry, "base"),
        "settlement": _decimal(entry, "settlement"),
        "ct_ratio": _decimal(entry, "ct_ratio"),
        "money": None if entry["money"] is None else _decimal(entry, "money"),
        "tariffs": [_decimal({"t": t}, "t") for t in tariffs],
        "relay_open": _flag(entry, "relay_open"),
        "relay_commanded_trip": _flag(entry, "relay_commanded_trip"),
        "keep_power": _flag(entry, "keep_power"),
        "pre_trip_alarm": _flag(entry, "pre_trip_alarm"),
    }
    for name, value in values.items():
        setattr(meter, name, value)
    meter.address = address.upper()
    meter.clock_correction = float(correction)
    meter.tamper_count = tampers
    # A one-shot fault the meter went through stays done, if the estate still schedules the same one.
    meter.applied = {kind: fault for kind, fault in applied.items() if meter.faults.get(kind) == fault}


def restore(meters: Mapping[str, SimMeter], data: Any) -> int:
    """Put the saved state back into the meters it names; return how many. Meters the file does not name keep
    their seed values; entries for meters no longer in the estate are ignored. Raises StateError, having
    changed nothing, if any entry is unusable."""
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("meters"), dict):
        raise StateError(f"not a version {VERSION} simulator state")
    entries = {meter_id: entry for meter_id, entry in data["meters"].items() if meter_id in meters}
    # Restore into copies first, so a bad entry half-way leaves every meter as seeded.
    staged: dict[str, SimMeter] = {}
    for meter_id, entry in entries.items():
        meter = meters[meter_id]
        probe = SimMeter(spec=meter.spec, model=meter.model, clock=meter.clock, faults=dict(meter.faults))
        try:
            _restore_one(probe, entry)
        except (KeyError, TypeError, ValueError, StateError) as err:
            raise StateError(f"meter {meter_id}: {err}") from err
        staged[meter_id] = probe
    for meter_id, entry in entries.items():
        _restore_one(meters[meter_id], entry)
    return len(staged)


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: Path, meters: Mapping[str, SimMeter]) -> None:
    """Restore the meters from `path`; a missing file is a first start, an unusable one is logged and ignored."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        log.info("no saved meter state at %s: meters start from the estate's seed values", path)
        return
    except OSError as err:
        log.error("meter state %s cannot be read (%s): meters start from the estate's seed values", path, err)
        return
    try:
        restored = restore(meters, json.loads(text))
    except (json.JSONDecodeError, StateError) as err:
        log.error("meter state %s is unusable (%s): meters start from the estate's seed values", path, err)
        return
    log.info("meter state of %d meter(s) restored from %s", restored, path)


def save(path: Path, meters: Mapping[str, SimMeter]) -> None:
    write_atomically(path, snapshot(meters))


@contextlib.asynccontextmanager
async def kept(path: Path, meters: Mapping[str, SimMeter], interval: float = SAVE_INTERVAL_S) -> AsyncIterator[None]:
    """Restore the meters from `path`, save them every `interval` seconds while the block runs, and at its end."""
    load(path, meters)

    async def periodically() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                save(path, meters)
            except OSError as err:  # a full disk must not stop the meters; the next save tries again
                log.error("meter state not saved to %s: %s", path, err)

    task = asyncio.create_task(periodically(), name="simulator-state")
    try:
        yield
    finally:
        # Saved before anything is awaited: a shutdown by signal cancels whatever awaits next.
        task.cancel()
        save(path, meters)
        log.info("meter state saved to %s", path)
        await asyncio.gather(task, return_exceptions=True)
