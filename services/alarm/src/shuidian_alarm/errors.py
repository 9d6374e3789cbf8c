"""The alarm package's one exception root, `AlarmError`, and the errors under it.

    AlarmError               (400 bad_request; a ShuidianError, shuidian_shared.errors)
    ├── NotFound             (404) no such alarm, rule, subscription, notification or work order
    ├── Conflict             (409) the change is not allowed in the object's current state
    │   ├── InvalidTransition      a work order cannot move that way
    │   └── VersionConflict        a tenant's settings changed since the client read them
    └── Invalid              (422) a request that names something impossible
        ├── InvalidRule            a rule or scope that does not validate
        ├── InvalidQuery           a filter or cursor this API did not hand out
        └── InvalidSettings        tenant settings that cannot be served (SMS without a phone …)

Pure: the domain raises these too. The kit maps every `ShuidianError` to problem+json in one place.
"""

from __future__ import annotations

from shuidian_shared.errors import ShuidianError


class AlarmError(ShuidianError):
    """Root of every error the alarm service raises on purpose; `status_code` and `code` say how to answer."""

    status_code = 400
    code = "bad_request"


class NotFound(AlarmError):
    status_code = 404
    code = "not_found"


class Conflict(AlarmError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class VersionConflict(Conflict):
    code = "version_conflict"


class Invalid(AlarmError):
    status_code = 422
    code = "invalid_request"


class InvalidRule(Invalid):
    code = "invalid_rule"


class InvalidQuery(Invalid):
    code = "invalid_query"


class InvalidSettings(Invalid):
    code = "invalid_settings"
