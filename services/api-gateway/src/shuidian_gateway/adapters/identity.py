"""Users, sign-in with a back-off per user and a limit per address, rotating refresh-token families
and integrator API keys (gateway schema)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway.domain import security
from shuidian_gateway.domain.policy import Action, Principal, Role
from shuidian_gateway.errors import InvalidGrant, ObjectNotFound, PreconditionFailed, TooManyRequests
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.errors import Conflict

USER_COLUMNS = "user_id, username, role, estates, tenant_id, display_name, active, version, created_at, updated_at"
KEY_COLUMNS = "key_id, prefix, name, scopes, estates, created_by, created_at, revoked_at, last_used_at"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class Identity:
    def __init__(self, engine: AsyncEngine, settings: GatewaySettings) -> None:
        self._engine = engine
        self._settings = settings

    # -- users ---------------------------------------------------------------------------------
    async def create_user(
        self, username: str, password: str, role: Role, estates: list[str], tenant_id: str | None, display_name: str
    ) -> dict[str, Any]:
        password_hash = await security.hash_password_off_loop(password)
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        text(
                            "INSERT INTO gateway.users (user_id, username, password_hash, role, estates, tenant_id, display_name) "
                            f"VALUES (:id, :u, :h, :r, :e, :t, :d) RETURNING {USER_COLUMNS}"
                        ),
                        {
                            "id": uuid.uuid4(),
                            "u": username,
                            "h": password_hash,
                            "r": role.value,
                            "e": estates,
                            "t": tenant_id,
                            "d": display_name,
                        },
                    )
                ).one()
        except IntegrityError as err:
            raise Conflict(f"username {username!r} is taken") from err
        return row._asdict()

    async def user(self, user_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(f"SELECT {USER_COLUMNS} FROM gateway.users WHERE user_id = :id"), {"id": user_id}
                )
            ).first()
        if row is None:
            raise ObjectNotFound(f"no user {user_id}")
        return row._asdict()

    async def users(self, role: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT {USER_COLUMNS} FROM gateway.users WHERE (CAST(:r AS text) IS NULL OR role = :r) "
                    "ORDER BY username LIMIT :l OFFSET :o"
                ),
                {"r": role, "l": limit, "o": offset},
            )
            return [r._asdict() for r in rows]

    async def update_user(self, user_id: uuid.UUID, if_version: int | None, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `changes` (role, estates, tenant_id, display_name, active, password) under optimistic locking."""
        values = dict(changes)
        if "password" in values:
            values["password_hash"] = await security.hash_password_off_loop(values.pop("password"))
        if "role" in values:
            values["role"] = Role(values["role"]).value
        sets = ", ".join(f"{column} = :{column}" for column in values)
        async with self._engine.begin() as conn:
            current = (
                await conn.execute(
                    text("SELECT version FROM gateway.users WHERE user_id = :id FOR UPDATE"), {"id": user_id}
                )
            ).first()
            if current is None:
                raise ObjectNotFound(f"no user {user_id}")
            if if_version is not None and current.version != if_version:
                raise PreconditionFailed("the user changed since you read it; fetch it again")
            try:
                row = (
                    await conn.execute(
                        text(
                            f"UPDATE gateway.users SET {sets}{', ' if sets else ''}version = version + 1, updated_at = now() "
                            f"WHERE user_id = :id RETURNING {USER_COLUMNS}"
                        ),
                        {**values, "id": user_id},
                    )
                ).one()
            except IntegrityError as err:
                raise Conflict("a tenant user needs a tenant_id, and only tenant users have one") from err
            if values.get("active") is False or "password_hash" in values or "role" in values:
                await conn.execute(
                    text(
                        "UPDATE gateway.refresh_tokens SET revoked_at = now() WHERE user_id = :id AND revoked_at IS NULL"
                    ),
                    {"id": user_id},
                )
        return row._asdict()

    # -- login and tokens ----------------------------------------------------------------------
    async def count_attempt(self, address: str, now: datetime) -> None:
        """Count a sign-in attempt from `address` in this minute, in the database (the limit holds across
        replicas); TooManyRequests once the minute's attempts exceed GATEWAY_LOGIN_ATTEMPTS_PER_MINUTE."""
        minute = now.replace(second=0, microsecond=0)
        async with self._engine.begin() as conn:
            attempts = (
                await conn.execute(
                    text(
                        "INSERT INTO gateway.login_attempts (address, minute, attempts) VALUES (:a, :m, 1) "
                        "ON CONFLICT (address, minute) DO UPDATE SET attempts = gateway.login_attempts.attempts + 1 "
                        "RETURNING attempts"
                    ),
                    {"a": address, "m": minute},
                )
            ).scalar_one()
            if attempts == 1:  # the first attempt of a minute from an address clears minutes long gone
                await conn.execute(
                    text("DELETE FROM gateway.login_attempts WHERE minute < :old"),
                    {"old": minute - timedelta(minutes=2)},
                )
        if attempts > self._settings.login_attempts_per_minute:
            wait = 60 - (now - minute).total_seconds()
            raise TooManyRequests(
                "too many sign-in attempts from your address; slow down / 登录尝试过于频繁，请稍后再试",
                retry_after=max(1, math.ceil(wait)),
            )

    def backoff(self, failures: int) -> float:
        """Seconds a user must wait before the next attempt after `failures` failures in a row."""
        settings = self._settings
        if failures < settings.login_max_failures:
            return 0.0
        doublings = min(failures - settings.login_max_failures, 30)
        return float(min(settings.login_backoff_max_seconds, settings.login_backoff_seconds * 2**doublings))

    async def login(self, username: str, password: str, now: datetime) -> TokenPair:
        """Sign in. After GATEWAY_LOGIN_MAX_FAILURES failures in a row each further attempt of that user
        must wait a doubling delay (capped): an attempt during the wait is a 429 with Retry-After and is
        neither checked nor counted, so someone guessing cannot keep the user out for longer than the cap,
        and the right password after the wait signs in."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT user_id, password_hash, active, failed_logins, retry_at FROM gateway.users "
                        "WHERE username = :u"
                    ),
                    {"u": username},
                )
            ).first()
        if row is not None and row.retry_at is not None and row.retry_at > now:
            self._wait(row.retry_at, now)
        if row is not None and row.failed_logins >= self._settings.login_max_failures:
            # Claim this attempt: one attempt per wait, on every replica, however many arrive at once.
            # The next wait is set as if it fails; a success clears it.
            async with self._engine.begin() as conn:
                claimed = (
                    await conn.execute(
                        text(
                            "UPDATE gateway.users SET retry_at = :next WHERE user_id = :id "
                            "AND (retry_at IS NULL OR retry_at <= :now) RETURNING retry_at"
                        ),
                        {
                            "id": row.user_id,
                            "now": now,
                            "next": now + timedelta(seconds=self.backoff(row.failed_logins + 1)),
                        },
                    )
                ).first()
            if claimed is None:
                async with self._engine.connect() as conn:
                    retry_at = (
                        await conn.execute(
                            text("SELECT retry_at FROM gateway.users WHERE user_id = :id"), {"id": row.user_id}
                        )
                    ).scalar_one()
                self._wait(retry_at or now, now)
        ok = await security.verify_password_off_loop(row.password_hash if row else security.DUMMY_HASH, password)
        if row is None or not row.active:
            raise InvalidGrant("wrong username or password / 用户名或密码错误")
        async with self._engine.begin() as conn:
            if not ok:
                failures = (
                    await conn.execute(
                        text(
                            "UPDATE gateway.users SET failed_logins = failed_logins + 1 WHERE user_id = :id "
                            "RETURNING failed_logins"
                        ),
                        {"id": row.user_id},
                    )
                ).scalar_one()
                wait = self.backoff(failures)
                if wait:
                    await conn.execute(
                        text("UPDATE gateway.users SET retry_at = greatest(retry_at, :next) WHERE user_id = :id"),
                        {"id": row.user_id, "next": now + timedelta(seconds=wait)},
                    )
            else:
                await conn.execute(
                    text(
                        "UPDATE gateway.users SET failed_logins = 0, retry_at = NULL, locked_until = NULL "
                        "WHERE user_id = :id"
                    ),
                    {"id": row.user_id},
                )
        if not ok:
            raise InvalidGrant("wrong username or password / 用户名或密码错误")
        return await self._issue(row.user_id, uuid.uuid4(), now)

    @staticmethod
    def _wait(retry_at: datetime, now: datetime) -> None:
        seconds = max(1, math.ceil((retry_at - now).total_seconds()))
        raise TooManyRequests(
            f"too many failed sign-ins; try again in {seconds} s / 登录失败次数过多，请 {seconds} 秒后再试",
            retry_after=seconds,
        )

    async def refresh(self, refresh_token: str, now: datetime) -> TokenPair:
        """One-time use: the presented token is spent; presenting a spent one revokes its whole family."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT t.family_id, t.user_id, t.expires_at, t.used_at, t.revoked_at, u.active "
                        "FROM gateway.refresh_tokens t JOIN gateway.users u USING (user_id) "
                        "WHERE t.token_hash = :h FOR UPDATE OF t"
                    ),
                    {"h": security.digest(refresh_token)},
                )
            ).first()
            if row is None:
                raise InvalidGrant("unknown refresh token")
            if row.used_at is not None or row.revoked_at is not None:
                await conn.execute(
                    text(
                        "UPDATE gateway.refresh_tokens SET revoked_at = now() WHERE family_id = :f AND revoked_at IS NULL"
                    ),
                    {"f": row.family_id},
                )
                reused = row.used_at is not None
            else:
                reused = False
                await conn.execute(
                    text("UPDATE gateway.refresh_tokens SET used_at = now() WHERE token_hash = :h"),
                    {"h": security.digest(refresh_token)},
                )
        if reused:
            raise InvalidGrant("refresh token reuse detected; every session of this login is revoked, sign in again")
        if row.revoked_at is not None or row.expires_at <= now or not row.active:
            raise InvalidGrant("the refresh token has expired or was revoked; sign in again")
        return await self._issue(row.user_id, row.family_id, now)

    async def revoke(self, refresh_token: str) -> None:
        """Log out: revoke the family the token belongs to."""
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE gateway.refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND family_id = "
                    "(SELECT family_id FROM gateway.refresh_tokens WHERE token_hash = :h)"
                ),
                {"h": security.digest(refresh_token)},
            )

    async def _issue(self, user_id: uuid.UUID, family_id: uuid.UUID, now: datetime) -> TokenPair:
        user = await self.user(user_id)
        settings = self._settings
        access = security.encode_access_token(
            settings.jwt_secret.get_secret_value(),
            settings.jwt_issuer,
            user_id=str(user_id),
            role=user["role"],
            estates=tuple(user["estates"]),
            tenant_id=user["tenant_id"],
            now=now,
            ttl=timedelta(seconds=settings.access_token_seconds),
        )
        refresh = security.new_refresh_token()
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO gateway.refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES (:h, :f, :u, :e)"
                ),
                {
                    "h": security.digest(refresh),
                    "f": family_id,
                    "u": user_id,
                    "e": now + timedelta(seconds=settings.refresh_token_seconds),
                },
            )
        return TokenPair(access, refresh, settings.access_token_seconds)

    # -- API keys ------------------------------------------------------------------------------
    async def create_api_key(
        self, name: str, scopes: list[Action], estates: list[str], created_by: str
    ) -> tuple[str, dict[str, Any]]:
        minted = security.new_api_key()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO gateway.api_keys (key_id, prefix, key_hash, name, scopes, estates, created_by) "
                        f"VALUES (:id, :p, :h, :n, :s, :e, :c) RETURNING {KEY_COLUMNS}"
                    ),
                    {
                        "id": uuid.uuid4(),
                        "p": minted.prefix,
                        "h": minted.key_hash,
                        "n": name,
                        "s": [s.value for s in scopes],
                        "e": estates,
                        "c": created_by,
                    },
                )
            ).one()
        return minted.key, row._asdict()

    async def api_keys(self, limit: int, offset: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT {KEY_COLUMNS} FROM gateway.api_keys ORDER BY created_at DESC LIMIT :l OFFSET :o"),
                {"l": limit, "o": offset},
            )
            return [r._asdict() for r in rows]

    async def revoke_api_key(self, key_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE gateway.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = :id "
                        f"RETURNING {KEY_COLUMNS}"
                    ),
                    {"id": key_id},
                )
            ).first()
        if row is None:
            raise ObjectNotFound(f"no API key {key_id}")
        return row._asdict()

    async def api_key_principal(self, key: str) -> Principal | None:
        prefix = security.api_key_prefix(key)
        if prefix is None:
            return None
        # Read on every request, so a revocation takes effect on the next call; `last_used_at` is
        # written at most once a minute per key rather than on every call.
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "WITH k AS (SELECT key_id, scopes, estates, last_used_at FROM gateway.api_keys "
                        "  WHERE prefix = :p AND key_hash = :h AND revoked_at IS NULL), "
                        "touched AS (UPDATE gateway.api_keys a SET last_used_at = now() FROM k "
                        "  WHERE a.key_id = k.key_id AND a.revoked_at IS NULL "
                        "  AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')) "
                        "SELECT scopes, estates FROM k"
                    ),
                    {"p": prefix, "h": security.digest(key)},
                )
            ).first()
        if row is None:
            return None
        scopes = frozenset(Action(s) for s in row.scopes if s in Action._value2member_map_)
        return Principal("api_key", prefix, Role.INTEGRATOR, frozenset(row.estates), None, scopes)
