"""Logging set-up: one line per event, service and instance in every line."""

from __future__ import annotations

import logging
import sys


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that says nothing an operator needs.
    for noisy in ("aiomqtt", "amqtt", "transitions", "pymodbus", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
