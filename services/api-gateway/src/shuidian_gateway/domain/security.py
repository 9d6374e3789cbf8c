"""Credentials as pure functions: password hashing (argon2id), access tokens (JWT HS256), opaque
refresh tokens and API keys (random, stored as SHA-256), short-lived single-use live-stream tickets (JWT), webhook
signatures (HMAC-SHA256) and webhook secrets sealed at rest (AES-256-GCM)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_hasher = PasswordHasher()
# Verified when the username does not exist, so a miss costs as much time as a wrong password.
DUMMY_HASH = _hasher.hash("no-such-user-" + secrets.token_hex(8))
API_KEY_PREFIX = "sk"
ALGORITHM = "HS256"


class InvalidToken(ValueError):
    """An access token that is malformed, forged, expired or of the wrong type."""


# The KDF runs on threads of its own: on the loop's shared default executor, sign-ins would queue
# behind slow DNS lookups (a webhook to a host that does not resolve holds a thread for seconds).
_kdf_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="argon2")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_off_loop(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_kdf_threads, hash_password, password)


async def verify_password_off_loop(password_hash: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_kdf_threads, verify_password, password_hash, password)


def digest(token: str) -> str:
    """Refresh tokens and API keys are 256-bit random strings: a plain SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class MintedKey:
    key: str  # shown once: sk_<prefix>_<secret>
    prefix: str
    key_hash: str


def new_api_key() -> MintedKey:
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return MintedKey(key, prefix, digest(key))


def api_key_prefix(key: str) -> str | None:
    """The public prefix of something that looks like an API key, else None."""
    parts = key.split("_", 2)
    if len(parts) == 3 and parts[0] == API_KEY_PREFIX and len(parts[1]) == 8:
        return parts[1]
    return None


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    role: str
    estates: tuple[str, ...]
    tenant_id: str | None
    expires_at: datetime


def encode_access_token(
    secret: str,
    issuer: str,
    *,
    user_id: str,
    role: str,
    estates: tuple[str, ...],
    tenant_id: str | None,
    now: datetime,
    ttl: timedelta,
) -> str:
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": user_id,
        "typ": "access",
        "role": role,
        "estates": list(estates),
        "tid": tenant_id,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_access_token(secret: str, issuer: str, token: str, *, now: datetime) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False},
        )
    except jwt.PyJWTError as err:
        raise InvalidToken(str(err)) from err
    if claims.get("typ") != "access" or not isinstance(claims.get("role"), str):
        raise InvalidToken("not an access token")
    if int(claims["exp"]) <= now.timestamp():
        raise InvalidToken("the access token has expired")
    estates = claims.get("estates") or []
    tenant_id = claims.get("tid")
    return AccessClaims(
        user_id=str(claims["sub"]),
        role=claims["role"],
        estates=tuple(str(e) for e in estates),
        tenant_id=str(tenant_id) if tenant_id is not None else None,
        expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo),
    )


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """`Shuidian-Signature: t=<unix>,v1=<hex>` where hex = HMAC-SHA256(secret, "<unix>.<body>")."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """What a receiver does: recompute the signature and refuse stale timestamps (replays)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), header)


# -- live-stream tickets -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveTicketClaims:
    user_id: str
    tenant_id: str
    ticket_id: str  # `jti`: the gateway records it on first use, so a ticket opens one stream
    expires_at: datetime


def encode_live_ticket(secret: str, issuer: str, *, user_id: str, tenant_id: str, now: datetime, ttl: timedelta) -> str:
    """A short-lived, single-use credential for `/v1/me/live?ticket=`, the event stream or the WebSocket
    (browsers cannot send headers on either): it admits one connection to the live stream of one tenant
    and nothing else."""
    claims = {
        "iss": issuer,
        "sub": user_id,
        "typ": "live",
        "tid": tenant_id,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_live_ticket(secret: str, issuer: str, ticket: str, *, now: datetime) -> LiveTicketClaims:
    """The claims of a valid live ticket; InvalidToken otherwise (an access token is not a ticket).
    Whether it was used already is for the caller to check (it needs the database)."""
    try:
        claims = jwt.decode(
            ticket,
            secret,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={"require": ["exp", "iat", "sub", "iss", "jti"], "verify_exp": False},
        )
    except jwt.PyJWTError as err:
        raise InvalidToken(str(err)) from err
    if claims.get("typ") != "live" or not isinstance(claims.get("tid"), str) or not isinstance(claims["jti"], str):
        raise InvalidToken("not a live-stream ticket")
    if int(claims["exp"]) <= now.timestamp():
        raise InvalidToken("the ticket has expired")
    return LiveTicketClaims(
        user_id=str(claims["sub"]),
        tenant_id=claims["tid"],
        ticket_id=claims["jti"],
        expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo),
    )


# -- webhook secrets at rest -------------------------------------------------------------------------
SEALED_VERSION = b"\x01"
NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed secret that does not open: another key, another row, or altered bytes."""


def sealing_key(material: str) -> bytes:
    """The AES-256 key derived from `GATEWAY_WEBHOOK_SECRET_KEY` (any high-entropy string)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"shuidian webhook secrets v1").derive(
        material.encode()
    )


def seal_secret(key: bytes, webhook_id: uuid.UUID, secret: str) -> bytes:
    """version || nonce || AES-GCM(secret); the webhook id is authenticated data, so a sealed secret
    copied onto another row does not open there."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return SEALED_VERSION + nonce + AESGCM(key).encrypt(nonce, secret.encode(), webhook_id.bytes)


def open_secret(key: bytes, webhook_id: uuid.UUID, sealed: bytes) -> str:
    if sealed[:1] != SEALED_VERSION or len(sealed) < 1 + NONCE_BYTES + 16:
        raise SealError("not a sealed secret of a known version")
    nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, webhook_id.bytes).decode()
    except InvalidTag as err:
        raise SealError("the sealed secret does not open with this key for this webhook") from err
