"""The HTTP API: routers (`routes`) and their bodies (`schemas`); the kit maps errors to problems."""
