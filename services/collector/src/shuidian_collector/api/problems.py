"""The collector's request errors as problem+json, in one place (the kit answers its own and validation errors)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shuidian_collector.errors import RequestError
from shuidian_kit.service import problem


async def _on_request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return problem(exc.status_code, exc.code.replace("_", " "), exc.detail, exc.code)


def install_problems(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _on_request_error)
