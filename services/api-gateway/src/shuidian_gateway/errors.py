"""The gateway's error root; the app maps every one to a problem-details response in one place.

GatewayError (ServiceError; answered by the kit's handler, with `headers`)
├── Unauthorised          401  no, bad or expired credentials (WWW-Authenticate: Bearer)
├── InvalidGrant          400  wrong username/password or refresh token (OAuth2 `invalid_grant`)
├── InvalidRequest        400  a grant without its fields (OAuth2 `invalid_request`)
├── Forbidden             403  authenticated, but the role or scope does not allow the action
├── ObjectNotFound        404  (kit NotFound) no such object, or not yours (existence is not revealed)
├── PreconditionFailed    412  If-Match does not match the current version
├── IdempotencyConflict   409  (kit Conflict) an Idempotency-Key reused with a different request, or still running
├── UrlNotAllowed         422  a webhook URL that reaches an internal address (or not http(s), or with userinfo)
├── TooManyRequests       429  too many sign-in attempts from one address, or for one user in back-off (Retry-After)
└── NotAvailable          501  the backend does not offer this yet
UpstreamError (upstream.py) carries a backend's own problem through unchanged.
"""

from __future__ import annotations

from shuidian_kit.errors import Conflict, NotFound, ServiceError


class GatewayError(ServiceError):
    """Root of the gateway's own errors; the kit's ServiceError handler answers them (with `headers`)."""


class Unauthorised(GatewayError):
    status_code = 401
    code = "unauthorised"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": "Bearer"}


class InvalidGrant(GatewayError):
    status_code = 400
    code = "invalid_grant"


class InvalidRequest(GatewayError):
    status_code = 400
    code = "invalid_request"


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"


class ObjectNotFound(GatewayError, NotFound):
    """No such object, or not yours: the kit's 404 `not_found`."""


class PreconditionFailed(GatewayError):
    status_code = 412
    code = "precondition_failed"


class IdempotencyConflict(GatewayError, Conflict):
    code = "idempotency_conflict"


class UrlNotAllowed(GatewayError):
    status_code = 422
    code = "url_not_allowed"


class TooManyRequests(GatewayError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class NotAvailable(GatewayError):
    status_code = 501
    code = "not_implemented"
