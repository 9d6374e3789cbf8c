"""The gateway's OpenAPI is a usable contract for writes: every write route declares a typed body (no free-form
object), every field it documents is one the backend accepts, every field the backend requires it requires, and
every example it shows is accepted by the backend's own request model. No body names who acts: backends take
the actor from the service token. Built from the apps, never started."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from shuidian_alarm.app import create_app as alarm_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_collector.app import create_app as collector_app
from shuidian_collector.settings import CollectorSettings
from shuidian_control.app import create_app as control_app
from shuidian_control.settings import ControlSettings
from shuidian_gateway.api.routes_staff import ROUTES, Route, WorkOrderPatch
from shuidian_gateway.app import create_app as gateway_app
from shuidian_gateway.settings import GatewaySettings

ACTOR_FIELDS = {"operator", "cashier", "closed_by", "by", "set_by", "actor"}
WRITES = [r for r in ROUTES if r.kind in ("write", "money")]
COMMON: dict[str, Any] = {
    "environment": "test",
    "database_url": SecretStr("postgresql://nobody@127.0.0.1:1/none"),
    "mqtt_url": "mqtt://127.0.0.1:1",
}


@cache
def backends() -> dict[str, FastAPI]:
    return {
        "collector": collector_app(CollectorSettings(**COMMON)),
        "billing": billing_app(BillingSettings(**COMMON)),
        "control": control_app(ControlSettings(**COMMON)),
        "alarm": alarm_app(AlarmSettings(**COMMON)),
    }


@cache
def gateway_openapi() -> dict[str, Any]:
    return gateway_app(GatewaySettings(**{**COMMON, "environment": "dev"})).openapi()


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _api_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, APIRoute]]:
    """Every APIRoute of an app with its full path, through the routers it includes."""
    found: list[tuple[str, APIRoute]] = []
    for candidate in routes:
        if isinstance(candidate, APIRoute):
            found.append((prefix + candidate.path, candidate))
        elif hasattr(candidate, "original_router"):
            context = getattr(candidate, "include_context", None)
            found += _api_routes(candidate.original_router.routes, prefix + getattr(context, "prefix", ""))
    return found


def backend_body(route: Route) -> Any:
    """The annotation of the body the backend route behind `route` validates."""
    wanted = _shape("/v1" + (route.upstream or route.path))
    for path, candidate in _api_routes(backends()[route.service].routes):
        if route.method in (candidate.methods or set()) and _shape(path) == wanted:
            assert candidate.body_field is not None, f"{route.service} {wanted} takes no JSON body"
            return candidate.body_field.field_info.annotation
    raise AssertionError(f"{route.service} serves no {route.method} {wanted}")


def _model(annotation: Any) -> type[BaseModel]:
    for arg in getattr(annotation, "__args__", (annotation,)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    raise AssertionError(f"{annotation!r} is not a model")


def _closed(schema: dict[str, Any], document: dict[str, Any]) -> bool:
    """A typed body: an object that admits no other property, or a choice of such (null aside)."""
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if schema.get("type") == "object":  # an object, perhaps with combinations of its own fields (anyOf)
        return schema.get("additionalProperties") is False
    options = schema.get("oneOf") or schema.get("anyOf")
    if options:  # a union of models, or an optional body (Model | None)
        return all(_closed(option, document) for option in options if option.get("type") != "null")
    return schema.get("type") == "object" and schema.get("additionalProperties") is False


def test_every_write_of_the_gateway_declares_a_closed_typed_body() -> None:
    document = gateway_openapi()
    free_form = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            if not _closed(content["application/json"]["schema"], document):
                free_form.append(f"{method.upper()} {path}")
    assert free_form == []


@pytest.mark.parametrize("route", WRITES, ids=lambda r: f"{r.method} {r.path}")
def test_a_write_body_is_what_the_backend_accepts(route: Route) -> None:
    assert route.body is not None, "no typed body"
    ours = route.body.model_json_schema()
    theirs = _model(backend_body(route)).model_json_schema()
    ours_fields = set(ours.get("properties", {}))
    assert not ours_fields & ACTOR_FIELDS, "who acts comes from the service token, not the body"
    assert ours_fields <= set(theirs.get("properties", {})), "a field the backend does not know"
    assert set(theirs.get("required", [])) <= set(ours.get("required", [])), "a field the backend requires"
    examples = ours.get("examples")
    assert isinstance(examples, list)
    assert examples, "no example"
    accepts = TypeAdapter(backend_body(route))
    for example in examples:
        route.body.model_validate(example)  # the gateway accepts its own example
        accepts.validate_python(example)  # and so does the backend


# Reads whose OpenAPI documents the backend's answer (the shared contract it serves). Others still say "an
# object": the test doubles answer them with placeholders, not the contract, so the gateway cannot yet check
# its document against them (tests/test_gateway_schemathesis.py would fail on the doubles, not the backends).
TYPED_READS = ("/tenants/{tenant_id}", "/meters/{meter_id}/binding", "/meters/{meter_id}")


def backend_route(route: Route) -> APIRoute:
    wanted = _shape("/v1" + (route.upstream or route.path))
    for path, candidate in _api_routes(backends()[route.service].routes):
        if route.method in (candidate.methods or set()) and _shape(path) == wanted:
            return candidate
    raise AssertionError(f"{route.service} serves no {route.method} {wanted}")


@pytest.mark.parametrize("path", TYPED_READS)
def test_a_typed_read_documents_the_contract_the_backend_answers_with(path: str) -> None:
    (route,) = [r for r in ROUTES if r.method == "GET" and r.path == path]
    answered = backend_route(route).response_model
    assert isinstance(answered, type)
    assert answered.__module__.startswith("shuidian_shared.contracts")
    assert route.response is answered
    assert route.response is not None
    documented = gateway_openapi()["paths"]["/v1" + path]["get"]["responses"]["200"]["content"]["application/json"]
    assert documented["schema"] == {"$ref": f"#/components/schemas/{route.response.__name__}"}


def test_a_work_order_patch_must_change_something() -> None:
    """Alarm refuses a patch that changes nothing: the gateway's schema says so (one non-null change at least)
    and refuses it itself (found by Schemathesis against the real backends)."""
    schema = gateway_openapi()["components"]["schemas"]["WorkOrderPatch"]
    assert {tuple(alternative["required"]) for alternative in schema["anyOf"]} == {
        ("status",),
        ("assignee",),
        ("note",),
        ("closing_cause",),
    }
    for nothing in ({}, {"status": None}, {"note": None, "assignee": None}):
        with pytest.raises(ValidationError, match="nothing to change"):
            WorkOrderPatch.model_validate(nothing)
    assert WorkOrderPatch.model_validate({"note": "已到现场", "status": None}).note == "已到现场"
