"""The simulator's domain takes its time from the clock it is given: a meter on a fixed clock reads the same
registers, shows the same local time and moves its relay only when that clock's timer says so; and no module of
the domain reads the system clock or an event loop itself (checked on the source, so a new call fails here)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from pathlib import Path

import pytest

from shuidian_simulator.domain.consumption import ConsumptionModel
from shuidian_simulator.domain.meter import SHANGHAI, SimClock, SimMeter
from shuidian_simulator.estate import Fault, FaultKind, MeterSpec, Profile

NOON = datetime(2026, 11, 2, 12, tzinfo=SHANGHAI)  # a household uses something at noon, whatever the wall clock


class HandClock:
    """A real clock that stands still until the test moves it, with the actuator timer it owns."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def real(self) -> float:
        return self.at

    def later(self, delay: float, action: Callable[[], None]) -> None:
        self.pending.append((self.at + delay, action))

    def move(self, seconds: float) -> None:
        """Move real time on, running each timer that falls due on the way, in order."""
        self.at += seconds
        due = sorted((entry for entry in self.pending if entry[0] <= self.at), key=lambda entry: entry[0])
        self.pending = [entry for entry in self.pending if entry[0] > self.at]
        for _, action in due:
            action()


def meter_on(hand: HandClock, **spec: object) -> SimMeter:
    clock = SimClock(Decimal(60), NOON, real=hand.real, later=hand.later)
    meter_spec = MeterSpec.model_validate({"id": "E-1", "address": "000000000001", **spec})
    return SimMeter.create(meter_spec, ConsumptionModel(7, "E-1", "electricity", Profile.RESIDENTIAL), clock, seed=7)


def test_two_meters_on_the_same_fixed_clock_read_the_same_registers() -> None:
    readings = []
    for _ in range(2):
        hand = HandClock(1_790_000_000.0)
        meter = meter_on(hand)
        hand.move(600)  # ten real minutes, ten simulated hours at ×60
        meter.advance()
        readings.append((meter.register, meter.tariff_registers, meter.exact))
    assert readings[0] == readings[1]
    assert readings[0][2] > 0, "a household at noon uses something in ten simulated hours"


def beijing(hour: int, minute: int, second: int) -> datetime:
    """A meter's clock: naive Beijing time on 2 November 2026."""
    return datetime(2026, 11, 2, hour, minute, second, tzinfo=SHANGHAI).replace(tzinfo=None)


def test_the_meter_clock_is_the_given_clock_plus_its_drift_in_beijing_time() -> None:
    hand = HandClock(datetime(2026, 11, 2, 4, 0, 0, tzinfo=UTC).timestamp())
    meter = meter_on(hand, faults=[{"kind": "clock_drift", "seconds": 90}])
    assert meter.local_clock() == beijing(12, 1, 30)
    assert meter.set_clock(beijing(12, 0, 0))  # a broadcast within five minutes is taken
    assert meter.local_clock() == beijing(12, 0, 0)
    hand.move(3600)
    assert meter.local_clock() == beijing(13, 0, 0)


def test_a_commanded_trip_moves_the_relay_when_the_clock_s_timer_runs_it() -> None:
    hand = HandClock(1_790_000_000.0)
    meter = meter_on(hand, actuator_ms=2000)
    meter.command_relay(True)
    assert meter.relay_commanded_trip
    positions = [meter.relay_open]  # still moving
    hand.move(1.5)
    positions.append(meter.relay_open)  # still moving
    hand.move(1)
    positions.append(meter.relay_open)  # moved, on the timer the clock ran
    assert positions == [False, False, True]
    assert meter.relay_history == [(hand.at, True)]


def test_a_stuck_relay_asks_the_timer_for_nothing() -> None:
    hand = HandClock(1_790_000_000.0)
    meter = meter_on(hand)
    meter.set_fault(Fault(kind=FaultKind.STUCK_RELAY))
    meter.command_relay(True)
    assert hand.pending == []


def test_sim_time_runs_from_the_given_start_at_the_estate_s_acceleration() -> None:
    hand = HandClock(1_790_000_000.0)
    clock = SimClock(Decimal(60), NOON, real=hand.real, later=hand.later)
    hand.move(60)
    assert clock.sim_elapsed() == 3600
    assert datetime.fromtimestamp(clock.sim_now(), SHANGHAI) == NOON + timedelta(hours=1)


# What the domain must never call: the system clock and the event loop are the adapters' (and app.py's) to pass in.
FORBIDDEN_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "localtime"),
    ("time", "gmtime"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}
FORBIDDEN_IMPORTS = {"time", "asyncio"}


def clock_reads(source: str) -> list[str]:
    """Each read of the system clock or an event loop in `source`, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in FORBIDDEN_CALLS:
                found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            if (node.value.attr, node.attr) in FORBIDDEN_CALLS:  # datetime.datetime.now
                found.append(f"{node.lineno}: {node.value.attr}.{node.attr}")
        elif isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_IMPORTS
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"{node.lineno}: from {node.module} import …")
            elif node.module == "datetime" and any(a.name == "date" and a.asname for a in node.names):
                found.append(f"{node.lineno}: date imported under another name")
    return found


DOMAIN = Path(str(files("shuidian_simulator") / "domain"))


@pytest.mark.parametrize("module", sorted(DOMAIN.glob("*.py")), ids=lambda path: path.name)
def test_no_domain_module_reads_the_system_clock_or_an_event_loop(module: Path) -> None:
    assert clock_reads(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time\nx = time.time()",
        "from datetime import datetime, UTC\nx = datetime.now(UTC)",
        "import datetime\nx = datetime.datetime.now()",
        "from datetime import date\nx = date.today()",
        "import asyncio\nasyncio.get_running_loop()",
        "from time import monotonic",
    ],
)
def test_the_rule_catches_each_way_of_reading_the_clock(source: str) -> None:
    assert clock_reads(source) != []
