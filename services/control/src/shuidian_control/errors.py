"""Control's one exception root (a `ShuidianError`, shuidian_shared.errors); the kit maps every one to a
problem-details response in one place.

ControlError              400  a request control cannot act on (`code` says which: invalid_cursor, batch_too_large …)
├── NotFound              404  no such command, schedule, building, shadow, keep-power flag or hold
├── Conflict              409  the state forbids it (a finished command, an idempotency key reused)
└── NoAllowedInstant      409  no instant within the search horizon allows a trip (the domain's; `resume_at`)

The root imports only the shared contracts, so the pure domain can raise it; `status_code` and `code` are how the
API answers it.
"""

from __future__ import annotations

from datetime import datetime

from shuidian_shared.errors import ShuidianError


class ControlError(ShuidianError):
    """Root of control's errors: `detail` is the text a caller reads, `code` the machine-readable reason."""

    status_code = 400
    code = "bad_request"


class NotFound(ControlError):
    status_code = 404
    code = "not_found"


class Conflict(ControlError):
    status_code = 409
    code = "conflict"


class NoAllowedInstant(ControlError):
    """No instant within the search horizon allows a trip; re-evaluate at `resume_at` (None: when the policy changes)."""

    status_code = 409
    code = "no_allowed_instant"

    def __init__(self, detail: str, *, resume_at: datetime | None) -> None:
        super().__init__(detail)
        self.resume_at = resume_at
