"""The HTTP API: routers (`routes`), their bodies (`schemas`) and the mapping of errors to problems."""
