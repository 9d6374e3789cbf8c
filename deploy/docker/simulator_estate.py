"""Write the simulator's demo estate for a container: every bus on a fixed port, listening on all addresses.

python3 simulator_estate.py PATH     (SIMULATOR_BUS_BASE_PORT, default 9100: the first bus's port)
"""

import os
import sys
from pathlib import Path

from shuidian_simulator.demo import demo_estate

base_port = int(os.environ.get("SIMULATOR_BUS_BASE_PORT", "9100"))
estate = demo_estate(
    buildings=int(os.environ.get("SIMULATOR_BUILDINGS", "2")),
    rooms_per_building=int(os.environ.get("SIMULATOR_ROOMS_PER_BUILDING", "20")),
    acceleration=int(os.environ.get("SIMULATOR_ACCELERATION", "360")),
)
port = base_port
gateways = []
for gateway in estate.gateways:
    buses = []
    for bus in gateway.buses:
        buses.append(bus.model_copy(update={"port": port}))
        port += 1
    gateways.append(gateway.model_copy(update={"host": "0.0.0.0", "buses": tuple(buses)}))
Path(sys.argv[1]).write_text(estate.model_copy(update={"gateways": tuple(gateways)}).model_dump_json(indent=2))
