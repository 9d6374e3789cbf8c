"""The simulated field without I/O: meter physics (registers, relay, faults, truth) and the consumption model."""
