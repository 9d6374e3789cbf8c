"""Every gateway route is a typed contract in the OpenAPI: a request body is a schema with properties (never a
free-form object) and every success answers with a typed schema, a Page of rows, a documented media type other
than JSON, or nothing. A route the check cannot type is listed in UNTYPED_ANSWERS: the list must shrink, never
grow — a new route without a typed answer fails, and so does a listed route once it is typed (cross it off).
Built from the app, never started."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import SecretStr

from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings

# Successes still answered as the backend's untyped JSON: their backend routes have no shared contract model yet
# (shuidian_shared.contracts). Typing one means a contract model served by the backend and the gateway's fakes.
UNTYPED_ANSWERS: frozenset[tuple[str, str]] = frozenset()


@cache
def openapi() -> dict[str, Any]:
    settings = GatewaySettings(
        environment="dev",
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        mqtt_url="mqtt://127.0.0.1:1",
    )
    return create_app(settings).openapi()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: dict[str, Any] = openapi()["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return found


def free_form(schema: dict[str, Any]) -> bool:
    """A schema that says nothing of its content: {}, or an open object without properties (a map is fine when
    its values are typed, a closed empty object says "send nothing"), at the top or in any alternative."""
    schema = _resolve(schema)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        return any(free_form(a) for a in alternatives if a.get("type") != "null")
    if schema.get("type") == "array":
        return free_form(schema.get("items", {}))
    if schema.get("type") == "object" or not schema:
        values = schema.get("additionalProperties")
        typed_map = isinstance(values, dict) and bool(values) and not free_form(values)
        return not schema.get("properties") and not typed_map and values is not False
    return False


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in openapi()["paths"].items()
        for method, operation in methods.items()
    ]


def untyped_answers() -> set[tuple[str, str]]:
    found = set()
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                continue
            content = response.get("content", {})
            if "application/json" in content and free_form(content["application/json"].get("schema", {})):
                found.add((method, path))
    return found


def test_the_check_tells_free_form_from_typed() -> None:
    assert free_form({})
    assert free_form({"type": "object", "additionalProperties": True})
    assert free_form({"anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}]})
    assert free_form({"type": "array", "items": {}})
    assert not free_form({"type": "object", "properties": {"a": {"type": "string"}}})
    assert not free_form({"type": "object", "additionalProperties": {"type": "string"}})
    assert not free_form({"type": "object", "properties": {}, "additionalProperties": False})
    assert not free_form({"type": "array", "items": {"type": "string"}})
    assert not free_form({"type": "string", "format": "binary"})


def test_every_request_body_is_typed() -> None:
    bodies = [
        (method, path, media, content.get("schema", {}))
        for method, path, operation in operations()
        for media, content in operation.get("requestBody", {}).get("content", {}).items()
    ]
    assert len(bodies) > 50  # the walk found the write routes
    assert [(m, p, media) for m, p, media, schema in bodies if media == "application/json" and free_form(schema)] == []


def test_every_route_documents_its_answer() -> None:
    """A route that answers something says what: some success has a schema, unless it only ever answers 204."""
    silent = [
        (method, path)
        for method, path, operation in operations()
        if not any(r.get("content") for s, r in operation["responses"].items() if s.startswith("2"))
        and "204" not in operation["responses"]
        and path != "/metrics"  # the kit's Prometheus text exposition, for scrapers
    ]
    assert silent == []


def test_every_answer_is_typed_but_the_listed_debt() -> None:
    found = untyped_answers()
    assert len(operations()) > 150  # the walk saw the whole gateway
    assert sorted(found - UNTYPED_ANSWERS) == [], "a new route without a typed answer"
    assert sorted(UNTYPED_ANSWERS - found) == [], "typed now: cross it off UNTYPED_ANSWERS"


def test_no_query_filter_takes_an_empty_or_shapeless_word() -> None:
    """A free-text query parameter needs at least one character (the backends refuse an empty filter); instants and
    dates are declared as such (found by Schemathesis against the real backends)."""
    loose = [
        (method, path, parameter["name"])
        for method, path, operation in operations()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query" and path != "/v1/me/live"  # a ticket or event id: 401 or a fresh stream
        for alternative in parameter["schema"].get("anyOf", [parameter["schema"]])
        if alternative.get("type") == "string" and not {"format", "enum", "pattern", "minLength"} & alternative.keys()
    ]
    assert loose == []
