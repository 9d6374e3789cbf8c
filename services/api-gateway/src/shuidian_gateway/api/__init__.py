"""The routers and their request/response schemas: thin, each parses, calls one adapter, answers."""
