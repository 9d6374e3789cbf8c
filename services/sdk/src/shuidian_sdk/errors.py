"""Errors the SDK raises: one per problem status, all carrying the API's problem document.

ShuidianError
├── AuthenticationError   401  sign in again (the SDK already tried its refresh token)
├── PermissionDenied      403
├── NotFound              404  no such object, or not yours
├── Conflict              409  e.g. an Idempotency-Key reused with another request
├── PreconditionFailed    412  the ETag you sent is stale: read again
├── InvalidRequest        400 / 422
├── RateLimited           429  (`retry_after` seconds)
└── ServerError           5xx  (501: the platform does not offer this yet)
"""

from __future__ import annotations

from typing import Any

import httpx


class ShuidianError(Exception):
    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}


class AuthenticationError(ShuidianError):
    pass


class PermissionDenied(ShuidianError):
    pass


class NotFound(ShuidianError):
    pass


class Conflict(ShuidianError):
    pass


class PreconditionFailed(ShuidianError):
    pass


class InvalidRequest(ShuidianError):
    pass


class RateLimited(ShuidianError):
    @property
    def retry_after(self) -> int | None:
        value = self.problem.get("retry_after")
        return int(value) if value is not None else None


class ServerError(ShuidianError):
    pass


_BY_STATUS: dict[int, type[ShuidianError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    422: InvalidRequest,
    429: RateLimited,
}


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the error matching an error response (a problem document, or anything else)."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    problem = body if isinstance(body, dict) else {}
    if response.status_code == 429 and "retry-after" in response.headers:
        problem = {**problem, "retry_after": response.headers["retry-after"]}
    cls = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else ShuidianError)
    raise cls(
        response.status_code,
        str(problem.get("code", "http_error")),
        str(problem.get("detail", response.text[:500])),
        problem,
    )
