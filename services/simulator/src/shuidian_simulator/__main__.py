"""`python -m shuidian_simulator --estate FILE`: run the simulated estate until SIGINT/SIGTERM. The meters keep their
state (registers, money, relay …) in a file beside the estate, `<estate stem>.state.json` unless `--state-file` names
another, restored at start and saved every few seconds and at shutdown (`--no-state`: start from the seed values)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path

from shuidian_simulator.app import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--estate", type=Path, required=True, help="estate file (YAML or JSON)")
    parser.add_argument("--control-host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, default=8090)
    parser.add_argument("--ports-file", type=Path, help="write the bus endpoints here as JSON once listening")
    parser.add_argument(
        "--state-file",
        type=Path,
        help="where the meters keep their state (default: <estate stem>.state.json beside it)",
    )
    parser.add_argument("--no-state", action="store_true", help="keep no state: every start is from the seed values")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s simulator %(name)s: %(message)s")
    state_file = None if args.no_state else args.state_file or default_state_file(args.estate)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.estate, args.control_host, args.control_port, args.ports_file, state_file))


def default_state_file(estate_path: Path) -> Path:
    """Beside the estate: the demo's data directory for `make run`."""
    return estate_path.with_name(f"{estate_path.stem}.state.json")


if __name__ == "__main__":
    main()
