"""Meter and gateway simulator speaking the real wire protocols over TCP (dev/test only)."""

from shuidian_simulator.simulator import Simulator

__all__ = ["Simulator"]
