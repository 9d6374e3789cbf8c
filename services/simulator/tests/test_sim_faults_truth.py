"""Faults (scripted and switched over the control API), ground truth and its consistency with the
registers the meters report, over real sockets with the project's DL/T 645 codec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_protocols import dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.api.control import create_control_app
from shuidian_simulator.errors import AddressRejected
from shuidian_simulator.estate import Estate, Fault, FaultKind

A1, A2, NEW = "000000000001", "000000000002", "000000000099"
ENERGY = 0x00010000


def estate(acceleration: int = 3600, gateway_faults: list[dict[str, Any]] | None = None, **meter: Any) -> Estate:
    meters = [
        {"id": "E-1", "address": A1, "initial_register": "500.00", **meter},
        {"id": "E-2", "address": A2, "initial_register": "10.00"},
    ]
    return Estate.model_validate(
        {
            "seed": 11,
            "acceleration": acceleration,
            "gateways": [
                {
                    "id": "gw",
                    "faults": gateway_faults or [],
                    "buses": [{"id": "bus", "baud": 9600, "reply_delay_ms": 10, "meters": meters}],
                }
            ],
        }
    )


OPEN: list[asyncio.StreamWriter] = []  # client connections the tests opened, closed after each test


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    for writer in OPEN:
        writer.close()
    OPEN.clear()


class Master:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.parser = dlt645.StreamParser()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes, timeout: float = 1.0) -> dlt645.Frame:
        if self.streams is None:
            self.streams = await asyncio.open_connection(*self.sim.bus_endpoint("bus"))
            OPEN.append(self.streams[1])
        reader, writer = self.streams
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    self.streams = None
                    raise ConnectionError("the gateway closed the connection")
                frames = self.parser.feed(chunk)
                if frames:
                    return frames[0]

    async def read(self, address: str, di: int, timeout: float = 1.0) -> dlt645.Value:
        frame = await self.exchange(dlt645.read_request(address, di), timeout)
        if di == 0x03300D00:
            return int(dlt645.parse_read_reply(frame, di)[::-1].hex())
        return dlt645.decode_value(di, dlt645.parse_read_reply(frame, di))

    async def energy(self, address: str = A1) -> Decimal:
        value = await self.read(address, ENERGY)
        assert isinstance(value, Decimal)
        return value


async def eventually(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------- faults on the wire


async def test_no_reply_drops_a_deterministic_share_of_requests() -> None:
    async with Simulator(estate(faults=[{"kind": "no_reply", "probability": "0.5"}])) as sim:
        master = Master(sim)
        answered = 0
        for _ in range(12):
            try:
                await master.energy()
                answered += 1
            except TimeoutError:
                pass
        assert 0 < answered < 12
        assert isinstance(await master.energy(A2), Decimal)  # the neighbour is unaffected


async def test_slow_replies_arrive_after_the_extra_delay() -> None:
    async with Simulator(estate(faults=[{"kind": "slow", "delay_ms": 300}])) as sim:
        master = Master(sim)
        started = time.perf_counter()
        await master.energy()
        assert time.perf_counter() - started >= 0.3
        with pytest.raises(TimeoutError):
            await master.read(A1, ENERGY, timeout=0.2)


async def test_scheduled_offline_window_starts_and_ends() -> None:
    # 3600× acceleration: simulated seconds 1800..3600 are real seconds 0.5..1.0.
    async with Simulator(estate(faults=[{"kind": "offline", "start": 1800, "end": 3600}])) as sim:
        master = Master(sim)
        assert isinstance(await master.energy(), Decimal)
        await eventually(lambda: sim.clock.sim_elapsed() >= 1800)
        with pytest.raises(TimeoutError):
            await master.read(A1, ENERGY, timeout=0.2)
        await eventually(lambda: sim.clock.sim_elapsed() >= 3600)
        assert isinstance(await master.energy(), Decimal)


async def test_scheduled_gateway_outage_drops_and_refuses_connections() -> None:
    async with Simulator(estate(gateway_faults=[{"kind": "offline", "start": 1800, "end": 3600}])) as sim:
        master = Master(sim)
        assert isinstance(await master.energy(), Decimal)
        await eventually(lambda: sim.clock.sim_elapsed() >= 1800)
        with pytest.raises(ConnectionError):
            await master.energy()
        await eventually(lambda: sim.clock.sim_elapsed() >= 3600)
        assert isinstance(await master.energy(), Decimal)


def test_gateways_take_only_offline_faults_and_windows_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="only `offline`"):
        estate(gateway_faults=[{"kind": "spike"}])
    with pytest.raises(ValueError, match="end after"):
        Fault(kind=FaultKind.SLOW, start=10, end=5)
    with pytest.raises(ValueError, match="12-digit"):
        Estate.model_validate(
            {"gateways": [{"id": "g", "buses": [{"id": "b", "meters": [{"id": "x", "address": "12"}]}]}]}
        )


async def test_status_words_show_battery_tamper_and_drift() -> None:
    async with Simulator(estate(faults=[{"kind": "clock_drift", "seconds": -3600}])) as sim:
        master = Master(sim)
        assert await master.read(A1, 0x03300D00) == 0
        sim.set_fault("E-1", Fault(kind=FaultKind.BATTERY_LOW))
        sim.set_fault("E-1", Fault(kind=FaultKind.TAMPER))
        word1 = await master.read(A1, 0x04000501)
        assert isinstance(word1, dlt645.StatusWord1)
        assert word1.clock_battery_low
        assert word1.reading_battery_low
        assert await master.read(A1, 0x03300D00) == 1
        clock = await master.read(A1, 0x04000102)
        beijing = (datetime.now(ZoneInfo("Asia/Shanghai")) - timedelta(hours=1)).time()
        assert isinstance(clock, dtime)
        gap = (clock.hour * 60 + clock.minute) - (beijing.hour * 60 + beijing.minute)
        assert gap % (24 * 60) in (0, 1, 24 * 60 - 1)  # an hour behind, give or take a minute boundary
        sim.clear_fault("E-1", FaultKind.BATTERY_LOW)
        word1 = await master.read(A1, 0x04000501)
        assert isinstance(word1, dlt645.StatusWord1)
        assert not word1.clock_battery_low


async def test_a_fast_meter_clock_refuses_a_command_that_has_not_expired_yet() -> None:
    async with Simulator(estate(faults=[{"kind": "clock_drift", "seconds": 3600}])) as sim:
        master = Master(sim)
        beijing = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0)
        for address, refused in ((A1, True), (A2, False)):
            request = dlt645.relay_control_request(address, dlt645.RelayCommand.TRIP, beijing + timedelta(minutes=5))
            reply = await master.exchange(request)
            if refused:
                with pytest.raises(dlt645.MeterErrorReply) as caught:
                    dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
                assert caught.value.error == dlt645.ErrorBits.OTHER
            else:
                dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        await eventually(lambda: sim.meter("E-2").relay_open)
        assert not sim.meter("E-1").relay_open


async def test_status_word_3_follows_alarm_and_keep_power_commands() -> None:
    async with Simulator(estate()) as sim:
        master = Master(sim)
        expiry = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0) + timedelta(minutes=5)
        for command in (dlt645.RelayCommand.ALARM_ON, dlt645.RelayCommand.KEEP_POWER_ON):
            reply = await master.exchange(dlt645.relay_control_request(A1, command, expiry))
            dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        word = await master.read(A1, 0x04000503)
        assert isinstance(word, dlt645.StatusWord3)
        assert (word.pre_trip_alarm, word.keep_power, word.relay_open) == (True, True, False)
        for command in (dlt645.RelayCommand.ALARM_OFF, dlt645.RelayCommand.KEEP_POWER_OFF):
            reply = await master.exchange(dlt645.relay_control_request(A1, command, expiry))
            dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        word = await master.read(A1, 0x04000503)
        assert isinstance(word, dlt645.StatusWord3)
        assert (word.pre_trip_alarm, word.keep_power) == (False, False)


async def test_broadcast_time_corrects_a_small_drift_only() -> None:
    async with Simulator(estate(faults=[{"kind": "clock_drift", "seconds": -120}])) as sim:
        sim.set_fault("E-2", Fault(kind=FaultKind.CLOCK_DRIFT, seconds=-3600))
        master = Master(sim)
        beijing = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
        request = dlt645.broadcast_time_request(beijing.replace(microsecond=0))
        with pytest.raises(TimeoutError):  # nobody answers a broadcast
            await master.exchange(request, timeout=0.3)
        now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
        assert abs((sim.meter("E-1").local_clock() - now).total_seconds()) < 2  # within 5 min: corrected
        assert abs((sim.meter("E-2").local_clock() - now).total_seconds() + 3600) < 2  # beyond: refused


# ---------------------------------------------------------------- register events and truth


def test_tariff_registers_follow_the_local_hour_and_money_follows_the_total() -> None:
    # 01:00-02:00 Beijing is valley (谷, tariff 4); 19:00-21:00 is sharp (尖, tariff 1).
    spec = estate(acceleration=1, prepaid_money="100.00", price="0.50")
    for hour, tariff in ((1, 3), (19, 0)):
        start = datetime(2026, 11, 25, hour, tzinfo=ZoneInfo("Asia/Shanghai"))
        meter = Simulator(spec.model_copy(update={"sim_start": start})).meters["E-1"]
        meter.advance(meter.clock.real_start + 3599)
        assert meter.exact > 0
        assert meter.tariffs[tariff] == meter.exact
        assert sum(meter.tariffs) == meter.exact
        assert meter.money == Decimal("100.00") - meter.exact * Decimal("0.50")
        assert meter.remaining_money == meter.money.quantize(Decimal("0.01"), rounding="ROUND_DOWN")


async def test_prepaid_money_register_on_the_wire_matches_the_truth() -> None:
    async with Simulator(estate(prepaid_money="30.00", price="0.80")) as sim:
        master = Master(sim)
        await asyncio.sleep(0.2)
        money = await master.read(A1, 0x00900200)
        exact = sim.meters["E-1"].exact  # the reply was computed at the last advance
        assert money == (Decimal("30.00") - exact * Decimal("0.80")).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
        with pytest.raises(dlt645.MeterErrorReply) as caught:  # E-2 is not a prepaid meter
            await master.read(A2, 0x00900200)
        assert caught.value.error == dlt645.ErrorBits.NO_DATA


async def test_rollover_wraps_at_999999_99_and_truth_keeps_counting() -> None:
    async with Simulator(estate(faults=[{"kind": "rollover", "value": "999999.95"}])) as sim:
        master = Master(sim)
        first = await master.energy()
        assert first >= Decimal("999999.95")
        await eventually(lambda: sim.meter("E-1").register < Decimal("999999.95"), timeout=10)
        wrapped = await master.energy()
        assert wrapped < Decimal(1)
        truth = sim.truth("E-1")
        assert truth["events"][0]["kind"] == "rollover"
        assert Decimal(str(truth["consumed"])) >= wrapped + Decimal("1000000") - first - Decimal("0.01")


async def test_replacement_restarts_the_register_at_a_new_address() -> None:
    async with Simulator(estate()) as sim:
        master = Master(sim)
        before = await master.energy()
        assert before >= Decimal(500)
        sim.set_fault("E-1", Fault(kind=FaultKind.REPLACEMENT, address=NEW))
        with pytest.raises(TimeoutError):
            await master.read(A1, ENERGY, timeout=0.3)  # the old meter is gone
        after = await master.energy(NEW)
        assert after < Decimal(5)
        event = sim.truth("E-1")["events"][0]
        assert (event["kind"], event["address_before"], event["address"]) == ("replacement", A1, NEW)
        with pytest.raises(AddressRejected, match="taken"):
            sim.set_fault("E-2", Fault(kind=FaultKind.REPLACEMENT, address=NEW))


async def test_ct_ratio_change_slows_the_register_and_truth_tells_by_how_much() -> None:
    async with Simulator(estate(ct_ratio="1")) as sim:
        sim.set_fault("E-1", Fault(kind=FaultKind.CT_RATIO, factor=Decimal(4)))
        master = Master(sim)
        start = await master.energy()
        since = sim.meters["E-1"].advanced_to_real  # truth intervals run from one read to the next
        await asyncio.sleep(0.5)
        end = await master.energy()
        until = sim.meters["E-1"].advanced_to_real  # reading the truth advances the meter again: leave that out
        truth = sim.truth("E-1", since=since, until=until)
        # Each interval's register advance is its consumption divided by the ratio (a Decimal division, so
        # compared as the same division: multiplying back can differ in the 28th digit).
        assert truth["intervals"]
        for interval in truth["intervals"]:
            assert Decimal(interval["registered"]) == Decimal(interval["quantity"]) / 4
        registered = sum(Decimal(i["registered"]) for i in truth["intervals"])
        assert abs((end - start) - registered) <= Decimal("0.02")


async def test_spike_and_leak_add_to_the_model_exactly() -> None:
    async with Simulator(estate(faults=[{"kind": "spike", "factor": "3"}, {"kind": "leak", "rate": "2"}])) as sim:
        await asyncio.sleep(0.3)
        meter = sim.meter("E-1")
        for interval in meter.truth:
            sim_from, sim_to = sim.clock.sim_now(interval.real_from), sim.clock.sim_now(interval.real_to)
            parts = meter.model.integrate(sim_from, sim_to)
            expected = sum((q * 3 + 2 * fraction for _, fraction, q in parts), Decimal(0))
            assert interval.quantity == expected


async def test_register_deltas_equal_the_truth_between_polls() -> None:
    async with Simulator(estate(acceleration=7200)) as sim:
        master = Master(sim)
        meter = sim.meters["E-1"]
        previous, since = await master.energy(), meter.advanced_to_real
        for _ in range(5):
            await asyncio.sleep(0.1)
            current = await master.energy()
            until = meter.advanced_to_real  # the instant the meter computed this reply
            truth = meter.consumed_between(since, until)
            assert truth > 0
            assert abs(current - previous - truth) < Decimal("0.01")  # both readings truncate to 0.01
            previous, since = current, until
        assert abs(meter.register - Decimal(500) - meter.exact) <= Decimal("0.01")
        assert abs(sum(meter.tariffs) - meter.exact) <= Decimal("1e-20")


@settings(max_examples=30, deadline=None)
@given(offsets=st.lists(st.floats(min_value=0, max_value=86_400 * 3), min_size=1, max_size=8))
def test_consumption_is_a_pure_function_of_seed_and_simulated_time(offsets: list[float]) -> None:
    spec = estate(acceleration=1).model_copy(update={"sim_start": datetime(2026, 11, 25, tzinfo=UTC)})
    a, b = Simulator(spec), Simulator(spec)
    for offset in sorted(offsets):  # b jumps straight to the end, a gets there in steps
        a.meters["E-1"].advance(a.clock.real_start + offset)
    b.meters["E-1"].advance(b.clock.real_start + max(offsets))
    # Hour fractions are rounded to the microsecond, so stepwise and one-go integration agree to ~1e-9.
    assert abs(a.meters["E-1"].exact - b.meters["E-1"].exact) <= Decimal("1e-6")


async def test_a_value_beyond_the_register_leaves_the_meter_silent_not_the_bus_dead() -> None:
    async with Simulator(estate(prepaid_money="5000000")) as sim:
        master = Master(sim)
        with pytest.raises(TimeoutError):
            await master.read(A1, 0x00900200, timeout=0.3)
        assert isinstance(await master.energy(), Decimal)


# ---------------------------------------------------------------- control API


async def test_control_api_switches_faults_and_serves_truth() -> None:
    async with Simulator(estate()) as sim:
        transport = httpx.ASGITransport(app=create_control_app(sim))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
            master = Master(sim)
            put = await http.put("/meters/E-1/faults/offline")
            assert put.status_code == 200
            assert put.json()["active_faults"] == ["offline"]
            with pytest.raises(TimeoutError):
                await master.read(A1, ENERGY, timeout=0.3)
            assert (await http.delete("/meters/E-1/faults/offline")).status_code == 200
            assert isinstance(await master.energy(), Decimal)
            leak = await http.put("/meters/E-1/faults/leak", json={"kind": "leak", "rate": "1.5", "start": 0})
            assert leak.json()["faults"] == ["leak"]
            mismatch = await http.put("/meters/E-1/faults/leak", json={"kind": "spike"})
            assert mismatch.status_code == 409
            assert mismatch.headers["content-type"] == "application/problem+json"
            bad = await http.put("/meters/E-1/faults/slow", json={"kind": "slow", "delay_ms": -5})
            assert bad.status_code == 422
            missing = await http.get("/meters/nope")
            assert missing.status_code == 404
            assert missing.json()["code"] == "not_found"
            assert (await http.put("/gateways/nope/offline")).status_code == 404
            assert (await http.put("/gateways/gw/offline")).json()["state"] == "offline"
            with pytest.raises((ConnectionError, TimeoutError)):
                await Master(sim).energy()
            await http.delete("/gateways/gw/offline")
            assert isinstance(await Master(sim).energy(), Decimal)
            truth = (await http.get("/truth/meters/E-1", params={"since": 0})).json()
            assert Decimal(truth["consumed"]) > 0
            assert truth["intervals"]
            for address in ("12", NEW[:-1] + "A", A2):
                rejected = await http.put(
                    "/meters/E-1/faults/replacement", json={"kind": "replacement", "address": address}
                )
                assert rejected.status_code == 409
                assert rejected.json()["code"] == "address_rejected"
            assert sim.meter("E-1").address == A1
            everything = (await http.get("/truth")).json()
            assert set(everything) == {"E-1", "E-2"}
