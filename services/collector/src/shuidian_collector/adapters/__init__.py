"""Everything that touches the outside: the bus transport and protocol drivers, the pollers and the fleet, the local
store, the registry and device state in PostgreSQL, command execution, edge retention and the report query."""
