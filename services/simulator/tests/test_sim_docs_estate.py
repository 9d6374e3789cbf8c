"""The estate example in docs/simulator.md is a valid estate that the simulator serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate, FaultKind, Protocol

DOC = Path(__file__).resolve().parents[3] / "docs" / "simulator.md"


def documented_estate() -> Estate:
    match = re.search(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert match is not None, "docs/simulator.md lost its estate example"
    return Estate.model_validate(yaml.safe_load(match.group(1)))


async def test_the_documented_estate_runs_every_protocol() -> None:
    estate = documented_estate()
    protocols = {b.protocol for g in estate.gateways for b in g.buses}
    assert protocols == set(Protocol)
    kinds = {f.kind for g in estate.gateways for b in g.buses for m in b.meters for f in m.faults}
    assert kinds <= set(FaultKind)
    async with Simulator(estate) as sim:
        endpoints = sim.endpoints()
        assert set(endpoints) == {b.id for g in estate.gateways for b in g.buses}
        assert all(isinstance(e["port"], int) and e["port"] > 0 for e in endpoints.values())
