"""The pieces `app.py` builds at start, handed to the routes as one typed object (`app.state.collector`)."""

from __future__ import annotations

from dataclasses import dataclass

from shuidian_collector.adapters.command_executor import Commands
from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.fleet import Fleet
from shuidian_collector.adapters.registry import Registry
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.settings import CollectorSettings
from shuidian_kit.service import Runtime


@dataclass(frozen=True)
class Container:
    settings: CollectorSettings
    runtime: Runtime
    registry: Registry
    store: LocalStore
    states: DeviceStates
    commands: Commands
    fleet: Fleet
