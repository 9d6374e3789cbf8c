"""The control API (FastAPI): faults, gateways, truth."""
