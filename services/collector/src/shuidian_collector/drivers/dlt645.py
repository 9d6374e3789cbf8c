"""DL/T 645 drivers. 2007: energy, status word 3 and remaining money per poll, relay control confirmed by
status word 3. 1997: forward active energy (9010) only; the 1997 edition has no relay command."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from shuidian_collector.drivers import (
    BUS_DEFAULTS,
    RELAY_CONFIRM,
    CommandOutcome,
    ConfirmPolicy,
    Patience,
    read_back,
    unsupported,
)
from shuidian_collector.protocols import dlt645
from shuidian_collector.protocols.common import DeviceError, ProtocolError
from shuidian_collector.registry import BusConfig, MeterConfig
from shuidian_collector.transport import BusError, BusLink, Channel
from shuidian_shared.messages import CommandKind, CommandRequested, CommandStatus, Reading, ReadingFlag, RelayState

DI_ENERGY_FORWARD_TOTAL = 0x00010000
DI_REMAINING_MONEY = 0x00900200
DI_STATUS_WORD_3 = 0x04000503
DI_1997_ENERGY_FORWARD_TOTAL = 0x9010

RELAY_COMMANDS = {
    CommandKind.TRIP: dlt645.RelayCommand.TRIP,
    CommandKind.CLOSE_ALLOWED: dlt645.RelayCommand.CLOSE_ALLOWED,
    CommandKind.DIRECT_CLOSE: dlt645.RelayCommand.DIRECT_CLOSE,
    CommandKind.KEEP_POWER_ON: dlt645.RelayCommand.KEEP_POWER_ON,
    CommandKind.KEEP_POWER_OFF: dlt645.RelayCommand.KEEP_POWER_OFF,
}


def _link(channel: Channel) -> BusLink:
    link = channel.bus.link
    if not isinstance(link, BusLink):
        raise TypeError(f"bus {channel.bus.bus_id} has no byte link")
    return link


async def _exchange(channel: Channel, request: bytes, address: str, function: int) -> dlt645.Frame:
    def accept(frame: dlt645.Frame) -> bool:
        return frame.is_reply and frame.address == address.upper() and frame.function == function

    link = _link(channel)
    return await channel.transact(lambda: link.exchange(request, dlt645.StreamParser(), accept, channel.timeout))


class Dlt645Driver:
    def __init__(self, *, timezone: str, confirm: ConfirmPolicy = RELAY_CONFIRM) -> None:
        self._tz = ZoneInfo(timezone)
        self._confirm = confirm
        self._no_money: set[str] = set()  # meters that answered "no such data" for remaining money

    def open(self, bus: BusConfig) -> BusLink:
        return BusLink(bus.host, bus.port)

    def patience(self, meter: MeterConfig) -> Patience:
        return BUS_DEFAULTS

    async def _read_di(self, channel: Channel, address: str, di: int) -> bytes:
        frame = await _exchange(channel, dlt645.read_request(address, di), address, dlt645.Function.READ)
        return dlt645.parse_read_reply(frame, di)

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        payload = await self._read_di(channel, meter.address, DI_ENERGY_FORWARD_TOTAL)
        sampled_at = datetime.now(UTC)  # the meter answered just now
        energy = dlt645.decode_value(DI_ENERGY_FORWARD_TOTAL, payload)
        if not isinstance(energy, Decimal):
            raise ProtocolError(f"unexpected energy value {energy!r}")
        registers = {"energy_active_import_total": energy}
        flags: set[ReadingFlag] = set()
        relay: RelayState | None = None
        keep_power: bool | None = None
        try:
            status = await self._status(channel, meter.address)
            relay = RelayState.OPEN if status.relay_open else RelayState.CLOSED
            keep_power = status.keep_power
        except (BusError, ProtocolError):
            flags.add(ReadingFlag.PARTIAL)
        if meter.meter_id not in self._no_money:
            try:
                money = dlt645.decode_value(
                    DI_REMAINING_MONEY, await self._read_di(channel, meter.address, DI_REMAINING_MONEY)
                )
                if isinstance(money, Decimal):
                    registers["balance_money"] = money
            except DeviceError:
                self._no_money.add(meter.meter_id)  # not a money-prepaid meter: stop asking
            except (BusError, ProtocolError):
                flags.add(ReadingFlag.PARTIAL)
        return Reading.create(
            meter.meter_id,
            meter.utility,
            sampled_at,
            registers=registers,
            relay=relay,
            keep_power=keep_power,
            flags=frozenset(flags),
        )

    async def _status(self, channel: Channel, address: str) -> dlt645.StatusWord3:
        value = dlt645.decode_value(DI_STATUS_WORD_3, await self._read_di(channel, address, DI_STATUS_WORD_3))
        if not isinstance(value, dlt645.StatusWord3):
            raise ProtocolError(f"unexpected status word {value!r}")
        return value

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        relay_command = RELAY_COMMANDS.get(request.kind)
        if relay_command is None:
            return unsupported(request.kind, "DL/T 645")
        # The meter compares the expiry with its own (local) clock.
        local_expiry = request.expires_at.astimezone(self._tz).replace(tzinfo=None, microsecond=0)
        frame = dlt645.relay_control_request(meter.address, relay_command, local_expiry)
        reply = await _exchange(channel, frame, meter.address, dlt645.Function.RELAY_CONTROL)
        answer = dlt645.encode_frame(reply)
        try:
            dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        except DeviceError as err:
            return CommandOutcome(CommandStatus.FAILED, f"meter refused: {err}", frame, response_frame=answer)
        # The relay takes a moment to move: read the state back a few times before judging.
        status, ok = await read_back(
            lambda: self._status(channel, meter.address), lambda s: _matches(s, request.kind), self._confirm
        )
        relay = RelayState.OPEN if status.relay_open else RelayState.CLOSED
        if not ok:
            return CommandOutcome(
                CommandStatus.FAILED,
                f"accepted but the meter did not change state (relay {relay.value}, keep-power {status.keep_power})",
                frame,
                relay,
                response_frame=answer,
            )
        return CommandOutcome(CommandStatus.CONFIRMED, "state read back matches", frame, relay, response_frame=answer)


class Dlt645v1997Driver:
    """Legacy meters: one 2-byte DI per value, no status word, no relay control."""

    def open(self, bus: BusConfig) -> BusLink:
        return BusLink(bus.host, bus.port)

    def patience(self, meter: MeterConfig) -> Patience:
        return BUS_DEFAULTS

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        di = DI_1997_ENERGY_FORWARD_TOTAL
        frame = await _exchange(channel, dlt645.read_request_1997(meter.address, di), meter.address, 0x01)
        sampled_at = datetime.now(UTC)
        energy = dlt645.decode_value_1997(di, dlt645.parse_read_reply_1997(frame, di))
        return Reading.create(
            meter.meter_id, meter.utility, sampled_at, registers={"energy_active_import_total": energy}
        )

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        return unsupported(request.kind, "DL/T 645-1997")


def _matches(status: dlt645.StatusWord3, kind: CommandKind) -> bool:
    if kind is CommandKind.KEEP_POWER_ON:
        return status.keep_power
    if kind is CommandKind.KEEP_POWER_OFF:
        return not status.keep_power
    if kind is CommandKind.TRIP:
        return status.relay_open
    if kind is CommandKind.DIRECT_CLOSE:
        return not status.relay_open
    return not status.relay_commanded_trip  # close-allowed: the meter may re-close; the tenant closes it
