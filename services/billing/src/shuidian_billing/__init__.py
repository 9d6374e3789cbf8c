"""shuidian_billing."""
