"""`python -m shuidian_simulator --estate FILE`: run the simulated estate until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from pathlib import Path

import uvicorn

from shuidian_simulator.control_api import create_control_app
from shuidian_simulator.estate import Estate
from shuidian_simulator.simulator import Simulator


async def run(estate_path: Path, control_host: str, control_port: int, ports_file: Path | None) -> None:
    estate = Estate.load(estate_path)
    async with Simulator(estate) as sim:
        if ports_file is not None:
            await asyncio.to_thread(ports_file.write_text, json.dumps(sim.endpoints(), indent=2))
        # uvicorn handles SIGINT/SIGTERM: serve() returns and the buses close with the block.
        config = uvicorn.Config(create_control_app(sim), host=control_host, port=control_port, log_config=None)
        await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--estate", type=Path, required=True, help="estate file (YAML or JSON)")
    parser.add_argument("--control-host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, default=8090)
    parser.add_argument("--ports-file", type=Path, help="write the bus endpoints here as JSON once listening")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s simulator %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.estate, args.control_host, args.control_port, args.ports_file))


if __name__ == "__main__":
    main()
