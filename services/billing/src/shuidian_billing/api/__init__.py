"""Billing's HTTP routers and their request/response schemas; each route calls one adapter or domain function."""
