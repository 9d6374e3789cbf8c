"""Insights' HTTP API under `/v1`: reading history (JSON and CSV), tenant reports, what-if, line loss,
habits and trends. `InsightsError` is mapped to problem+json here, everything else by the kit."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shuidian_insights.api.routes import router
from shuidian_insights.errors import InsightsError
from shuidian_kit.service import problem

__all__ = ["install_error_handler", "router"]


def install_error_handler(app: FastAPI) -> None:
    async def on_insights_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InsightsError)
        return problem(exc.status_code, exc.code.replace("_", " "), exc.detail, exc.code)

    app.add_exception_handler(InsightsError, on_insights_error)
