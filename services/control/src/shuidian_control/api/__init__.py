"""Control's HTTP API: commands (issue, batch with preview, cancel, query, audit trail), shadows, policies
(estates, buildings, keep-power, no-cut-off holds), the holiday calendar, deferred trips and scheduled operations.

Who acts is the subject of the request's verified service token (the api-gateway signs it for the
authenticated user; an `X-Actor` header or a body field is never trusted); every change that can cut or keep
supply also takes a reason, and both land in the audit trail.
"""

from __future__ import annotations

from fastapi import APIRouter

from shuidian_control.api import calendar, commands, policies, schedules

router = APIRouter(prefix="/v1", tags=["control"])
for part in (commands, policies, calendar, schedules):
    router.include_router(part.router)
