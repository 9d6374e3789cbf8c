"""The kit's one exception root, `KitError` (a `ShuidianError`); `ServiceError` (under it) is the base of a
service's own API errors when that service's errors need not be pure (the gateway's)::

    ShuidianError (shuidian_shared.errors)
    └── KitError                 500 internal: not meant as an answer
        ├── MqttUnavailable      the broker could not be reached in time to publish
        ├── MigrationError       a schema migration failed
        └── ServiceError         400 bad_request: an answer (`status_code`, `code`, `detail`, `headers`)
            ├── NotFound         404 not_found
            └── Conflict         409 conflict
"""

from __future__ import annotations

from shuidian_shared.errors import ShuidianError


class KitError(ShuidianError):
    """Root of the runtime kit's errors."""


class MqttUnavailable(KitError):
    """The broker could not be reached in time."""


class MigrationError(KitError):
    """A schema migration failed."""


class ServiceError(KitError):
    """An error a service answers a request with; the kit maps every `ShuidianError` to problem details in one place."""

    status_code = 400
    code = "bad_request"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"
