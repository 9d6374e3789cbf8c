"""Alembic environment for the insights schema."""

from alembic import context

from shuidian_kit.migrations import run_env

run_env(context)
