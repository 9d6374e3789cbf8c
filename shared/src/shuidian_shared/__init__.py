"""Shuidian contracts: MQTT topics, message models, Money and units, settings bases (no I/O)."""
