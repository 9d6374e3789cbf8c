"""The live hub on its own (a fake clock, no sockets): which frames it keeps for resumption, and
that a resumption it cannot complete is refused rather than partial."""

from __future__ import annotations

import functools
import json

import pytest
from pydantic import ValidationError

from shuidian_gateway.adapters.live import Frame, LiveClient, LiveHub
from shuidian_gateway.domain.policy import Scope
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.testing import balance_event, meter_state
from shuidian_shared.contracts.insights import MonthlyReportReady
from shuidian_shared.messages import BalanceEvent, BalanceLevel, DeviceState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_balance = functools.partial(balance_event, level=BalanceLevel.LOW_1, balance="1.50")


def _scope(tenant: str, accounts: set[str], meters: frozenset[str] | set[str] = frozenset()) -> Scope:
    return Scope(tenant, frozenset(accounts), frozenset(), frozenset(meters))


def _drain(client: LiveClient) -> list[Frame]:
    frames: list[Frame] = []
    while not client.queue.empty():
        frame = client.queue.get_nowait()
        assert frame is not None
        frames.append(frame)
    return frames


async def _send(hub: LiveHub, *messages: BalanceEvent | DeviceState) -> None:
    for message in messages:
        await hub.on_message(message, "topic")


A = _scope("T-A", {"A-A"}, {"M-A"})


async def test_frames_nobody_watches_are_neither_kept_nor_sent() -> None:
    hub = LiveHub(60.0, 100, Clock())
    await _send(hub, *(_balance(f"A-{n}", n) for n in range(50)), meter_state("M-X"))
    assert (hub.held, hub.watched) == (0, 0)  # the city's traffic does not fill the buffer
    client, start = hub.connect(A)
    await _send(hub, _balance("A-B", 1), _balance("A-A", 1), meter_state("M-A"), meter_state("M-B"))
    got = _drain(client)
    assert [f.kind for f in got] == ["balance", "meter_state"]
    assert [json.loads(f.data).get("account_id") or json.loads(f.data)["meter_id"] for f in got] == ["A-A", "M-A"]
    assert json.loads(got[0].data)["balance"] == "1.50"
    assert hub.held == 2
    assert start == 51  # ids count every message, kept or not


async def test_a_resumption_within_the_bounds_replays_exactly_what_was_missed() -> None:
    clock = Clock()
    hub = LiveHub(60.0, 100, clock)
    client, _ = hub.connect(A)
    await _send(hub, _balance("A-A", 1))
    [seen] = _drain(client)
    hub.disconnect(client)
    clock.now += 30  # away, within the resume window
    missed: list[BalanceEvent | DeviceState] = [_balance("A-A", 2), _balance("A-B", 2), meter_state("M-A")]
    await _send(hub, *missed)
    after = hub.resume_point(hub.event_id(seen.seq), A)
    assert after == seen.seq
    again, start = hub.connect(A, after)
    replayed = [json.loads(f.data)["message_id"] for f in _drain(again)]
    assert start == seen.seq
    assert replayed == [str(missed[0].message_id), str(missed[2].message_id)]


async def test_a_resumption_past_the_memory_bound_is_refused_not_partial() -> None:
    hub = LiveHub(60.0, 3, Clock())
    client, start = hub.connect(A)
    hub.disconnect(client)
    await _send(hub, *(_balance("A-A", n) for n in range(4)))  # one more than is held
    assert hub.held == 3
    assert hub.resume_point(hub.event_id(start), A) is None
    # Another tenant whose frames were not evicted can still resume from the same point.
    other = _scope("T-B", {"A-B"})
    b, b_start = hub.connect(other)
    hub.disconnect(b)
    await _send(hub, _balance("A-B", 1))
    assert hub.resume_point(hub.event_id(b_start), other) == b_start


async def test_frames_older_than_the_window_are_dropped_and_resumption_refused() -> None:
    clock = Clock()
    hub = LiveHub(10.0, 100, clock)
    client, start = hub.connect(A)
    await _send(hub, _balance("A-A", 1))
    clock.now += 11
    await _send(hub, meter_state("M-A"))  # the first frame is now too old to hold
    assert hub.held == 1
    assert hub.resume_point(hub.event_id(start), A) is None
    [evicted, latest] = _drain(client)
    # A client that had the evicted frame misses only what is still held: it resumes.
    assert hub.resume_point(hub.event_id(evicted.seq), A) == evicted.seq
    assert hub.resume_point(hub.event_id(latest.seq), A) == latest.seq


async def test_a_tenant_away_longer_than_the_window_is_forgotten() -> None:
    clock = Clock()
    hub = LiveHub(10.0, 100, clock)
    client, start = hub.connect(A)
    hub.disconnect(client)
    clock.now += 9
    await _send(hub, _balance("A-A", 1))  # still kept: the tenant may come back
    assert (hub.held, hub.watched) == (1, 2)
    clock.now += 2
    await _send(hub, _balance("A-A", 2))  # gone too long: no longer watched, not kept
    assert hub.watched == 0
    assert hub.resume_point(hub.event_id(start), A) is None


async def test_ids_gained_by_a_new_lease_resume_only_from_when_they_were_watched() -> None:
    hub = LiveHub(60.0, 100, Clock())
    client, start = hub.connect(A)
    await _send(hub, meter_state("M-NEW"))  # before the lease: nobody watched it
    wider = _scope("T-A", {"A-A"}, {"M-A", "M-NEW"})
    hub.rescope(client, wider)
    await _send(hub, meter_state("M-NEW"))
    [frame] = _drain(client)
    assert json.loads(frame.data)["meter_id"] == "M-NEW"
    hub.disconnect(client)
    assert hub.resume_point(hub.event_id(start), wider) is None  # M-NEW's first state was never held
    assert hub.resume_point(hub.event_id(frame.seq - 1), wider) == frame.seq - 1
    hub.rescope(client, A)  # a stale client changing scope changes nothing
    assert hub.clients == 0


async def test_a_lease_ended_stops_the_frames_of_its_ids() -> None:
    hub = LiveHub(60.0, 100, Clock())
    client, _ = hub.connect(A)
    hub.rescope(client, _scope("T-A", {"A-A"}))
    await _send(hub, meter_state("M-A"), _balance("A-A", 1))
    assert [f.kind for f in _drain(client)] == ["balance"]
    assert hub.watched == 1


@pytest.mark.parametrize("last_event_id", [None, "", "garbage", "0000-1", "ffffffff-x"])
async def test_ids_from_elsewhere_do_not_resume(last_event_id: str | None) -> None:
    hub = LiveHub(60.0, 100, Clock())
    hub.connect(A)
    assert hub.resume_point(last_event_id, A) is None
    assert hub.resume_point(hub.event_id(5), A) is None  # from the future


async def test_closing_ends_connected_and_later_clients() -> None:
    hub = LiveHub(60.0, 100, Clock())
    client, _ = hub.connect(A)
    hub.close()
    late, _ = hub.connect(A)
    assert client.queue.get_nowait() is None
    assert late.queue.get_nowait() is None


@pytest.mark.parametrize("seconds", [4, 121, 600])
def test_a_ticket_lifetime_beyond_two_minutes_is_refused(seconds: int) -> None:
    with pytest.raises(ValidationError, match="live_ticket_seconds"):
        GatewaySettings(environment="dev", live_ticket_seconds=seconds)
    assert GatewaySettings(environment="dev").live_ticket_seconds == 30


async def test_a_monthly_report_reaches_only_its_households_tenant() -> None:
    hub = LiveHub(60.0, 100, Clock())
    client, _ = hub.connect(A)

    def report(account: str) -> MonthlyReportReady:
        return MonthlyReportReady(
            source="insights-test",
            account_id=account,
            tenant_id=None,
            estate_id="E-1",
            room_id="R-1",
            month="2026-11",
            usage=(),
            title_zh="11月用能报告",
            body_zh="本月用电 120 度",
            title_en="November report",
            body_en="120 kWh this month",
            report_path=f"/v1/me/accounts/{account}/insights",
        )

    await hub.on_message(report("A-B"), "topic")
    await hub.on_message(report("A-A"), "topic")
    [frame] = _drain(client)
    assert frame.kind == "monthly_report"
    assert json.loads(frame.data)["account_id"] == "A-A"
