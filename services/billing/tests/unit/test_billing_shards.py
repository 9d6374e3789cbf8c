"""Billing shards: a stable split of gateways between replicas, decided on the topic before decoding,
exercised through the kit's MQTT dispatch with the bytes a broker would deliver."""

from __future__ import annotations

import collections
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import aiomqtt
import pytest
from pydantic import ValidationError

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.readings import OTHER_SHARD, shard_of
from shuidian_billing.settings import BillingSettings
from shuidian_kit.db import create_engine
from shuidian_kit.mqtt import INVALID, MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

GATEWAYS = [f"GW-{i:04d}" for i in range(2000)] + [f"gw.{uuid.uuid4().hex}" for _ in range(200)]


def counter(metric: object) -> float:
    value: float = metric._value.get()  # type: ignore[attr-defined]
    return value


def billing(index: int, count: int) -> tuple[Billing, MqttLink]:
    # The engine connects lazily and the link never starts: only the MQTT dispatch and handler are exercised.
    engine = create_engine("postgresql://nobody@127.0.0.1:1/none")
    link = MqttLink("mqtt://127.0.0.1:1", service="billing", instance="t")
    settings = BillingSettings(environment="test", shard_index=index, shard_count=count)
    replica = Billing.build(engine, Outbox(engine, link, "billing"), settings, "billing-test")
    replica.readings.subscribe(link)
    return replica, link


async def deliver(link: MqttLink, gateway: str, body: bytes) -> None:
    """A reading batch as the broker hands it to the link (through the shared subscription), on a
    connection that is not the link's (so nothing is acknowledged)."""
    message = aiomqtt.Message(topics.readings(gateway), body, qos=1, retain=False, mid=1, properties=None)
    await link._dispatch(aiomqtt.Client("127.0.0.1", 1), message)


def invalid() -> float:
    return counter(INVALID.labels("billing"))


def payload(gateway: str, **override: object) -> bytes:
    reading = Reading.create(
        "E-1", Utility.ELECTRICITY, datetime(2026, 11, 2, tzinfo=UTC), registers={"energy_active_import_total": "12.5"}
    )
    batch = ReadingBatch(source="collector-t", gateway_id=gateway, readings=(reading,))
    return batch.model_dump_json().encode()


def queued(b: Billing) -> Iterator[ReadingBatch]:
    for lane in b.readings._lanes:
        while not lane.empty():
            yield lane.get_nowait()[0]


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_every_gateway_has_exactly_one_shard_and_the_shards_share_the_load(count: int) -> None:
    shards = collections.Counter(shard_of(g, count) for g in GATEWAYS)
    assert set(shards) == set(range(count))
    assert all(n > len(GATEWAYS) / count * 0.8 for n in shards.values()), shards
    assert [shard_of(g, count) for g in GATEWAYS] == [shard_of(g, count) for g in GATEWAYS]


def test_a_shard_still_spreads_its_gateways_over_every_lane() -> None:
    # The shard hash must not be the lane hash: shard 0 of 2 would then use only the even lanes.
    for shard in range(2):
        mine = [g for g in GATEWAYS if shard_of(g, 2) == shard]
        assert {zlib.crc32(g.encode()) % 4 for g in mine} == {0, 1, 2, 3}


def test_shard_settings_are_checked() -> None:
    with pytest.raises(ValidationError):
        BillingSettings(environment="test", shard_index=2, shard_count=2)
    with pytest.raises(ValidationError):
        BillingSettings(environment="test", shard_count=0)


async def test_a_replica_queues_its_own_gateways_and_leaves_the_others_undecoded() -> None:
    replicas = [billing(0, 2), billing(1, 2)]
    gateways = GATEWAYS[:40]
    skipped, refused = counter(OTHER_SHARD), invalid()
    for index, (_, link) in enumerate(replicas):
        for gateway in gateways:
            # Another shard's batch is dropped on its topic: garbage bytes there are never even decoded.
            await deliver(link, gateway, payload(gateway) if shard_of(gateway, 2) == index else b"\xff not json")
    billed = [[b.gateway_id for b in queued(r)] for r, _ in replicas]
    assert sorted(billed[0] + billed[1]) == sorted(gateways)
    assert set(billed[0]).isdisjoint(billed[1])
    assert all(shard_of(g, 2) == i for i, mine in enumerate(billed) for g in mine)
    assert counter(OTHER_SHARD) - skipped == len(gateways)  # each gateway left by one replica
    assert invalid() == refused


def test_one_shard_subscribes_to_every_gateway_in_the_plain_group() -> None:
    _, link = billing(0, 1)
    [sub] = link._subscriptions
    assert (sub.topic_filter, sub.accept) == (topics.shared("billing", topics.ALL_READINGS), None)
    _, sharded = billing(1, 3)
    assert sharded._subscriptions[0].topic_filter == topics.shared("billing-shard-1-of-3", topics.ALL_READINGS)


@pytest.mark.parametrize(
    "hostile",
    [
        b"",
        b"{",
        b"[]",
        b'{"source": "x", "gateway_id": "G", "readings": "none"}',
        b"\xff\xfe garbage",
        payload("G").replace(b'"12.5"', b"12.5"),  # a float: digits already lost
        payload("G").replace(b'"12.5"', b'"NaN"'),
        payload("G").replace(b'"gateway_id"', b'"gateway"'),
        payload("G").replace(b'"source":"collector-t"', b'"source":"collector-t","extra":1'),
    ],
)
async def test_an_invalid_payload_of_the_shard_is_counted_and_dropped(hostile: bytes) -> None:
    gateway = next(g for g in GATEWAYS if shard_of(g, 3) == 1)
    replica, link = billing(1, 3)
    before = invalid()
    await deliver(link, gateway, hostile)
    assert invalid() == before + 1
    assert list(queued(replica)) == []
    # The replica carries on: the next good batch is queued with its readings intact.
    await deliver(link, gateway, payload(gateway))
    [batch] = queued(replica)
    assert batch.readings[0].registers == {"energy_active_import_total": Decimal("12.5")}
