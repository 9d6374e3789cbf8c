"""Container health check: the service answers on its readiness route (the simulator: its bus list)."""

import os
import sys
import urllib.request

DEFAULT_PORTS = {"gateway": 8000, "collector": 8001, "billing": 8002, "control": 8003, "alarm": 8004, "insights": 8005}

service = os.environ["SERVICE"]
if service == "simulator":
    url = f"http://127.0.0.1:{os.environ.get('SIMULATOR_CONTROL_PORT', '8090')}/buses"
else:
    port = os.environ.get(f"{service.upper()}_HTTP_PORT", str(DEFAULT_PORTS[service]))
    url = f"http://127.0.0.1:{port}/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as err:
    sys.stderr.write(f"{url}: {err}\n")
    sys.exit(1)
