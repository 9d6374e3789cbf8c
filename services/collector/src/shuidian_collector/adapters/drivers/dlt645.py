"""DL/T 645 drivers. 2007: energy total + tariffs 1..4 (尖峰平谷) in one block read (0001FF00; single DIs for a
meter that refuses the block), status word 3 and remaining money per poll, the meter's clock (date and time, for
its offset) once per `ClockPolicy.check_interval_s`; relay control confirmed by status
word 3; time sync (broadcast 08, or write 14 of date/time beyond what a broadcast may correct) and parameter
writes (14) confirmed by reading back. 1997: forward active energy (9010) only; no commands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from types import MappingProxyType
from zoneinfo import ZoneInfo

from shuidian_collector.adapters.drivers import read_back
from shuidian_collector.adapters.transport import BusLink, Channel
from shuidian_collector.domain.commands import (
    BUS_DEFAULTS,
    RELAY_CONFIRM,
    CommandOutcome,
    ConfirmPolicy,
    Patience,
    dlt645_confirms,
    requested_parameter,
    unsupported,
)
from shuidian_collector.domain.devices import BusConfig, MeterConfig
from shuidian_collector.domain.readings import (
    CLOCK_DEFAULTS,
    TARIFF_REGISTERS,
    ClockPolicy,
    ClockWatch,
    tariff_registers,
)
from shuidian_collector.errors import BusError, CommandRejected, WriteRefused
from shuidian_protocols import dlt645
from shuidian_protocols.errors import DeviceError, ProtocolError, ValueEncodingError
from shuidian_shared.messages import (
    CommandKind,
    CommandRequested,
    CommandStatus,
    Reading,
    ReadingFlag,
    RelayState,
)

DI_ENERGY_FORWARD_TOTAL = 0x00010000
DI_ENERGY_FORWARD_BLOCK = 0x0001FF00  # total, then tariffs 1..4
DI_ENERGY_FORWARD_TARIFFS = (0x00010100, 0x00010200, 0x00010300, 0x00010400)
DI_REMAINING_MONEY = 0x00900200
DI_STATUS_WORD_3 = 0x04000503
DI_DATE = 0x04000101
DI_TIME = 0x04000102
DI_1997_ENERGY_FORWARD_TOTAL = 0x9010

# Parameters a parameter_write may set: canonical name → DI (the catalogue gives the layout and unit).
WRITABLE: Mapping[str, int] = MappingProxyType(
    {
        "alarm_money_1": 0x04001001,  # 报警金额1限值, CNY
        "alarm_money_2": 0x04001002,  # 报警金额2限值, CNY
        "overdraft_money_limit": 0x04001004,  # 透支金额限值, CNY
        "power_limit": 0x04000E01,  # 正向有功功率上限值 (load limit), kW
    }
)

RELAY_COMMANDS = {
    CommandKind.TRIP: dlt645.RelayCommand.TRIP,
    CommandKind.CLOSE_ALLOWED: dlt645.RelayCommand.CLOSE_ALLOWED,
    CommandKind.DIRECT_CLOSE: dlt645.RelayCommand.DIRECT_CLOSE,
    CommandKind.KEEP_POWER_ON: dlt645.RelayCommand.KEEP_POWER_ON,
    CommandKind.KEEP_POWER_OFF: dlt645.RelayCommand.KEEP_POWER_OFF,
}


@dataclass(frozen=True)
class Credentials:
    """Password level, 6-digit password and 8-digit operator code that commands (14, 1C) carry."""

    level: int = 2
    password: int = 0
    operator: int = 0


def _link(channel: Channel) -> BusLink:
    link = channel.bus.link
    if not isinstance(link, BusLink):
        raise TypeError(f"bus {channel.bus.bus_id} has no byte link")
    return link


async def _exchange(
    channel: Channel, request: bytes, address: str, function: int, di: bytes | None = None
) -> dlt645.Frame:
    """One request and its reply: from this meter, to this function and, for a read, this DI (as it travels, little-
    endian; an error reply carries none); anything else on the line is a late answer to an earlier request: skipped."""

    def accept(frame: dlt645.Frame) -> bool:
        if not (frame.is_reply and frame.address == address.upper() and frame.function == function):
            return False
        return di is None or frame.is_error or frame.data[: len(di)] == di

    link = _link(channel)
    return await channel.transact(lambda: link.exchange(request, dlt645.StreamParser(), accept, channel.timeout))


def _refusal(err: DeviceError) -> str:
    if isinstance(err, dlt645.MeterErrorReply):
        return f"meter refused (error byte {int(err.error):02X}: {err.error.name or 'no bit set'})"
    return f"meter refused: {err}"


def _digits(parameters: Mapping[str, str], key: str, most: int, default: int) -> int:
    raw = parameters.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= most):
        raise CommandRejected(f"{key} must be at most {most} decimal digits")
    return int(raw)


class Dlt645Driver:
    def __init__(
        self,
        *,
        timezone: str,
        confirm: ConfirmPolicy = RELAY_CONFIRM,
        credentials: Credentials | None = None,
        clock: ClockPolicy = CLOCK_DEFAULTS,
    ) -> None:
        self._tz = ZoneInfo(timezone)
        self._confirm = confirm
        self._credentials = credentials  # None: none configured (relay control then uses level 02, 000000)
        self._clock = clock
        self._no_money: set[str] = set()  # meters that answered "no such data" for remaining money
        self._no_block: set[str] = set()  # meters that refused the energy block read
        self._no_tariffs: set[str] = set()  # meters that refused a single tariff register
        self._no_clock: set[str] = set()  # meters that answered "no such data" for their date or time
        self._clock_watch = ClockWatch(clock)

    def open(self, bus: BusConfig) -> BusLink:
        return BusLink(bus.host, bus.port)

    def patience(self, meter: MeterConfig) -> Patience:
        return BUS_DEFAULTS

    async def _read_di(self, channel: Channel, address: str, di: int) -> bytes:
        frame = await _exchange(
            channel, dlt645.read_request(address, di), address, dlt645.Function.READ, di.to_bytes(4, "little")
        )
        return dlt645.parse_read_reply(frame, di)

    async def _read_decimal(self, channel: Channel, address: str, di: int) -> Decimal:
        value = dlt645.decode_value(di, await self._read_di(channel, address, di))
        if not isinstance(value, Decimal):
            raise ProtocolError(f"unexpected value {value!r} for DI {di:08X}")
        return value

    async def _energy(
        self, channel: Channel, meter: MeterConfig, flags: set[ReadingFlag]
    ) -> tuple[dict[str, Decimal], datetime]:
        """Forward active energy total and tariffs 1..4: one block read, or single DIs for a meter without it."""
        if meter.meter_id not in self._no_block:
            try:
                payload = await self._read_di(channel, meter.address, DI_ENERGY_FORWARD_BLOCK)
            except DeviceError:
                self._no_block.add(meter.meter_id)  # this meter has no block read: single DIs from now on
            else:
                sampled_at = datetime.now(UTC)  # the meter answered just now
                block = dlt645.decode_value(DI_ENERGY_FORWARD_BLOCK, payload)
                if not isinstance(block, tuple):
                    raise ProtocolError(f"unexpected energy block {block!r}")
                total, *tariffs = block
                registers = {"energy_active_import_total": total}
                registers |= tariff_registers(tariffs)
                return registers, sampled_at
        total = await self._read_decimal(channel, meter.address, DI_ENERGY_FORWARD_TOTAL)
        sampled_at = datetime.now(UTC)
        registers = {"energy_active_import_total": total}
        if meter.meter_id not in self._no_tariffs:
            try:
                for name, di in zip(TARIFF_REGISTERS, DI_ENERGY_FORWARD_TARIFFS, strict=True):
                    registers[name] = await self._read_decimal(channel, meter.address, di)
            except DeviceError:
                self._no_tariffs.add(meter.meter_id)  # no tariff registers: total only from now on
                registers = {"energy_active_import_total": total}
            except (BusError, ProtocolError):
                flags.add(ReadingFlag.PARTIAL)
                registers = {"energy_active_import_total": total}  # all four tariffs or none
        return registers, sampled_at

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        flags: set[ReadingFlag] = set()
        registers, sampled_at = await self._energy(channel, meter, flags)
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
                registers["balance_money"] = await self._read_decimal(channel, meter.address, DI_REMAINING_MONEY)
            except DeviceError:
                self._no_money.add(meter.meter_id)  # not a money-prepaid meter: stop asking
            except (BusError, ProtocolError):
                flags.add(ReadingFlag.PARTIAL)
        await self._clock_check(channel, meter, registers, flags)
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

    def _credentials_for(self, request: CommandRequested, *, required: bool) -> Credentials:
        """The command's own credentials (parameters password_level / password / operator), else the configured ones."""
        parameters = request.parameters
        if "password" not in parameters and self._credentials is None:
            if required:
                raise CommandRejected(
                    f"{request.kind.value} needs the meter password: configure COLLECTOR_DLT645_PASSWORD "
                    "or pass password (and password_level, operator) in the command parameters"
                )
            return Credentials()
        base = self._credentials or Credentials()
        return Credentials(
            _digits(parameters, "password_level", 2, base.level),
            _digits(parameters, "password", 6, base.password),
            _digits(parameters, "operator", 8, base.operator),
        )

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        if request.kind is CommandKind.TIME_SYNC:
            return await self._time_sync(channel, meter, request)
        if request.kind is CommandKind.PARAMETER_WRITE:
            return await self._parameter_write(channel, meter, request)
        relay_command = RELAY_COMMANDS.get(request.kind)
        if relay_command is None:
            return unsupported(request.kind, "DL/T 645")
        credentials = self._credentials_for(request, required=False)
        # The meter compares the expiry with its own (local) clock.
        local_expiry = request.expires_at.astimezone(self._tz).replace(tzinfo=None, microsecond=0)
        frame = dlt645.relay_control_request(
            meter.address,
            relay_command,
            local_expiry,
            password_level=credentials.level,
            password=credentials.password,
            operator=credentials.operator,
        )
        reply = await _exchange(channel, frame, meter.address, dlt645.Function.RELAY_CONTROL)
        answer = dlt645.encode_frame(reply)
        try:
            dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        except DeviceError as err:
            return CommandOutcome(CommandStatus.FAILED, _refusal(err), frame, response_frame=answer)
        # The relay takes a moment to move: read the state back a few times before judging.
        status, ok = await read_back(
            lambda: self._status(channel, meter.address), lambda s: dlt645_confirms(s, request.kind), self._confirm
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

    # ------------------------------------------------------------ writes

    async def _write(
        self, channel: Channel, address: str, di: int, payload: bytes, credentials: Credentials
    ) -> tuple[bytes, bytes]:
        """Write one DI (function 14); return the request and answer frames; raise DeviceError if refused."""
        frame = dlt645.write_request(
            address,
            di,
            payload,
            password_level=credentials.level,
            password=credentials.password,
            operator=credentials.operator,
        )
        reply = await _exchange(channel, frame, address, dlt645.Function.WRITE)
        answer = dlt645.encode_frame(reply)
        try:
            dlt645.parse_ack(reply, dlt645.Function.WRITE)
        except DeviceError as err:
            raise WriteRefused(frame, answer, _refusal(err)) from err
        return frame, answer

    async def _parameter_write(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        name, value = requested_parameter(request, WRITABLE, "DL/T 645 meters")
        di = WRITABLE[name]
        unit = dlt645.CATALOGUE[di].unit
        try:
            payload = dlt645.encode_value(di, value)
        except ValueEncodingError as err:
            raise CommandRejected(f"value {value} does not fit {name}: {err}") from err
        credentials = self._credentials_for(request, required=True)
        try:
            frame, answer = await self._write(channel, meter.address, di, payload, credentials)
        except WriteRefused as refused:
            return CommandOutcome(
                CommandStatus.FAILED, f"{name}: {refused.detail}", refused.frame, response_frame=refused.answer
            )
        back = await self._read_decimal(channel, meter.address, di)
        if back != value:
            return CommandOutcome(
                CommandStatus.FAILED,
                f"accepted but {name} reads back {back} {unit}, not {value}",
                frame,
                response_frame=answer,
            )
        return CommandOutcome(
            CommandStatus.CONFIRMED, f"{name} = {back} {unit} read back", frame, response_frame=answer
        )

    # ------------------------------------------------------------ clock

    async def _clock_offset(self, channel: Channel, address: str) -> float:
        """Meter clock minus true time, in seconds (the meter keeps local wall-clock time in whole seconds)."""
        day = dlt645.decode_value(DI_DATE, await self._read_di(channel, address, DI_DATE))
        moment = dlt645.decode_value(DI_TIME, await self._read_di(channel, address, DI_TIME))
        read_at = datetime.now(UTC)
        if not isinstance(moment, clock_time):
            raise ProtocolError(f"unexpected time {moment!r}")
        if moment < _AFTER_MIDNIGHT:  # the date may have been read just before midnight: read it again
            day = dlt645.decode_value(DI_DATE, await self._read_di(channel, address, DI_DATE))
        if not isinstance(day, date):
            raise ProtocolError(f"unexpected date {day!r}")
        meter_at = datetime.combine(day, moment, self._tz)
        return (meter_at - read_at).total_seconds() + 0.5  # the meter's second had begun up to 1 s earlier

    async def _clock_check(
        self, channel: Channel, meter: MeterConfig, registers: dict[str, Decimal], flags: set[ReadingFlag]
    ) -> None:
        """Once per check interval, the meter's clock offset as a register; `clock_drift` beyond the tolerance."""
        if meter.meter_id in self._no_clock or not self._clock_watch.due(meter.meter_id):
            return
        try:
            offset = await self._clock_offset(channel, meter.address)
        except DeviceError:
            self._no_clock.add(meter.meter_id)  # no clock DIs: stop asking
            return
        except (BusError, ProtocolError):
            flags.add(ReadingFlag.PARTIAL)  # asked again on the next poll
            return
        self._clock_watch.report(meter.meter_id, offset, registers, flags)

    def _local_now(self) -> datetime:
        # The meter truncates to whole seconds: round to the nearest one.
        return (datetime.now(self._tz) + timedelta(milliseconds=500)).replace(tzinfo=None, microsecond=0)

    async def _time_sync(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        before = await self._clock_offset(channel, meter.address)
        sent = b""
        answers = b""
        if abs(before) <= self._clock.broadcast_limit_s:
            link = _link(channel)
            method = "broadcast time"

            async def broadcast() -> None:
                nonlocal sent
                sent = dlt645.broadcast_time_request(self._local_now())  # built when it is our turn on the bus
                await link.send(sent)

            await channel.transact(broadcast)
        else:
            try:
                credentials = self._credentials_for(request, required=True)
            except CommandRejected as err:
                # Only the clock was read: without the password the write is refused (final, like any
                # rejected command), since the same command sent again would be refused again.
                raise CommandRejected(
                    f"meter clock is off by {before:+.0f} s, more than the {self._clock.broadcast_limit_s:.0f} s "
                    f"a broadcast may correct; {err}"
                ) from err
            method = "write of date and time"
            now = self._local_now()
            try:
                frame, answer = await self._write(
                    channel, meter.address, DI_DATE, dlt645.encode_value(DI_DATE, now.date()), credentials
                )
                sent, answers = frame, answer
                now = self._local_now()
                frame, answer = await self._write(
                    channel, meter.address, DI_TIME, dlt645.encode_value(DI_TIME, now.time()), credentials
                )
                sent, answers = sent + frame, answers + answer
            except WriteRefused as refused:
                return CommandOutcome(
                    CommandStatus.FAILED,
                    f"meter clock is off by {before:+.0f} s; {refused.detail}",
                    sent + refused.frame,
                    response_frame=answers + refused.answer,
                )
        after = await self._clock_offset(channel, meter.address)
        summary = f"meter clock was off by {before:+.0f} s; after the {method} it is off by {after:+.0f} s"
        status = CommandStatus.CONFIRMED if abs(after) <= self._clock.tolerance_s else CommandStatus.FAILED
        if status is CommandStatus.FAILED:
            summary += f", more than the {self._clock.tolerance_s:g} s tolerance"
        return CommandOutcome(status, summary, sent, response_frame=answers or None)


_AFTER_MIDNIGHT = clock_time(0, 0, 10)


class Dlt645v1997Driver:
    """Legacy meters: one 2-byte DI per value, no status word, no relay control."""

    def open(self, bus: BusConfig) -> BusLink:
        return BusLink(bus.host, bus.port)

    def patience(self, meter: MeterConfig) -> Patience:
        return BUS_DEFAULTS

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        di = DI_1997_ENERGY_FORWARD_TOTAL
        request = dlt645.read_request_1997(meter.address, di)
        frame = await _exchange(channel, request, meter.address, 0x01, di.to_bytes(2, "little"))
        sampled_at = datetime.now(UTC)
        energy = dlt645.decode_value_1997(di, dlt645.parse_read_reply_1997(frame, di))
        return Reading.create(
            meter.meter_id, meter.utility, sampled_at, registers={"energy_active_import_total": energy}
        )

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        return unsupported(request.kind, "DL/T 645-1997")
