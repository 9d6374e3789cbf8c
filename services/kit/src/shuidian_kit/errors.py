"""The kit's one exception root, `KitError`; `ServiceError` (under it) is the base every service's API errors derive from."""

from __future__ import annotations


class KitError(Exception):
    """Root of the runtime kit's errors."""


class MqttUnavailable(KitError):
    """The broker could not be reached in time."""


class MigrationError(KitError):
    """A schema migration failed."""


class ServiceError(KitError):
    """Base of a service's own error root; the app maps it to a problem-details response in one place."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None  # extra response headers, e.g. WWW-Authenticate or Retry-After

    def __init__(self, detail: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"
