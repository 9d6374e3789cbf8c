"""The insights package's one exception root, `InsightsError`, and the errors under it.

    InsightsError            (400 bad_request; a ShuidianError, shuidian_shared.errors)
    ├── NotFound             (404) no such household, meter, group or result
    ├── Invalid              (422) a request that names something impossible (range, tariff)
    └── Unavailable          (503) billing, which owns tariffs and rooms, did not answer

Pure: the domain may raise these. The kit maps every `ShuidianError` to problem+json in one place.
"""

from __future__ import annotations

from shuidian_shared.errors import ShuidianError


class InsightsError(ShuidianError):
    """Root of every error the insights service raises on purpose."""

    status_code = 400
    code = "bad_request"


class NotFound(InsightsError):
    status_code = 404
    code = "not_found"


class Invalid(InsightsError):
    status_code = 422
    code = "invalid_request"


class Unavailable(InsightsError):
    status_code = 503
    code = "unavailable"
