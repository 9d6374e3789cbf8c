"""Connectivity: gateway and meter offline alarms, the gateway as root cause of its meters' silence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.observations import GatewayStatus, Observation, Tick
from shuidian_alarm.domain.times import FUTURE_TOLERANCE, fresh, iso
from shuidian_shared.messages import AlarmSeverity, DeviceState

GATEWAY_OFFLINE: Final = "gateway_offline"
METER_OFFLINE: Final = "meter_offline"
CONNECTIVITY: Final = "connectivity"  # the slot of ConnectivityRule, which raises GATEWAY_OFFLINE and METER_OFFLINE


@dataclass(frozen=True, kw_only=True)
class ConnectivityRule:
    """Gateway and meter offline alarms for one gateway; while the gateway is down its meters raise nothing new."""

    kind: Literal["connectivity"] = "connectivity"
    gateway_grace: timedelta = timedelta(minutes=5)
    # Longer than the gateway's grace, so meters that go quiet just before their gateway is declared down wait.
    meter_grace: timedelta = timedelta(minutes=15)
    # After the gateway returns, meters get this long (more than a poll cycle) to report in before they alarm.
    settle: timedelta = timedelta(minutes=10)
    recover_after: timedelta = timedelta(minutes=2)  # online this long before an offline alarm clears
    gateway_severity: AlarmSeverity = AlarmSeverity.MAJOR
    meter_severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = CONNECTIVITY  # what a more specific scope overrides; it raises both offline types
    ticks: ClassVar[bool] = True  # matures with time alone: the service feeds it `Tick`s


@dataclass(frozen=True, kw_only=True)
class Link:
    """A gateway's or meter's last known reachability and whether its offline alarm is open."""

    online: bool
    since: datetime  # when it last changed
    last_at: datetime  # the newest observation taken in
    alarmed: bool = False


@dataclass(frozen=True, kw_only=True)
class ConnectivityState:
    """One gateway's link and its meters' links."""

    kind: Literal["connectivity"] = "connectivity"
    gateway_id: str | None = None
    gateway: Link | None = None
    meters: Mapping[str, Link] = field(default_factory=dict)


def _relink(link: Link | None, online: bool, at: datetime, now: datetime) -> Link | None:
    if link is None:
        return Link(online=online, since=at, last_at=at) if at <= now + FUTURE_TOLERANCE else None
    if not fresh(link.last_at, at, now):
        return link
    return replace(link, online=online, since=link.since if link.online == online else at, last_at=at)


def offline_decisions(
    rule: ConnectivityRule, state: ConnectivityState, now: datetime
) -> tuple[ConnectivityState, list[Decision]]:
    """One gateway alarm and no new meter alarms while it is down; meters still offline after it settles alarm."""
    decisions: list[Decision] = []
    gateway = state.gateway
    if gateway is not None and state.gateway_id is not None:
        if not gateway.online and not gateway.alarmed and now - gateway.since >= rule.gateway_grace:
            silent = sum(not m.online for m in state.meters.values())
            decisions.append(
                Raise(
                    state.gateway_id,
                    GATEWAY_OFFLINE,
                    rule.gateway_severity,
                    f"网关离线：其下 {len(state.meters)} 块表计无法抄读",
                    f"Gateway offline: its {len(state.meters)} meters cannot be read",
                    {"meters": f"{len(state.meters)}", "meters_offline": f"{silent}", "since": iso(gateway.since)},
                )
            )
            gateway = replace(gateway, alarmed=True)
        elif gateway.online and gateway.alarmed and now - gateway.since >= rule.recover_after:
            decisions.append(Clear(state.gateway_id, GATEWAY_OFFLINE))
            gateway = replace(gateway, alarmed=False)
    judge_meters = gateway is None or (gateway.online and now - gateway.since >= rule.settle)
    meters = dict(state.meters)
    for meter_id, link in sorted(state.meters.items()):
        if link.online and link.alarmed and now - link.since >= rule.recover_after:
            decisions.append(Clear(meter_id, METER_OFFLINE))
            meters[meter_id] = replace(link, alarmed=False)
        elif not link.online and not link.alarmed and judge_meters and now - link.since >= rule.meter_grace:
            decisions.append(
                Raise(
                    meter_id,
                    METER_OFFLINE,
                    rule.meter_severity,
                    "表计离线：网关在线但表计无应答",
                    "Meter offline: its gateway is up but the meter does not answer",
                    {"gateway_id": state.gateway_id or "", "since": iso(link.since)},
                )
            )
            meters[meter_id] = replace(link, alarmed=True)
    if not decisions:
        return state, []
    return replace(state, gateway=gateway, meters=meters), decisions


def on_connectivity(
    rule: ConnectivityRule, state: ConnectivityState, observation: Observation, now: datetime
) -> tuple[ConnectivityState, list[Decision]]:
    if isinstance(observation, GatewayStatus):
        if state.gateway_id not in (None, observation.gateway_id):
            return state, []
        gateway = _relink(state.gateway, observation.online, observation.at, now)
        state = replace(state, gateway_id=observation.gateway_id, gateway=gateway)
    elif isinstance(observation, DeviceState):
        if state.gateway_id not in (None, observation.gateway_id):
            return state, []
        link = _relink(state.meters.get(observation.meter_id), observation.online, observation.occurred_at, now)
        if link is not None:
            meters = {**state.meters, observation.meter_id: link}
            state = replace(state, gateway_id=observation.gateway_id, meters=meters)
    elif not isinstance(observation, Tick):
        return state, []
    return offline_decisions(rule, state, now)
