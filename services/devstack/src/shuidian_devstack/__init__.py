"""Dev/test stack: embedded PostgreSQL and MQTT broker, `make run` orchestration, pytest fixtures."""
