"""Shuidian API gateway: the public edge for tenants, staff and integrators."""
