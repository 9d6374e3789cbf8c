"""Insights' adapters: the reading archive, households, billing's HTTP API, analysis runs and jobs."""
