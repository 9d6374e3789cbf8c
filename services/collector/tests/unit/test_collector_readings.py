"""Reading and command rules of the domain, without a bus: canonical values, the clock-offset cadence, and what a
DL/T 645 status word read back confirms."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shuidian_collector.domain.commands import dlt645_confirms
from shuidian_collector.domain.readings import (
    ClockPolicy,
    ClockWatch,
    leaking,
    relay_from_code,
    tariff_registers,
    valve_from_code,
)
from shuidian_protocols.dlt645 import StatusWord3
from shuidian_shared.messages import CLOCK_OFFSET, CommandKind, ReadingFlag, RelayState, ValveState

D = Decimal


@pytest.mark.parametrize(
    ("tariffs", "expected"),
    [
        ([], {}),
        ([D(1), D(2)], {"energy_tariff_1": D(1), "energy_tariff_2": D(2)}),
        (
            [D(1), D(2), D(3), D(4)],
            {"energy_tariff_1": D(1), "energy_tariff_2": D(2), "energy_tariff_3": D(3), "energy_tariff_4": D(4)},
        ),
        ([D(1), D(2), D(3), D(4), D(5)], {}),  # a fifth tariff has no canonical name: none are published
    ],
)
def test_tariff_registers(tariffs: list[Decimal], expected: dict[str, Decimal]) -> None:
    assert tariff_registers(tariffs) == expected


@pytest.mark.parametrize(
    ("code", "relay", "valve"),
    [
        (D(0), RelayState.CLOSED, ValveState.OPEN),
        (D(1), RelayState.OPEN, ValveState.CLOSED),
        (D(2), RelayState.UNKNOWN, ValveState.ABNORMAL),
        (D("0.5"), RelayState.UNKNOWN, ValveState.ABNORMAL),
    ],
)
def test_state_codes(code: Decimal, relay: RelayState, valve: ValveState) -> None:
    assert relay_from_code(code) is relay
    assert valve_from_code(code) is valve


@pytest.mark.parametrize(
    ("alarm", "residual", "expected"),
    [
        (None, None, False),
        (D(0), D(29), False),
        (D(0), D(30), True),  # the threshold itself trips, as a 30 mA RCD does
        (D(1), None, True),
        (D(1), D(0), True),
        (None, D(31), True),
    ],
)
def test_leaking(alarm: Decimal | None, residual: Decimal | None, expected: bool) -> None:
    assert leaking(alarm, residual, D(30)) is expected


def test_clock_offset_reported_once_per_interval_on_the_injected_clock() -> None:
    now = [1000.0]
    watch = ClockWatch(ClockPolicy(check_interval_s=3600, drift_tolerance_s=60), monotonic=lambda: now[0])
    assert watch.due("m")
    registers: dict[str, Decimal] = {}
    flags: set[ReadingFlag] = set()
    watch.report("m", 59.6, registers, flags)
    assert registers == {CLOCK_OFFSET: D(60)}
    assert flags == set(), "59.6 s is inside the 60 s tolerance"
    now[0] += 3599.9
    assert not watch.due("m")
    assert watch.due("other"), "each meter has its own cadence"
    now[0] += 0.1
    assert watch.due("m")
    watch.report("m", -61.0, registers, flags)
    assert registers == {CLOCK_OFFSET: D(-61)}
    assert flags == {ReadingFlag.CLOCK_DRIFT}


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (StatusWord3(relay_open=True), CommandKind.TRIP, True),
        (StatusWord3(relay_open=False), CommandKind.TRIP, False),
        (StatusWord3(relay_open=False), CommandKind.DIRECT_CLOSE, True),
        (StatusWord3(relay_open=True), CommandKind.DIRECT_CLOSE, False),
        (StatusWord3(keep_power=True), CommandKind.KEEP_POWER_ON, True),
        (StatusWord3(keep_power=False), CommandKind.KEEP_POWER_ON, False),
        (StatusWord3(keep_power=False), CommandKind.KEEP_POWER_OFF, True),
        # close-allowed: the relay may stay open (the tenant closes it); only the commanded trip must be gone
        (StatusWord3(relay_open=True, relay_commanded_trip=False), CommandKind.CLOSE_ALLOWED, True),
        (StatusWord3(relay_open=True, relay_commanded_trip=True), CommandKind.CLOSE_ALLOWED, False),
    ],
)
def test_dlt645_status_confirms(status: StatusWord3, kind: CommandKind, expected: bool) -> None:
    assert dlt645_confirms(status, kind) is expected
