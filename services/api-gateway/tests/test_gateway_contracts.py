"""The gateway's view of the backends checked against the backends themselves (their OpenAPI, no sockets): every
route the test doubles serve, every route the staff table proxies to (and the GET an If-Match is checked
against), every estate lookup and every typed contract exists in the real service — a route only a fake has is
a bug."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr

import shuidian_gateway
from shuidian_alarm.app import create_app as alarm_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_collector.app import create_app as collector_app
from shuidian_collector.settings import CollectorSettings
from shuidian_control.app import create_app as control_app
from shuidian_control.settings import ControlSettings
from shuidian_gateway.adapters.fakes import FakeBackends, create_fake_backends
from shuidian_gateway.api.routes_operations import FORWARDS
from shuidian_gateway.api.routes_staff import ESTATE_LOOKUPS, ROUTES
from shuidian_gateway.app import create_app as gateway_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_insights.app import create_app as insights_app
from shuidian_insights.settings import InsightsSettings
from shuidian_shared.contracts import CALLS

Operation = tuple[str, str]  # (METHOD, path with every parameter written {})


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


@cache
def real_openapi() -> dict[str, dict[str, Any]]:
    """Each backend's OpenAPI document, from its app (built, never started)."""
    common: dict[str, Any] = {
        "environment": "test",
        "database_url": SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        "mqtt_url": "mqtt://127.0.0.1:1",
    }
    apps = {
        "collector": collector_app(CollectorSettings(**common)),
        "billing": billing_app(BillingSettings(**common)),
        "control": control_app(ControlSettings(**common)),
        "alarm": alarm_app(AlarmSettings(**common)),
        "insights": insights_app(InsightsSettings(**common)),
    }
    return {name: app.openapi() for name, app in apps.items()}


@cache
def gateway_openapi() -> dict[str, Any]:
    settings = GatewaySettings(
        environment="dev",
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        mqtt_url="mqtt://127.0.0.1:1",
    )
    return gateway_app(settings).openapi()


@cache
def real_operations() -> dict[str, dict[Operation, dict[str, Any]]]:
    return {
        name: {
            (method.upper(), _shape(path)): operation
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
        }
        for name, document in real_openapi().items()
    }


def _model(operation: dict[str, Any]) -> str:
    """The name of the model a 200 answers with ("" when it declares none)."""
    schema = operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref: str = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1]


def _anywhere(operation: Operation) -> bool:
    return any(operation in ops for ops in real_operations().values())


def test_every_route_of_the_fakes_exists_in_a_real_service() -> None:
    fake = create_fake_backends(FakeBackends())
    served = {
        (method, _shape(route.path))
        for route in fake.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert served  # the check compares something
    assert sorted(op for op in served if not _anywhere(op)) == []


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_staff_route_proxies_to_a_real_route(route: Any) -> None:
    operations = real_operations()[route.service]
    upstream = _shape("/v1" + (route.upstream or route.path))
    assert (route.method, upstream) in operations, f"{route.service} has no {route.method} {upstream}"
    if route.method in ("PUT", "PATCH"):  # If-Match is checked against the representation a GET returns
        assert ("GET", upstream) in operations, f"{route.service} has no GET {upstream} to check If-Match against"


@pytest.mark.parametrize("forward", FORWARDS, ids=lambda f: f"{f.method} {f.path}")
def test_every_operations_forward_reaches_a_real_route(forward: Any) -> None:
    upstream = _shape("/v1" + forward.path)
    assert (forward.method, upstream) in real_operations()[forward.service], f"{forward.service} has no {upstream}"


@pytest.mark.parametrize("kind", sorted(ESTATE_LOOKUPS))
def test_every_estate_lookup_reads_a_real_field(kind: str) -> None:
    service, path, field = ESTATE_LOOKUPS[kind]
    operation = real_operations()[service].get(("GET", _shape(path.replace("{}", "{id}"))))
    assert operation is not None, f"{service} has no GET {path}"
    model = _model(operation)
    assert model, f"GET {path} on {service} declares no response model"
    assert field in real_openapi()[service]["components"]["schemas"][model]["properties"], f"{model} has no {field}"


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.service} {c.method} {c.path}")
def test_every_contract_is_served_by_its_service_with_its_model(call: Any) -> None:
    operation = real_operations()[call.service].get((call.method, _shape(call.path)))
    assert operation is not None, f"{call.service} has no {call.method} {call.path}"
    if call.response is not None:
        assert _model(operation) == call.response.__name__


UPSTREAM_CALL = re.compile(r'upstreams\.(?:call|raw)\(\s*"(\w+)",\s*"([A-Z]+)",\s*f?"(/v1/[^"]*)"')


def upstream_calls() -> list[tuple[str, str, str, str]]:
    """(module, service, method, path) of every backend call the gateway's source writes out literally."""
    package = Path(shuidian_gateway.__file__).parent
    return [
        (source.name, match[1], match[2], match[3])
        for source in sorted(package.rglob("*.py"))
        if source.name != "fakes.py"
        for match in UPSTREAM_CALL.finditer(source.read_text(encoding="utf-8"))
    ]


def test_every_backend_call_in_the_gateway_names_a_real_route() -> None:
    calls = upstream_calls()
    assert len(calls) > 20  # the scan finds the calls (a changed call style would make this check vacuous)
    missing = [
        f"{module}: {service} {method} {path}"
        for module, service, method, path in calls
        if (method, _shape(path)) not in real_operations()[service]
    ]
    assert missing == []


DOCS = Path(__file__).resolve().parents[3] / "docs" / "api.md"
BACKENDS = ("collector", "billing", "control", "alarm", "insights")


def documented_internal() -> set[tuple[str, str, str]]:
    """(service, METHOD, path shape) of every row of docs/api.md's "Internal routes" table. A row names a service
    (or "every service's" / "every backend's") and backticked `METHOD /path` items; a bare `/path` takes the
    method before it."""
    section = DOCS.read_text(encoding="utf-8").split("#### Internal routes", 1)[1].split("\n#", 1)[0]
    found: set[tuple[str, str, str]] = set()
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| backend route", "|---")):
            continue
        cell = line.split("|")[1].strip()
        services = BACKENDS if cell.startswith("every") else (cell.split()[0],)
        method = ""
        for item in re.findall(r"`([^`]+)`", cell):
            if " " in item:
                method, item = item.split(" ", 1)
            found |= {(service, method, _shape(item)) for service in services}
    return found


def test_every_backend_route_is_on_the_gateway_or_documented_as_internal() -> None:
    called = {(r.service, r.method, _shape("/v1" + (r.upstream or r.path))) for r in ROUTES}
    called |= {(service, method, _shape(path)) for _, service, method, path in upstream_calls()}
    called |= {(f.service, f.method, _shape("/v1" + f.path)) for f in FORWARDS}
    internal = documented_internal()
    assert len(internal) > 10  # the table was found and read
    served = {(service, method, path) for service, ops in real_operations().items() for method, path in ops}
    assert sorted(served - called - internal) == []  # neither offered nor explained
    assert sorted(internal - served) == []  # a documented route the backend no longer has


def _strictness(schema: dict[str, Any], components: dict[str, Any]) -> tuple[str, ...]:
    """What a path parameter's schema demands beyond a string: a uuid, an integer or one of some values."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("format") == "uuid":
        return ("uuid",)
    if schema.get("type") == "integer":
        return ("integer",)
    if "enum" in schema:
        return ("enum", *sorted(schema["enum"]))
    return ()


def test_every_path_parameter_is_as_strict_as_the_backends() -> None:
    """A gateway path parameter named like a backend's uuid, integer or enumeration is declared the same, so a
    request the gateway's OpenAPI calls valid is not a backend's 422 (found by Schemathesis on the real stack)."""
    strict: dict[str, set[tuple[str, ...]]] = {}
    for document in real_openapi().values():
        components = document["components"]["schemas"]
        for operations in document["paths"].values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    demand = _strictness(parameter["schema"], components)
                    if parameter["in"] == "path" and demand:
                        strict.setdefault(parameter["name"], set()).add(demand)
    gateway = gateway_openapi()
    looser = []
    for path, operations in gateway["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "path" or parameter["name"] not in strict:
                    continue
                if _strictness(parameter["schema"], gateway["components"]["schemas"]) not in strict[parameter["name"]]:
                    looser.append(f"{method.upper()} {path}: {parameter['name']}")
    assert len(strict) > 5  # the backends' strict parameters were found
    assert looser == []


# -- the answers the gateway documents are the backends' answers ----------------------------------------------------
# Gateway routes written out by hand (in neither the staff table nor the operations one) that forward a backend's
# typed answer:
# (gateway METHOD, gateway path, backend, backend METHOD, backend path).
FORWARDED: tuple[tuple[str, str, str, str, str], ...] = (
    ("GET", "/v1/meters/{meter_id}/usage", "billing", "GET", "/v1/meters/{}/usage"),
    ("POST", "/v1/payments/bank/imports", "billing", "POST", "/v1/payments/bank/imports"),
    ("POST", "/v1/commands/batch", "control", "POST", "/v1/batches"),
    ("POST", "/v1/commands/batch/preview", "control", "POST", "/v1/batches/preview"),
    ("POST", "/v1/commands/scheduled", "control", "POST", "/v1/schedules"),
    ("GET", "/v1/reports/device-online-rate", "collector", "GET", "/v1/reports/device-online-rate"),
    ("PUT", "/v1/alarm-rules", "alarm", "PUT", "/v1/rules"),
    ("GET", "/v1/alarm-rules", "alarm", "GET", "/v1/rules"),
    ("POST", "/v1/alarm-subscriptions", "alarm", "POST", "/v1/subscriptions"),
    ("GET", "/v1/alarm-subscriptions", "alarm", "GET", "/v1/subscriptions"),
    ("POST", "/v1/work-orders", "alarm", "POST", "/v1/work-orders"),
    ("GET", "/v1/me/alarms/{alarm_id}", "alarm", "GET", "/v1/alarms/{}"),
    ("GET", "/v1/me/rooms/{room_id}", "billing", "GET", "/v1/rooms/{}"),
)


def _success_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    for status, response in sorted(operation["responses"].items()):
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if status.startswith("2") and schema:
            return dict(schema)
    return None


def _refs(schema: dict[str, Any]) -> list[str]:
    """The component names a property's schema points to, through nullable alternatives, arrays and maps."""
    if "$ref" in schema:
        return [schema["$ref"].rsplit("/", 1)[-1]]
    found: list[str] = []
    for alternative in schema.get("anyOf", []) + schema.get("allOf", []):
        found += _refs(alternative)
    for nested in (schema.get("items"), schema.get("additionalProperties")):
        if isinstance(nested, dict):
            found += _refs(nested)
    return found


def _unpaged(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A page's row (the gateway pages what a backend lists), or the schema itself."""
    resolved = components[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
    if resolved.get("type") == "array":
        return dict(resolved["items"])
    if set(resolved.get("properties", {})) == {"items", "next_cursor"}:
        return dict(resolved["properties"]["items"]["items"])
    return schema


def mismatches(ours: str, theirs: str, service: str, seen: set[tuple[str, str]] | None = None) -> list[str]:
    """Where the gateway's component `ours` differs from the backend's `theirs`: a field only one has, a field one
    requires and the other does not, or a nested model that differs (walked the same way)."""
    seen = set() if seen is None else seen
    if (ours, theirs) in seen:
        return []
    seen.add((ours, theirs))
    mine = gateway_openapi()["components"]["schemas"][ours]
    real = real_openapi()[service]["components"]["schemas"][theirs]
    found = [f"{ours}.{f}: only the gateway has it" for f in sorted(set(mine["properties"]) - set(real["properties"]))]
    found += [f"{ours}.{f}: the backend's, missing" for f in sorted(set(real["properties"]) - set(mine["properties"]))]
    required = set(mine.get("required", [])) ^ set(real.get("required", []))
    found += [f"{ours}.{f}: required on one side only" for f in sorted(required)]
    for name in sorted(set(mine["properties"]) & set(real["properties"])):
        nested = list(zip(_refs(mine["properties"][name]), _refs(real["properties"][name]), strict=False))
        for our_model, their_model in nested:
            if "enum" in real_openapi()[service]["components"]["schemas"][their_model]:
                continue  # an enumeration the gateway documents as its values
            found += mismatches(our_model, their_model, service, seen)
    return found


def forwarded_pairs() -> list[tuple[str, str, str]]:
    """(gateway component, backend, backend component) for every route that forwards a backend's typed answer."""
    routes = [
        (r.method, "/v1" + r.path, r.service, r.method, _shape("/v1" + (r.upstream or r.path)))
        for r in ROUTES
        if r.kind != "csv"
    ]
    routes += [(f.method, "/v1" + f.path, f.service, f.method, _shape("/v1" + f.path)) for f in FORWARDS]
    pairs = []
    gateway = gateway_openapi()
    for method, path, service, their_method, their_path in [*routes, *FORWARDED]:
        ours = _success_schema(gateway["paths"][path][method.lower()])
        theirs = _success_schema(real_operations()[service][(their_method, their_path)])
        if ours is None or theirs is None:
            assert ours is None or theirs is None, f"{method} {path}: one side answers nothing"
            continue
        our_row = _unpaged(ours, gateway["components"]["schemas"])
        their_row = _unpaged(theirs, real_openapi()[service]["components"]["schemas"])
        if "$ref" in our_row and "$ref" in their_row:
            pairs.append((_refs(our_row)[0], service, _refs(their_row)[0]))
    return sorted(set(pairs))


def test_every_forwarded_answer_is_documented_as_the_backend_answers_it() -> None:
    """The gateway forwards a backend's answer as it is; its OpenAPI documents that answer with a shared contract
    model, which must have the backend model's fields (names and which are required), nested models too."""
    pairs = forwarded_pairs()
    assert len(pairs) > 40  # the walk found the typed answers
    assert [m for ours, service, theirs in pairs for m in mismatches(ours, theirs, service)] == []


def test_the_comparison_finds_a_missing_field() -> None:
    gateway = gateway_openapi()["components"]["schemas"]
    real = real_openapi()["billing"]["components"]["schemas"]
    assert "AccountOut" in gateway
    assert "AccountOut" in real
    assert mismatches("AccountOut", "AccountOut", "billing") == []
    assert mismatches("LeaseOut", "LeaseWithEstateOut", "billing") == [
        "LeaseOut.estate_id: the backend's, missing",
        "LeaseOut.estate_id: required on one side only",
    ]


def _query_demand(schema: dict[str, Any], components: dict[str, Any]) -> tuple[Any, ...]:
    """What a query parameter's schema demands beyond a word: one of some values, a bounded integer, a flag, an
    instant ("" parts: not demanded)."""
    alternatives = [a for a in schema.get("anyOf", [schema]) if a.get("type") != "null"]
    if len(alternatives) != 1:
        return ()
    found = alternatives[0]
    if "$ref" in found:
        found = components[found["$ref"].rsplit("/", 1)[-1]]
    if "enum" in found:
        return ("enum", *sorted(found["enum"]))
    if found.get("type") == "integer":
        return ("integer", found.get("minimum"), found.get("maximum"))
    if found.get("type") == "boolean":
        return ("boolean",)
    if found.get("format") == "date-time":
        return ("date-time",)
    return ()


def test_every_staff_filter_is_as_strict_as_its_backend() -> None:
    """A filter a backend takes as one of some values, an integer, a flag or an instant is declared the same on the
    gateway, so a request the gateway's OpenAPI calls valid is not a backend's 422 (found by Schemathesis on the
    real stack: alarm and payment `state`, payment `channel` were documented as free words)."""
    gateway = gateway_openapi()
    looser = []
    compared = 0
    for route in ROUTES:
        real = real_operations()[route.service][(route.method, _shape("/v1" + (route.upstream or route.path)))]
        theirs = {p["name"]: p["schema"] for p in real.get("parameters", []) if p["in"] == "query"}
        ours = {
            p["name"]: p["schema"]
            for p in gateway["paths"]["/v1" + route.path][route.method.lower()].get("parameters", [])
            if p["in"] == "query"
        }
        for name in route.filters:
            demand = _query_demand(theirs[name], real_openapi()[route.service]["components"]["schemas"])
            if not demand:
                continue
            compared += 1
            if _query_demand(ours[name], gateway["components"]["schemas"]) != demand:
                looser.append(f"{route.method} {route.path}?{name}: the backend demands {demand}")
    assert compared > 10  # the backends' typed filters were found
    assert looser == []
