"""DL/T 645-2007 driver: energy and status word 3 per poll; relay control confirmed by status word 3."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from shuidian_collector.drivers import CommandOutcome
from shuidian_collector.protocols import dlt645
from shuidian_collector.protocols.common import DeviceError, ProtocolError
from shuidian_collector.registry import MeterConfig
from shuidian_collector.transport import BusLink
from shuidian_shared.messages import CommandKind, CommandStatus, Reading, ReadingFlag, RelayState

DI_ENERGY_FORWARD_TOTAL = 0x00010000
DI_REMAINING_MONEY = 0x00900200
DI_STATUS_WORD_3 = 0x04000503

RELAY_COMMANDS = {
    CommandKind.TRIP: dlt645.RelayCommand.TRIP,
    CommandKind.CLOSE_ALLOWED: dlt645.RelayCommand.CLOSE_ALLOWED,
    CommandKind.DIRECT_CLOSE: dlt645.RelayCommand.DIRECT_CLOSE,
    CommandKind.KEEP_POWER_ON: dlt645.RelayCommand.KEEP_POWER_ON,
    CommandKind.KEEP_POWER_OFF: dlt645.RelayCommand.KEEP_POWER_OFF,
}


class Dlt645Driver:
    def __init__(
        self, *, timeout: float, timezone: str, confirm_attempts: int = 5, confirm_interval: float = 0.3
    ) -> None:
        self._timeout = timeout
        self._tz = ZoneInfo(timezone)
        self._confirm_attempts = confirm_attempts
        self._confirm_interval = confirm_interval

    async def _read_di(self, link: BusLink, address: str, di: int) -> bytes:
        def accept(frame: dlt645.Frame) -> bool:
            return frame.is_reply and frame.address == address.upper() and frame.function == dlt645.Function.READ

        frame = await link.exchange(dlt645.read_request(address, di), dlt645.StreamParser(), accept, self._timeout)
        return dlt645.parse_read_reply(frame, di)

    async def read(self, link: BusLink, meter: MeterConfig) -> Reading:
        payload = await self._read_di(link, meter.address, DI_ENERGY_FORWARD_TOTAL)
        sampled_at = datetime.now(UTC)
        energy = dlt645.decode_value(DI_ENERGY_FORWARD_TOTAL, payload)
        if not isinstance(energy, Decimal):
            raise ProtocolError(f"unexpected energy value {energy!r}")
        status = await self._status(link, meter.address)
        registers = {"energy_active_import_total": energy}
        flags: set[ReadingFlag] = set()
        try:
            money = dlt645.decode_value(
                DI_REMAINING_MONEY, await self._read_di(link, meter.address, DI_REMAINING_MONEY)
            )
            if isinstance(money, Decimal):
                registers["balance_money"] = money
        except DeviceError:
            pass  # not a money-prepaid meter
        return Reading.create(
            meter.meter_id,
            meter.utility,
            sampled_at,
            registers=registers,
            relay=RelayState.OPEN if status.relay_open else RelayState.CLOSED,
            keep_power=status.keep_power,
            flags=frozenset(flags),
        )

    async def _status(self, link: BusLink, address: str) -> dlt645.StatusWord3:
        value = dlt645.decode_value(DI_STATUS_WORD_3, await self._read_di(link, address, DI_STATUS_WORD_3))
        if not isinstance(value, dlt645.StatusWord3):
            raise ProtocolError(f"unexpected status word {value!r}")
        return value

    async def command(
        self, link: BusLink, meter: MeterConfig, kind: CommandKind, expires_at: datetime
    ) -> CommandOutcome:
        relay_command = RELAY_COMMANDS.get(kind)
        if relay_command is None:
            return CommandOutcome(CommandStatus.FAILED, f"{kind.value} is not supported by DL/T 645 meters")
        # The meter compares the expiry with its own (local) clock.
        local_expiry = expires_at.astimezone(self._tz).replace(tzinfo=None, microsecond=0)
        request = dlt645.relay_control_request(meter.address, relay_command, local_expiry)

        def accept(frame: dlt645.Frame) -> bool:
            return (
                frame.is_reply
                and frame.address == meter.address.upper()
                and frame.function == dlt645.Function.RELAY_CONTROL
            )

        reply = await link.exchange(request, dlt645.StreamParser(), accept, self._timeout)
        try:
            dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        except DeviceError as err:
            return CommandOutcome(CommandStatus.FAILED, f"meter refused: {err}", request)
        # The relay takes a moment to move: read the state back a few times before judging.
        status = await self._status(link, meter.address)
        for _ in range(self._confirm_attempts):
            if _matches(status, kind):
                break
            await asyncio.sleep(self._confirm_interval)
            status = await self._status(link, meter.address)
        relay = RelayState.OPEN if status.relay_open else RelayState.CLOSED
        if not _matches(status, kind):
            return CommandOutcome(
                CommandStatus.FAILED,
                f"accepted but the meter did not change state (relay {relay.value})",
                request,
                relay,
            )
        return CommandOutcome(CommandStatus.CONFIRMED, "state read back matches", request, relay)


def _expected(kind: CommandKind) -> RelayState | None:
    if kind is CommandKind.TRIP:
        return RelayState.OPEN
    if kind is CommandKind.DIRECT_CLOSE:
        return RelayState.CLOSED
    return None  # close-allowed leaves closing to the tenant; keep-power is checked by its flag


def _matches(status: dlt645.StatusWord3, kind: CommandKind) -> bool:
    if kind is CommandKind.KEEP_POWER_ON:
        return status.keep_power
    if kind is CommandKind.KEEP_POWER_OFF:
        return not status.keep_power
    expected = _expected(kind)
    return expected is None or status.relay_open == (expected is RelayState.OPEN)
