"""Composition root of the simulator process: the simulated estate (every bus listening) and its control API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import uvicorn

from shuidian_simulator.adapters.simulator import Simulator, event_loop_later
from shuidian_simulator.api.control import create_control_app
from shuidian_simulator.estate import Estate


async def run(
    estate_path: Path, control_host: str, control_port: int, ports_file: Path | None, state_file: Path | None = None
) -> None:
    estate = Estate.load(estate_path)
    # The wall clock and the event loop's timer drive the meters (the domain reads neither itself).
    async with Simulator(estate, state_file=state_file, real=time.time, later=event_loop_later) as sim:
        if ports_file is not None:
            await asyncio.to_thread(ports_file.write_text, json.dumps(sim.endpoints(), indent=2))
        # uvicorn handles SIGINT/SIGTERM: serve() returns and the buses close with the block.
        config = uvicorn.Config(create_control_app(sim), host=control_host, port=control_port, log_config=None)
        await uvicorn.Server(config).serve()
