"""`make bench`: every benchmark, one JSON object per line (name, value, unit, target, ok, context).

Each `bench_<area>.py` module in this package exposes `async def run(database_url, mqtt_url)` and is
picked up here; `python -m shuidian_devstack.bench billing control` runs only the named areas.
Each figure is the median of several runs, reported with min/max and the CPU it was measured on;
ratios are computed from figures measured in the same run.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys

import shuidian_devstack
from shuidian_devstack.benchkit import infrastructure


def areas() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(shuidian_devstack.__path__)
        if m.name.startswith("bench_")
    )


async def main(selected: list[str]) -> None:
    unknown = set(selected) - set(areas())
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; known: {areas()}")
    for area in selected or areas():
        module = importlib.import_module(f"shuidian_devstack.bench_{area}")
        async with infrastructure() as (database_url, mqtt_url):
            await module.run(database_url, mqtt_url)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
