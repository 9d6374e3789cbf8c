"""Everything billing does against the outside: SQL, MQTT handlers and publishers, background jobs,
payment providers' HTTP. `billing.Billing` gathers the core pieces; `app.py` builds them at start."""
