"""The AsyncAPI document covers every topic and message model, and the docs command writes it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shuidian_gateway import docs
from shuidian_gateway.api.asyncapi import CHANNELS, document
from shuidian_shared import messages, topics
from shuidian_shared.contracts import insights, payments

# Topic helpers that are not channels of their own.
NOT_CHANNELS = {"shared", "segment"}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _topic_addresses() -> dict[str, str]:
    """Address template of every public topic function of shared.topics, by function name."""
    functions = {
        name: fn
        for name, fn in inspect.getmembers(topics, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == topics.__name__ and name not in NOT_CHANNELS
    }
    return {name: fn(*(f"{{{p}}}" for p in inspect.signature(fn).parameters)) for name, fn in functions.items()}


def test_the_channels_are_exactly_the_topic_functions() -> None:
    """A topic added to shared.topics without a channel here (or a channel left over) fails this."""
    addresses = _topic_addresses()
    assert {"poll_stats", "room_occupancy", "tenant_contact"} <= set(addresses)  # the newest topics, by name
    assert sorted(document()["channels"]) == sorted(addresses.values())
    assert len(CHANNELS) == len(set(addresses.values()))


def test_every_subscription_filter_matches_a_channel() -> None:
    """Each ALL_* filter of shared.topics covers one documented channel (its `+` levels are parameters)."""
    channels = list(document()["channels"])
    filters = {name: value for name, value in vars(topics).items() if name.startswith("ALL_")}
    assert filters
    for name, topic_filter in filters.items():
        matches = [
            a
            for a in channels
            if len(a.split("/")) == len(topic_filter.split("/"))
            and all(
                (f == "+" and c.startswith("{")) or f == c
                for f, c in zip(topic_filter.split("/"), a.split("/"), strict=True)
            )
        ]
        assert len(matches) == 1, (name, topic_filter, matches)


def test_every_published_message_model_is_in_the_document() -> None:
    published = {c.model for c in CHANNELS}
    models = {
        m
        for module in (messages, insights, payments)  # every shared module that defines messages
        for _, m in inspect.getmembers(module, inspect.isclass)
        if issubclass(m, messages.Message) and m is not messages.Message
    }
    assert models == published
    assert set(document()["components"]["messages"]) == {m.__name__ for m in published}


def test_every_reference_resolves_and_money_is_a_string() -> None:
    doc = document()
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    balance = doc["components"]["schemas"]["BalanceEvent"]["properties"]["balance"]
    assert balance["type"] == "string"


def test_channel_parameters_match_the_address() -> None:
    for address, channel in document()["channels"].items():
        names = {part[1:-1] for part in address.split("/") if part.startswith("{")}
        assert set(channel["parameters"]) == names
        assert channel["subscribe"]["bindings"]["mqtt"]["qos"] == 1


def test_payload_schemas_validate_real_messages() -> None:
    """A model instance's JSON round-trips through the schema's required fields."""
    doc = document()
    for channel in CHANNELS:
        schema = doc["components"]["schemas"][channel.model.__name__]
        assert set(schema.get("required", [])) <= set(channel.model.model_fields)
        assert issubclass(channel.model, BaseModel)


def test_the_docs_command_writes_both_documents(tmp_path: Path) -> None:
    written = docs.write(tmp_path)
    assert {p.name for p in written} == {"openapi.json", "asyncapi.json"}
    openapi = json.loads((tmp_path / "openapi.json").read_text(encoding="utf-8"))
    asyncapi = json.loads((tmp_path / "asyncapi.json").read_text(encoding="utf-8"))
    assert openapi["info"]["title"] == "Shuidian API"
    assert asyncapi["asyncapi"] == "2.6.0"
    # Every operation is summarised and, except the operations surface, says what it needs or is for tenants.
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), (method, path)
