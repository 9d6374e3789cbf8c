"""shuidian_gateway."""
