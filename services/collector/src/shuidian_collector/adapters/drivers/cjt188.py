"""CJ/T 188 water meters: cumulative volume (901F), valve state and battery-low per poll, and the meter's clock
offset (its time travels in every 901F reply) once per `ClockPolicy.check_interval_s`; valve commands confirmed by
re-reading the status word (the motor takes seconds)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from shuidian_collector.adapters.drivers import read_back
from shuidian_collector.adapters.transport import BusLink, Channel
from shuidian_collector.domain.commands import (
    BUS_DEFAULTS,
    VALVE_CONFIRM,
    CommandOutcome,
    ConfirmPolicy,
    Patience,
    unsupported,
)
from shuidian_collector.domain.devices import BusConfig, MeterConfig
from shuidian_collector.domain.readings import CJT188_VALVES, CLOCK_DEFAULTS, TO_M3, ClockPolicy, ClockWatch
from shuidian_protocols import cjt188
from shuidian_protocols.errors import DeviceError, ProtocolError
from shuidian_shared.messages import CommandKind, CommandRequested, CommandStatus, Reading, ReadingFlag

_VALVE_COMMANDS = {CommandKind.VALVE_OPEN: True, CommandKind.VALVE_CLOSE: False}


class Cjt188Driver:
    def __init__(
        self,
        *,
        meter_type: int = cjt188.MeterType.COLD_WATER,
        confirm: ConfirmPolicy = VALVE_CONFIRM,
        timezone: str = "Asia/Shanghai",
        clock: ClockPolicy = CLOCK_DEFAULTS,
    ) -> None:
        self._meter_type = meter_type
        self._confirm = confirm
        self._tz = ZoneInfo(timezone)  # meters keep local wall-clock time
        self._clock_watch = ClockWatch(clock)
        self._seq = itertools.count()

    def open(self, bus: BusConfig) -> BusLink:
        return BusLink(bus.host, bus.port)

    def patience(self, meter: MeterConfig) -> Patience:
        return BUS_DEFAULTS

    async def _exchange(self, channel: Channel, request: bytes, address: str, function: int, seq: int) -> cjt188.Frame:
        """One request and its reply: from this meter, to this function, echoing this sequence number (SER follows
        the DI in a reply, and comes before the status in an error reply); anything else is a late answer."""

        def accept(frame: cjt188.Frame) -> bool:
            if not (frame.is_reply and frame.address == address and frame.function == function):
                return False
            echoed = frame.data[-2] if frame.is_error else frame.data[2] if len(frame.data) > 2 else None
            return echoed == seq

        link = channel.bus.link
        if not isinstance(link, BusLink):
            raise TypeError(f"bus {channel.bus.bus_id} has no byte link")
        return await channel.transact(lambda: link.exchange(request, cjt188.StreamParser(), accept, channel.timeout))

    async def _current(self, channel: Channel, address: str) -> tuple[cjt188.CurrentData, datetime]:
        seq = next(self._seq) & 0xFF
        request = cjt188.read_request(address, self._meter_type, seq=seq)
        frame = await self._exchange(channel, request, address, cjt188.Function.READ, seq)
        answered_at = datetime.now(UTC)
        data = cjt188.parse_current_data(frame)
        if data.seq != seq:
            raise ProtocolError(f"reply carries sequence {data.seq}, not {seq}")
        return data, answered_at

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        data, sampled_at = await self._current(channel, meter.address)
        factor = TO_M3.get(data.unit)
        if factor is None:
            raise ProtocolError(f"meter {meter.meter_id} reports volume in {data.unit.name}, not a water unit")
        flags = {ReadingFlag.BATTERY_LOW} if data.status.battery_low else set()
        registers = {"water_volume_total": data.cumulative * factor}
        if self._clock_watch.due(meter.meter_id):
            # The meter's second had begun up to 1 s before it answered.
            offset = (data.meter_time.replace(tzinfo=self._tz) - sampled_at).total_seconds() + 0.5
            self._clock_watch.report(meter.meter_id, offset, registers, flags)
        return Reading.create(
            meter.meter_id,
            meter.utility,
            sampled_at,
            registers=registers,
            valve=CJT188_VALVES[data.status.valve],
            flags=frozenset(flags),
        )

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        open_valve = _VALVE_COMMANDS.get(request.kind)
        if open_valve is None:
            return unsupported(request.kind, "CJ/T 188")
        seq = next(self._seq) & 0xFF
        frame = cjt188.valve_request(meter.address, self._meter_type, open_valve=open_valve, seq=seq)
        reply = await self._exchange(channel, frame, meter.address, cjt188.Function.WRITE, seq)
        answer = cjt188.encode_frame(reply)
        try:
            cjt188.parse_valve_ack(reply)
        except DeviceError as err:
            return CommandOutcome(CommandStatus.FAILED, f"meter refused: {err}", frame, response_frame=answer)
        wanted = cjt188.ValveState.OPEN if open_valve else cjt188.ValveState.CLOSED

        async def state() -> cjt188.ValveState:
            return (await self._current(channel, meter.address))[0].status.valve

        valve, ok = await read_back(state, lambda v: v is wanted, self._confirm)
        if not ok:
            return CommandOutcome(
                CommandStatus.FAILED,
                f"accepted but the valve did not move (valve {CJT188_VALVES[valve].value})",
                frame,
                valve=CJT188_VALVES[valve],
                response_frame=answer,
            )
        return CommandOutcome(
            CommandStatus.CONFIRMED,
            "valve state read back matches",
            frame,
            valve=CJT188_VALVES[valve],
            response_frame=answer,
        )
