"""Which failures are worth retrying, and how long to wait between tries.

A transient failure is one the same work will get past once the world recovers: the database or
the broker unreachable or restarting, a dropped connection, a deadlock or serialization failure.
Anything else (a bug, a constraint violated by the message itself) fails the same way every time.
"""

from __future__ import annotations

import random

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shuidian_kit.errors import MqttUnavailable

# SQLSTATE classes and codes that a retry can cure: connection exceptions (08), serialization
# failure and deadlock (40001, 40P01), operator intervention / server shutting down (57P01-57P03),
# too many connections (53300), and "the database system is starting up".
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40001", "40P01", "57P", "53300")


def is_transient(err: BaseException) -> bool:
    for cause in _chain(err):
        if isinstance(cause, MqttUnavailable | OSError | TimeoutError | PoolTimeout | DisconnectionError):
            return True
        if isinstance(cause, OperationalError | InterfaceError):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return True
    return False


def _chain(err: BaseException) -> list[BaseException]:
    """The error, what it wraps (`orig`) and what it was raised from, without looping."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        cause = todo.pop()
        if cause is None or any(cause is s for s in seen):
            continue
        seen.append(cause)
        orig = getattr(cause, "orig", None)
        todo.extend([cause.__cause__, orig if isinstance(orig, BaseException) else None])
    return seen


def backoff(attempt: int, *, initial: float = 0.2, cap: float = 15.0) -> float:
    """Seconds before try `attempt + 1` (attempt ≥ 1): exponential with full jitter, capped."""
    return random.uniform(initial / 2, min(cap, initial * 2 ** (attempt - 1)))
