"""One-time data steps (`gateway.data_steps`): a step that must run once against live services is recorded when
it is done, so every later start finds the record and does no work. Versioned: a changed step is a new version."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True)
class DataStep:
    name: str
    version: int


async def is_done(engine: AsyncEngine, step: DataStep) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT 1 FROM gateway.data_steps WHERE name = :name AND version = :version"),
            {"name": step.name, "version": step.version},
        )
        return found.first() is not None


async def record_done(engine: AsyncEngine, step: DataStep, outcome: str) -> None:
    """Mark `step` done (a second replica that ran it at the same start records nothing more)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO gateway.data_steps (name, version, outcome) VALUES (:name, :version, :outcome) "
                "ON CONFLICT (name, version) DO NOTHING"
            ),
            {"name": step.name, "version": step.version, "outcome": outcome},
        )
