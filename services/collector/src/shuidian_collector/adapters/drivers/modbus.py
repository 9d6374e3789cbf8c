"""Modbus RTU-over-TCP and Modbus TCP meters, driven by the device profiles in shuidian_protocols/profiles/*.yaml:
contiguous registers are read in blocks, relay and valve commands are the profile's register writes
(only those its profile marks confirmed against the vendor manual; others are refused as unsupported, nothing
written), confirmed by reading the profile's state register back when it has one; parameter writes go to the registers
a profile marks writable (and confirmed), confirmed by reading them back. No profile maps a clock yet, so
time sync is reported as not supported."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from shuidian_collector.adapters.drivers import read_back
from shuidian_collector.adapters.transport import Channel
from shuidian_collector.domain.commands import (
    RELAY_CONFIRM,
    CommandOutcome,
    ConfirmPolicy,
    Patience,
    requested_parameter,
    unsupported,
)
from shuidian_collector.domain.devices import BusConfig, MeterConfig
from shuidian_collector.domain.readings import leaking, relay_from_code, valve_from_code
from shuidian_collector.errors import BusGarbled, BusLinkError, BusTimeout, CommandRejected, CommandUnsupported
from shuidian_protocols.errors import DeviceError, ProtocolError, ValueEncodingError
from shuidian_protocols.modbus_profiles import (
    DeviceProfile,
    decode_block,
    decode_register,
    encode_register,
    load_profile,
    plan_reads,
)
from shuidian_shared.messages import (
    RESIDUAL_CURRENT,
    CommandKind,
    CommandRequested,
    CommandStatus,
    Reading,
    ReadingFlag,
)

# Command kind → (profile control action, state register to read back, value that confirms it).
_ACTIONS: dict[CommandKind, tuple[str, str, Callable[[Decimal], bool]]] = {
    CommandKind.TRIP: ("trip", "relay_open", lambda v: v == 1),
    CommandKind.DIRECT_CLOSE: ("close", "relay_open", lambda v: v == 0),
    CommandKind.CLOSE_ALLOWED: ("close", "relay_open", lambda v: v == 0),
    CommandKind.VALVE_OPEN: ("valve_open", "valve_state", lambda v: v == 0),
    CommandKind.VALVE_CLOSE: ("valve_close", "valve_state", lambda v: v == 1),
}


class ModbusLink:
    """One pymodbus client per bus; the bus gate serialises its calls (the client is not safe for concurrency)."""

    def __init__(self, host: str, port: int, *, rtu: bool, timeout: float) -> None:
        self.client = AsyncModbusTcpClient(
            host,
            port=port,
            framer=FramerType.RTU if rtu else FramerType.SOCKET,
            timeout=timeout,
            retries=0,  # the channel retries, so a queued command can go between attempts
            reconnect_delay=0,  # reconnects are ours (on the next exchange), not a background loop
        )

    async def call(self, operation: Callable[[AsyncModbusTcpClient], Awaitable[Any]], timeout: float) -> Any:
        # The client waits `timeout_connect` for each response; the bus gate makes setting it per call safe.
        self.client.comm_params.timeout_connect = timeout
        if not self.client.connected and not await self.client.connect():
            raise BusLinkError(f"cannot reach gateway {self.client.comm_params.host}:{self.client.comm_params.port}")
        try:
            response = await operation(self.client)
        except ConnectionException as err:
            self.client.close()
            raise BusLinkError(str(err)) from err
        except ModbusIOException as err:
            raise BusTimeout(str(err)) from err
        except ModbusException as err:
            raise ProtocolError(str(err)) from err
        if response.isError():
            raise DeviceError(f"Modbus exception {getattr(response, 'exception_code', '?')}")
        return response

    async def close(self) -> None:
        self.client.close()


def _pdu(unit: int, function: int, address: int, values: list[int]) -> bytes:
    """The request as unit id + PDU (the RTU frame without its CRC), for the audit trail."""
    if function == 6:
        return struct.pack(">BBHH", unit, function, address, values[0])
    return struct.pack(f">BBHHB{len(values)}H", unit, function, address, len(values), 2 * len(values), *values)


def _reply_pdu(unit: int, response: Any) -> bytes:
    """The meter's answer as unit id + PDU, for the audit trail (as the request is recorded)."""
    encoded: bytes = response.encode()
    return bytes([unit, response.function_code]) + encoded


def _check_write_echo(response: Any, function: int, address: int, values: list[int]) -> None:
    """A write's answer echoes the function and address (06: the value, 10H: the count): anything else is the late
    answer to another request, not this one's (an exception answer is left to the link, which raises DeviceError)."""
    if response.isError():
        return
    echoed = getattr(response, "address", None)
    if function == 6:
        matches = response.function_code == 6 and echoed == address and list(response.registers) == values[:1]
    else:
        matches = response.function_code == 16 and echoed == address and response.count == len(values)
    if not matches:
        raise BusGarbled(
            f"answer {response.function_code:02X} does not echo the write of {function:02X} to {address:04X}H"
        )


class ModbusDriver:
    def __init__(
        self,
        *,
        rtu: bool,
        confirm: ConfirmPolicy = RELAY_CONFIRM,
        profiles: Callable[[str], DeviceProfile] = load_profile,
        leakage_threshold_ma: Decimal = Decimal(30),
    ) -> None:
        self._leakage_threshold_ma = leakage_threshold_ma  # 30 mA: the rated operating current of household RCDs
        self._rtu = rtu
        self._confirm = confirm
        self._profiles = profiles  # model → profile (tests pass their own)

    def open(self, bus: BusConfig) -> ModbusLink:
        return ModbusLink(bus.host, bus.port, rtu=self._rtu, timeout=bus.timeout_ms / 1000)

    def patience(self, meter: MeterConfig) -> Patience:
        profile = self._profiles(meter.model)
        return Patience(None if profile.timeout_ms is None else profile.timeout_ms / 1000, profile.retries)

    @staticmethod
    def _link(channel: Channel) -> ModbusLink:
        link = channel.bus.link
        if not isinstance(link, ModbusLink):
            raise TypeError(f"bus {channel.bus.bus_id} has no Modbus client")
        return link

    async def _registers(
        self, channel: Channel, unit: int, profile: DeviceProfile, names: list[str] | None = None
    ) -> tuple[dict[str, Decimal], datetime]:
        link = self._link(channel)
        values: dict[str, Decimal] = {}
        answered_at: datetime | None = None
        for block in plan_reads(profile, names):

            async def read(client: AsyncModbusTcpClient, block: Any = block) -> Any:
                fn = client.read_holding_registers if block.function == 3 else client.read_input_registers
                response = await fn(block.start, count=block.count, device_id=unit)
                if not response.isError() and (
                    response.function_code != block.function or len(response.registers) != block.count
                ):
                    # RTU has no transaction id: a late answer to another read must not be taken for this one's.
                    raise BusGarbled(
                        f"answer {response.function_code:02X} with {len(response.registers)} register(s) is not the "
                        f"read of {block.count} from {block.start:04X}H"
                    )
                return response

            response = await channel.transact(partial(link.call, read, channel.timeout))
            answered_at = answered_at or datetime.now(UTC)
            try:
                values |= decode_block(profile, block, response.registers)
            except ValueError as err:
                raise ProtocolError(str(err)) from err
        assert answered_at is not None  # a profile has at least one register
        return values, answered_at

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        profile = self._profiles(meter.model)
        measured = [r.name for r in profile.registers if not r.writable]  # parameters are not readings
        values, sampled_at = await self._registers(channel, int(meter.address), profile, measured)
        relay = values.pop("relay_open", None)
        valve = values.pop("valve_state", None)
        alarm = values.pop("leakage_alarm", None)
        return Reading.create(
            meter.meter_id,
            meter.utility,
            sampled_at,
            registers=values,
            relay=None if relay is None else relay_from_code(relay),
            valve=None if valve is None else valve_from_code(valve),
            flags=frozenset(
                {ReadingFlag.LEAKAGE}
                if leaking(alarm, values.get(RESIDUAL_CURRENT), self._leakage_threshold_ma)
                else ()
            ),
        )

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        profile = self._profiles(meter.model)
        if request.kind is CommandKind.PARAMETER_WRITE:
            return await self._parameter_write(channel, meter, profile, request)
        if request.kind is CommandKind.TIME_SYNC:
            return unsupported(request.kind, f"Modbus {profile.model}", "its profile maps no clock")
        action = _ACTIONS.get(request.kind)
        if action is None or action[0] not in {c.action for c in profile.controls}:
            return unsupported(request.kind, f"Modbus {profile.model}")
        name, state_register, confirms = action
        control = profile.control(name)
        if not control.confirmed:
            # As for parameters: a register write nobody checked against the vendor manual may do anything.
            raise CommandUnsupported(
                f"表计不支持此命令 {request.kind.value}: {name} on {profile.model} is mapped by its profile but not "
                "confirmed by the vendor manual: not written"
            )
        unit = int(meter.address)
        link = self._link(channel)
        sent = b""
        answers = b""
        for write in control.writes:

            async def send(client: AsyncModbusTcpClient, write: Any = write) -> Any:
                if write.function == 6:
                    response = await client.write_register(write.address, write.values[0], device_id=unit)
                else:
                    response = await client.write_registers(write.address, list(write.values), device_id=unit)
                _check_write_echo(response, write.function, write.address, list(write.values))
                return response

            sent += _pdu(unit, write.function, write.address, list(write.values))
            try:
                response = await channel.transact(partial(link.call, send, channel.timeout))
            except DeviceError as err:
                return CommandOutcome(
                    CommandStatus.FAILED, f"meter refused: {err}", sent, response_frame=answers or None
                )
            answers += _reply_pdu(unit, response)
        if state_register not in {r.name for r in profile.registers}:
            return CommandOutcome(
                CommandStatus.ACKNOWLEDGED,
                f"written; {profile.model} has no {state_register} register to confirm",
                sent,
                response_frame=answers,
            )

        async def state() -> Decimal:
            return (await self._registers(channel, unit, profile, [state_register]))[0][state_register]

        value, ok = await read_back(state, confirms, self._confirm)
        relay = relay_from_code(value) if state_register == "relay_open" else None
        valve = valve_from_code(value) if state_register == "valve_state" else None
        if not ok:
            return CommandOutcome(
                CommandStatus.FAILED, f"written but {state_register} reads {value}", sent, relay, valve, answers
            )
        return CommandOutcome(CommandStatus.CONFIRMED, "state read back matches", sent, relay, valve, answers)

    async def _parameter_write(
        self, channel: Channel, meter: MeterConfig, profile: DeviceProfile, request: CommandRequested
    ) -> CommandOutcome:
        writable = {r.name: r for r in profile.registers if r.writable}
        name, value = requested_parameter(request, writable, f"Modbus {profile.model}")
        spec = writable[name]
        if not spec.confirmed:
            raise CommandUnsupported(
                f"不支持写参数 {name}: {name} on {profile.model} is writable by its profile but not confirmed by the "
                "vendor manual: not written"
            )
        try:
            words = encode_register(spec, value)
        except ValueEncodingError as err:
            raise CommandRejected(f"value {value} does not fit {name}: {err}") from err
        expected = decode_register(spec, words)  # what the meter holds afterwards (float32 rounds)
        unit = int(meter.address)
        link = self._link(channel)
        function = 6 if len(words) == 1 else 16

        async def send(client: AsyncModbusTcpClient) -> Any:
            if function == 6:
                response = await client.write_register(spec.address, words[0], device_id=unit)
            else:
                response = await client.write_registers(spec.address, words, device_id=unit)
            _check_write_echo(response, function, spec.address, words)
            return response

        sent = _pdu(unit, function, spec.address, words)
        try:
            response = await channel.transact(partial(link.call, send, channel.timeout))
        except DeviceError as err:
            return CommandOutcome(CommandStatus.FAILED, f"{name}: meter refused: {err}", sent)
        answer = _reply_pdu(unit, response)
        back = (await self._registers(channel, unit, profile, [name]))[0][name]
        if back != expected:
            return CommandOutcome(
                CommandStatus.FAILED,
                f"accepted but {name} reads back {back} {spec.unit}, not {expected}",
                sent,
                response_frame=answer,
            )
        return CommandOutcome(
            CommandStatus.CONFIRMED, f"{name} = {back} {spec.unit} read back", sent, response_frame=answer
        )
