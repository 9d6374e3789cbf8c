"""shuidian_simulator."""
