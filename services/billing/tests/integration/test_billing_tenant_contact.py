"""Billing announces a tenant's phone to alarm: a retained `TenantContact` per tenant through the outbox, on a real
broker and real PostgreSQL, when the tenant is created or the phone changes, and not on a save that keeps it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import TenantContact

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "contact") as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as client:
        yield client


async def put(client: httpx.AsyncClient, tenant: str, name: str, phone: str) -> None:
    response = await client.put(f"/v1/tenants/{tenant}", json={"name": name, "phone": phone})
    assert response.status_code == 204, response.text


async def next_contact(mqtt: aiomqtt.Client) -> tuple[TenantContact, bool]:
    async with asyncio.timeout(15):
        async for message in mqtt.messages:
            assert isinstance(message.payload, bytes)
            return TenantContact.model_validate_json(message.payload), message.retain
    raise AssertionError("the subscription ended")


async def test_billing_tenant_contact_is_announced_on_creation_and_phone_change_only(
    client: httpx.AsyncClient, mqtt_url: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as mqtt:
        await mqtt.subscribe(topics.tenant_contact(tenant), qos=1)
        await put(client, tenant, "张三", "13800000001")
        created, _ = await next_contact(mqtt)
        assert (created.tenant_id, created.phone) == (tenant, "13800000001")
        # A name change and a repeated save keep the phone: nothing is announced for them. The outbox publishes
        # in commit order, so had either been announced it would arrive before the change below.
        await put(client, tenant, "张三丰", "13800000001")
        await put(client, tenant, "张三丰", "13800000001")
        await put(client, tenant, "张三丰", "13900000002")
        changed, _ = await next_contact(mqtt)
        assert changed.phone == "13900000002"
        assert changed.changed_at > created.changed_at
        await put(client, tenant, "张三丰", "")  # the phone removed: announced as none
        removed, _ = await next_contact(mqtt)
        assert (removed.phone, removed.changed_at > changed.changed_at) == (None, True)
    # Retained: a subscriber arriving later (alarm starting) gets the newest at once.
    async with aiomqtt.Client(address.host, address.port) as late:
        await late.subscribe(topics.tenant_contact(tenant), qos=1)
        newest, retained = await next_contact(late)
        assert (newest.message_id, retained) == (removed.message_id, True)
        await late.publish(topics.tenant_contact(tenant), b"", qos=1, retain=True)  # clean up the retained copy


async def test_billing_tenant_contact_is_announced_by_the_csv_import(client: httpx.AsyncClient, mqtt_url: str) -> None:
    estate, tenant = f"est-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    assert (await client.put(f"/v1/estates/{estate}", json={"name": "阳光苑"})).status_code < 300
    body = (
        "building,floor,room,code,area_m2,household_size,electricity_meter,water_meter,tenant_id,tenant_name,phone,"
        f"move_in\nA,1,101,C{uuid.uuid4().hex[:6]},30.00,1,,,{tenant},李四,13700000003,2024-01-01\n"
    )
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as mqtt:
        await mqtt.subscribe(topics.tenant_contact(tenant), qos=1)
        response = await client.post(
            f"/v1/estates/{estate}/import", content=body.encode(), headers={"content-type": "text/csv"}
        )
        assert response.status_code < 300, response.text
        imported, _ = await next_contact(mqtt)
        assert (imported.tenant_id, imported.phone) == (tenant, "13700000003")
        await mqtt.publish(topics.tenant_contact(tenant), b"", qos=1, retain=True)
