"""Poll scheduling, gateway health and the bus gate: pure logic, time passed in."""

from __future__ import annotations

import asyncio
import random

import pytest

from shuidian_collector.adapters.transport import BusGate
from shuidian_collector.domain.schedule import Edge, GatewayHealth, MeterSchedule


def test_every_meter_is_due_at_start_and_keeps_its_cadence() -> None:
    schedule = MeterSchedule({"a": 10.0, "b": 60.0}, max_backoff=3600, now=100.0)
    assert sorted(schedule.due(100.0)) == ["a", "b"]
    schedule.answered("a", 103.0)  # a slow cycle does not push the next due time back
    schedule.answered("b", 103.0)
    assert schedule.due_at("a") == 110.0
    assert schedule.due(109.9) == []
    assert schedule.due(110.0) == ["a"]
    assert schedule.next_due() == 110.0


def test_a_late_cycle_does_not_queue_up_missed_polls() -> None:
    schedule = MeterSchedule({"a": 10.0}, max_backoff=3600, now=0.0)
    schedule.answered("a", 95.0)
    assert schedule.due_at("a") == 95.0  # due now, once — not nine times


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (9, 2560.0), (10, 3600.0), (30, 3600.0)],
)
def test_a_dead_meter_backs_off_exponentially_up_to_the_cap(failures: int, expected: float) -> None:
    schedule = MeterSchedule({"dead": 10.0}, max_backoff=3600, now=0.0)
    for _ in range(failures):
        schedule.failed("dead", 0.0)
    assert schedule.due_at("dead") == expected
    assert schedule.failures("dead") == failures


def test_an_answer_ends_the_back_off() -> None:
    schedule = MeterSchedule({"m": 10.0}, max_backoff=3600, now=0.0)
    for _ in range(5):
        schedule.failed("m", 0.0)
    schedule.answered("m", 200.0)
    assert schedule.failures("m") == 0
    assert schedule.due_at("m") == 200.0


def test_all_failing_needs_every_meter_to_have_failed_its_last_attempt() -> None:
    schedule = MeterSchedule({"a": 10.0, "b": 10.0}, max_backoff=3600, now=0.0)
    assert not schedule.all_failing()
    schedule.failed("a", 0.0)
    assert not schedule.all_failing()  # b was never tried: not evidence of a dead gateway
    schedule.failed("b", 0.0)
    assert schedule.all_failing()
    schedule.restart(5.0)
    assert not schedule.all_failing()
    assert sorted(schedule.due(5.0)) == ["a", "b"]


def test_gateway_health_emits_one_edge_per_change() -> None:
    health = GatewayHealth(initial_backoff=1.0, max_backoff=8.0)
    rng = random.Random(1)
    assert health.observe(answered=True, all_failing=False, now=0, rng=rng) is Edge.ONLINE
    assert health.observe(answered=True, all_failing=False, now=1, rng=rng) is None
    assert health.observe(answered=False, all_failing=False, now=2, rng=rng) is None  # some meters still fine
    assert health.observe(answered=False, all_failing=True, now=3, rng=rng) is Edge.OFFLINE
    waits = []
    for probe in range(6):
        assert health.observe(answered=False, all_failing=True, now=10.0 * probe, rng=rng) is None
        waits.append(health.retry_at - 10.0 * probe)
    ceilings = [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    assert health.observe(answered=True, all_failing=False, now=99, rng=rng) is Edge.ONLINE
    assert health.probes == 0


async def test_the_gate_lets_one_holder_in_and_serves_the_smallest_key_next() -> None:
    gate = BusGate()
    order: list[str] = []
    inside = 0

    async def job(name: str, key: tuple[int, int]) -> None:
        nonlocal inside
        async with gate.turn(key):
            inside += 1
            assert inside == 1, "two exchanges on the line at once"
            order.append(name)
            await asyncio.sleep(0.001)
            inside -= 1

    first = asyncio.create_task(job("poll-1", (1, 1)))
    await asyncio.sleep(0)  # poll-1 holds the line
    rest = [
        asyncio.create_task(job("poll-2", (1, 2))),
        asyncio.create_task(job("poll-3", (1, 3))),
        asyncio.create_task(job("command", (0, 9))),
    ]
    await asyncio.gather(first, *rest)
    assert order == ["poll-1", "command", "poll-2", "poll-3"]


async def test_a_cancelled_waiter_does_not_block_the_gate() -> None:
    gate = BusGate()
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.turn((1, 0)):
            await release.wait()

    async def waiter() -> None:
        async with gate.turn((1, 1)):
            pass

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await held
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with asyncio.timeout(1):
        async with gate.turn((1, 2)):
            pass
    assert gate.waiting == 0


def test_a_meter_answering_before_its_back_off_ran_out_keeps_its_interval() -> None:
    """The probe that finds a gateway back asks a meter whose back-off is long: it is due one interval later."""
    schedule = MeterSchedule({"m": 10.0}, max_backoff=3600, now=0.0)
    for at in (0.0, 1.0, 2.0, 3.0):
        schedule.failed("m", at)  # due at 3 + 80
    schedule.answered("m", 4.0)
    assert schedule.due_at("m") == 14.0
