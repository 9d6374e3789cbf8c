"""Everything that touches the outside: SQL repositories, the MQTT evaluation path, notification channels."""
