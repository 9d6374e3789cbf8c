"""API conventions shared by every route: problem documents, pagination (limit/cursor), sorting,
ETags with If-Match, and stored Idempotency-Key responses for money and command POSTs."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, WithJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shuidian_gateway.domain.policy import Principal
from shuidian_gateway.errors import GatewayError, PreconditionFailed


class Problem(BaseModel):
    """RFC 9457 problem details: the one error format of the API."""

    type: str = Field(examples=["https://shuidian.dev/problems/not_found"])
    title: str = Field(examples=["not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no such account"])
    code: str = Field(examples=["not_found"], description="stable machine-readable error code")


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {"application/problem+json": {}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem("bad request"),
    401: _problem("missing, invalid or expired credentials"),
    403: _problem("the role or API key scope does not allow this"),
    404: _problem("no such object, or not yours"),
    409: _problem("conflict (e.g. an Idempotency-Key reused with another request)"),
    412: _problem("If-Match does not match the current ETag"),
    422: _problem("the request did not validate"),
    501: _problem("the backend does not offer this yet"),
    502: _problem("a backend failed"),
    503: _problem("a backend is unavailable"),
}

Limit = Annotated[int, Query(ge=1, le=200, description="page size")]
CURSOR_PATTERN = r"^c[0-9]{1,7}$"
Cursor = Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")]
Sort = Annotated[
    str | None,
    Query(max_length=64, pattern=r"^-?[a-z_]{1,60}$", description="field to sort by; prefix `-` for descending"),
]
IdempotencyKey = Annotated[
    str,
    Header(
        min_length=8,
        max_length=100,
        description="client-chosen unique key; a replay returns the original response, a different request with the same key is a 409",
    ),
]
# Free text the gateway stores, looks up or forwards: anything but NUL, which PostgreSQL text cannot hold.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL)]
ObjectId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
IfMatch = Annotated[str | None, Header(max_length=200, description="the ETag you read; 412 if it changed since")]


# Money input has one canonical form, a JSON string of ASCII digits: no sign, no exponent, no
# separators, no spaces, no leading zeros (except "0"), at most two decimals after a dot that is
# followed by a digit. Decimal() alone accepts "1_000", "1e3", "٥٠", "５０", "+50", " 50", "50." and
# ".5"; a JSON number arrives as int or float. Everything but the canonical string is a 422.
MONEY_PATTERN = r"^(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?$"
MONEY_MAX = Decimal("9999999.99")
# Payments (top-ups, cash, orders) keep their documented ceiling.
AMOUNT_MAX = Decimal("99999.99")
# The same grammar, narrowed to what a payment may be (above 0, at most AMOUNT_MAX), for the schema.
AMOUNT_PATTERN = r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,4}(\.[0-9]{1,2})?)$"
_MONEY = re.compile(MONEY_PATTERN.removeprefix("^").removesuffix("$"))


def _money_parser(*, positive: bool, maximum: Decimal) -> Callable[[Any], Decimal]:
    def parse(value: Any) -> Decimal:
        if isinstance(value, Decimal):  # built in Python, not parsed from a request
            written = str(value)
        elif isinstance(value, str):
            written = value
        else:
            raise ValueError('money is a JSON string such as "50.00", not a number / 金额须为字符串')
        if not _MONEY.fullmatch(written):
            raise ValueError(
                'money is written like "50" or "50.00": ASCII digits, no sign, exponent, spaces or leading zeros, '
                "at most two decimals / 金额格式错误"
            )
        amount = Decimal(written)
        if positive and amount <= 0:
            raise ValueError("the amount must be greater than 0 / 金额须大于 0")
        if amount > maximum:
            raise ValueError(f"the amount may be at most {maximum} / 金额超出上限")
        return amount.quantize(Decimal("0.01"))

    return parse


def _money_schema(pattern: str, *, positive: bool, maximum: Decimal) -> dict[str, Any]:
    bounds = f"{'above 0 and ' if positive else ''}at most {maximum}"
    return {
        "type": "string",
        "pattern": pattern,
        "maxLength": len(str(maximum)),
        "examples": ["50.00"],
        "description": f"CNY as a decimal string, {bounds}",
    }


MoneyIn = Annotated[
    Decimal,
    BeforeValidator(_money_parser(positive=False, maximum=MONEY_MAX)),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(_money_schema(MONEY_PATTERN, positive=False, maximum=MONEY_MAX)),
]
"""Any amount of money a client sends: "0" to MONEY_MAX, in the canonical string form."""
Amount = Annotated[
    Decimal,
    BeforeValidator(_money_parser(positive=True, maximum=AMOUNT_MAX)),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(_money_schema(AMOUNT_PATTERN, positive=True, maximum=AMOUNT_MAX)),
]
"""A payment amount: above 0, at most AMOUNT_MAX, in the canonical string form."""


def _strict_decimal(pattern: str, *, positive: bool, description: str, example: str) -> Any:
    """A decimal a client sends as a canonical string (the money grammar with its own digits and decimals)."""
    grammar = re.compile(pattern.removeprefix("^").removesuffix("$"))

    def parse(value: Any) -> Decimal:
        written = str(value) if isinstance(value, Decimal) else value
        if not isinstance(written, str) or not grammar.fullmatch(written):
            raise ValueError(
                f"{description}: ASCII digits as a JSON string, no sign, exponent or spaces / 数值格式错误"
            )
        number = Decimal(written)
        if positive and number <= 0:
            raise ValueError("must be greater than 0 / 须大于 0")
        return number

    schema = {"type": "string", "pattern": pattern, "examples": [example], "description": description}
    return Annotated[Decimal, BeforeValidator(parse), PlainSerializer(str, return_type=str), WithJsonSchema(schema)]


PRICE_PATTERN = r"^(0|[1-9][0-9]{0,3})(\.[0-9]{1,6})?$"
Price = _strict_decimal(
    PRICE_PATTERN, positive=False, description="CNY per kWh or m³, up to six decimals", example="0.5883"
)
"""A tariff unit price: like money, with up to six decimals (at most 9999.999999)."""
QUANTITY_PATTERN = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$"
Quantity = _strict_decimal(
    QUANTITY_PATTERN, positive=False, description="kWh or m³, up to six decimals", example="412.37"
)
"""A metered quantity (a register value, a tier's width)."""
AREA_PATTERN = r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,7}(\.[0-9]{1,2})?)$"
Area = _strict_decimal(AREA_PATTERN, positive=True, description="m², above 0, up to two decimals", example="45.50")
"""A floor area in m²."""

# Statement and report months: YYYY-MM of this century, ASCII digits (\d would admit other scripts).
MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
MonthPath = Annotated[str, Path(pattern=MONTH_PATTERN, description="YYYY-MM (2000-01 … 2099-12), local time")]
MonthQuery = Annotated[
    str, Query(pattern=MONTH_PATTERN, description="YYYY-MM (2000-01 … 2099-12), local time", examples=["2026-11"])
]
Month = Annotated[str, Field(pattern=MONTH_PATTERN, description="YYYY-MM (2000-01 … 2099-12), local time")]


# A JSON \u0000 escape: its backslash is not itself escaped (an even run of backslashes before it).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)
_PERCENT_NUL = re.compile(rb"%00")
TEXT_BODIES = (b"application/json", b"application/problem+json", b"application/x-www-form-urlencoded", b"text/")


def carries_nul(path: str, raw_path: bytes, query: bytes, content_type: bytes, body: bytes) -> bool:
    """Whether a request holds a NUL character anywhere it could reach a backend or the database:
    its path, its query string, or its text body (raw, %00, or a JSON \\u0000 escape)."""
    if "\x00" in path or b"\x00" in raw_path or _PERCENT_NUL.search(raw_path):
        return True
    if b"\x00" in query or _PERCENT_NUL.search(query):
        return True
    if not body or not content_type.lower().startswith(TEXT_BODIES):
        return False
    if b"\x00" in body:
        return True
    if content_type.lower().startswith(b"application/x-www-form-urlencoded"):
        return _PERCENT_NUL.search(body) is not None
    return _JSON_NUL.search(body) is not None


class RefuseNul:
    """ASGI middleware: a request with a NUL character in its path, query or text body is a 422
    before any route, backend or audit row sees it (PostgreSQL text cannot hold NUL, and backends
    answered such input with a 5xx). The body is read once and handed on unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"")
        body = b""
        if scope["type"] == "http" and content_type.lower().startswith(TEXT_BODIES):
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            receive = _replay(body, receive)
        if carries_nul(scope["path"], scope.get("raw_path") or b"", scope.get("query_string", b""), content_type, body):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "NUL character in the request"})
                return
            response = JSONResponse(
                {
                    "type": "https://shuidian.dev/problems/validation_error",
                    "title": "invalid request",
                    "status": 422,
                    "detail": "a NUL character (\\u0000, %00) is not allowed in a path, query or body / 请求中不能含空字符",
                    "code": "validation_error",
                },
                status_code=422,
                media_type="application/problem+json",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Page(BaseModel):
    items: list[Any]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


def decode_cursor(cursor: str | None) -> int:
    """Cursors are opaque to clients; today they carry the offset of the next page."""
    if not cursor:
        return 0
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise GatewayError("the cursor is not one this API issued", code="bad_cursor")
    return int(cursor[1:])


def encode_cursor(offset: int) -> str:
    return f"c{offset}"


def _sort_key(field: str) -> Callable[[Any], tuple[int, str]]:
    def key(item: Any) -> tuple[int, str]:
        value = item.get(field) if isinstance(item, dict) else None
        return (0, "") if value is None else (1, value if isinstance(value, str) else json.dumps(value, default=str))

    return key


def page(items: Sequence[Any], offset: int, limit: int, sort: str | None = None) -> dict[str, Any]:
    """One page of `items` (all rows from `offset` on, one more than `limit` if there is a next page)."""
    rows = list(items)
    if sort:
        rows.sort(key=_sort_key(sort.lstrip("-")), reverse=sort.startswith("-"))
    return {
        "items": rows[:limit],
        "next_cursor": encode_cursor(offset + limit) if len(rows) > limit else None,
    }


def page_of_all(items: Sequence[Any], limit: int, cursor: str | None, sort: str | None) -> dict[str, Any]:
    """Sort a complete list, then cut the page the cursor names."""
    offset = decode_cursor(cursor)
    rows = list(items)
    if sort:
        rows.sort(key=_sort_key(sort.lstrip("-")), reverse=sort.startswith("-"))
    return page(rows[offset : offset + limit + 1], offset, limit)


def etag_of(body: Any) -> str:
    encoded = json.dumps(jsonable_encoder(body), sort_keys=True, separators=(",", ":")).encode()
    return f'W/"{hashlib.sha256(encoded).hexdigest()[:32]}"'


def version_etag(version: int) -> str:
    return f'W/"v{version}"'


def version_of(if_match: str | None) -> int | None:
    """The version an If-Match of `version_etag` names; 412 for anything else."""
    if if_match is None or if_match.strip() == "*":
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.startswith("v") or not raw[1:].isdigit():
        raise PreconditionFailed("If-Match does not name a version of this resource")
    return int(raw[1:])


def check_etag(if_match: str | None, current: Any) -> None:
    if if_match is not None and if_match.strip() != "*" and if_match.strip() != etag_of(current):
        raise PreconditionFailed("the resource changed since you read it; fetch it again / 数据已变更，请刷新")


def with_etag(response: Response, body: Any) -> Any:
    response.headers["ETag"] = etag_of(body)
    return body


def upstream_key(principal: Principal, key: str) -> str:
    """The Idempotency-Key (or command id) sent to a backend: backends de-duplicate across all callers,
    so the client's key is namespaced by who sent it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{principal.name}/{key}"))


# -- the edge: 405 answers and browsers on other origins -------------------------------------------------------
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """The methods some route serves at the request's path, asked of the routes themselves (one route per
    method, so the route that refused the request knows only its own)."""
    return [
        method
        for method in PROBED_METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def install_allow_header(app: FastAPI) -> None:
    """Every 405 lists in `Allow` exactly the methods its path supports; the framework's handler answers it."""
    answer = app.exception_handlers[StarletteHTTPException]

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request.app.router.routes, request.scope))
            exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": allow})
        answered = answer(request, exc)
        return await answered if inspect.isawaitable(answered) else answered

    app.add_exception_handler(StarletteHTTPException, on_http_error)


CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "If-Match", "Last-Event-ID"]
CORS_EXPOSED_HEADERS = ["ETag", "Location", "Retry-After", "Idempotent-Replayed", "WWW-Authenticate"]


def cors_origins(configured: str) -> list[str]:
    return [origin.strip().rstrip("/") for origin in configured.split(",") if origin.strip()]


def install_cors(app: FastAPI, configured: str) -> None:
    """Browsers on the configured origins (GATEWAY_CORS_ORIGINS) may call the API with credentials and read the
    headers the conventions use; with none configured, no cross-origin access. Outermost, so every answer
    (refusals included) carries the headers a browser needs to read it."""
    origins = cors_origins(configured)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=True,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )


ISO_INSTANT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")
ISO_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
ISO_DAY_OR_INSTANT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}.*)?$")


def written_as(pattern: re.Pattern[str], what: str) -> Callable[[Any], Any]:
    """Only the ISO 8601 text form: pydantic would also take a number (a Unix time) or a date for an instant."""

    def check(value: Any) -> Any:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"{what} in ISO 8601 / 须为 ISO 8601 格式")
        return value

    return check
