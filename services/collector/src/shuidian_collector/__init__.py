"""Shuidian collector: reads meters through field gateways and executes device commands."""
