"""Meter and gateway simulator speaking the real wire protocols over TCP (dev/test only)."""

from shuidian_simulator.adapters.simulator import Simulator

__all__ = ["Simulator"]
