"""What touches the outside: backend HTTP clients, the identity and idempotency stores, webhook delivery, the
live hub, read caches, and the fake backends the tests serve."""
