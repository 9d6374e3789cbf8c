"""The one error base of every Shuidian package, and the problem-details body it is answered with.

    ShuidianError                 500 internal_error unless a subclass says how to answer
    ├── KitError                  the runtime kit's (shuidian_kit.errors); its ServiceError answers 400 …
    │   └── ServiceError → GatewayError, …
    ├── AlarmError, BillingError, ControlError, InsightsError     400 bad_request and their subclasses
    ├── CollectorError            bus and store errors are internal; its RequestError answers 400 …
    └── SimulatorError

An error says how it is answered (`status_code`, `code`, `detail`, optional `headers`); the kit maps every one to
one problem-details response in one place. One that does not say (still `internal_error`) is answered as any
unexpected error: logged, with a generic detail. Pure: the domains raise these too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_TYPE = "https://shuidian.dev/problems/"
INTERNAL_ERROR = "internal_error"


class ErrorBody(BaseModel):
    """RFC 9457 problem details, the one error format of every service (`application/problem+json`); some errors
    add members (`errors` of a refused import, validation `errors`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(examples=[f"{PROBLEM_TYPE}not_found"])
    title: str = Field(examples=["not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no such account"])
    code: str = Field(examples=["not_found"], description="stable machine-readable error code")


def error_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The problem-details body of an answer: `ErrorBody`'s members in its order, then `extra`."""
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE}{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(extra)
    return body


class ShuidianError(Exception):
    """Root of every error a Shuidian package raises on purpose; carries the answer it maps to."""

    status_code = 500
    code = INTERNAL_ERROR
    headers: dict[str, str] | None = None  # extra response headers, e.g. WWW-Authenticate or Retry-After

    def __init__(self, detail: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    @property
    def answered(self) -> bool:
        """Whether the error says how to answer it; one that does not is an internal error, its text not shown."""
        return self.code != INTERNAL_ERROR

    def problem_body(self) -> dict[str, Any]:
        """The problem-details body this error is answered with (a subclass adds members here)."""
        return error_body(self.status_code, self.code, self.detail)
