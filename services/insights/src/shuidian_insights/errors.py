"""The insights package's one exception root, `InsightsError`, and the errors under it.

    InsightsError            (400 bad_request)
    ├── NotFound             (404) no such household, meter, group or result
    ├── Invalid              (422) a request that names something impossible (range, tariff)
    └── Unavailable          (503) billing, which owns tariffs and rooms, did not answer

Pure: the domain may raise these. `api.install_error_handler` maps the root to problem+json in one place.
"""

from __future__ import annotations


class InsightsError(Exception):
    """Root of every error the insights service raises on purpose."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(InsightsError):
    status_code = 404
    code = "not_found"


class Invalid(InsightsError):
    status_code = 422
    code = "invalid_request"


class Unavailable(InsightsError):
    status_code = 503
    code = "unavailable"
