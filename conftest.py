"""Repository-wide pytest set-up: real PostgreSQL and MQTT fixtures for every package's tests."""

pytest_plugins = ["shuidian_devstack.pytest_plugin"]
