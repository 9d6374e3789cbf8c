"""What touches the outside: one TCP server per bus speaking the wire protocols, the kept meter state file, and
the simulated estate that runs them (`Simulator`)."""
