"""Checking a webhook delivery on the receiving side."""

from __future__ import annotations

import hashlib
import hmac


def verify_signature(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """True when `Shuidian-Signature` (`t=<unix>,v1=<hex>`) is HMAC-SHA256(secret, "<unix>.<body>") and fresh.

    Compare against the raw request body, before any JSON parsing; refuse stale timestamps so a
    captured delivery cannot be replayed later.
    """
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        signature = fields["v1"]
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)
