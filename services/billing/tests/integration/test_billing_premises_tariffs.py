"""Billing's REST surface and pricing path against real PostgreSQL and a real broker: premises and
leases, effective-dated bindings that split a month between households, CSV import, tenant scope,
tariff tables (tiers, TOU, version changes), meter events, subsidies, separate purses, 冲正."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.infra import free_port
from shuidian_devstack.platform import _serve
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, Reading, ReadingBatch, ReadingHeld, Utility

pytestmark = pytest.mark.integration
CST = timedelta(hours=8)


@dataclass
class Service:
    http: httpx.AsyncClient
    billing: Billing
    mqtt_url: str

    @contextlib.asynccontextmanager
    async def listen(self, topic: str) -> AsyncIterator[list[bytes]]:
        """Collect what the service publishes on `topic` (through its outbox and the real broker)."""
        address = BrokerAddress.parse(self.mqtt_url)
        got: list[bytes] = []
        async with aiomqtt.Client(address.host, address.port) as client:
            await client.subscribe(topic, qos=1)

            async def pump() -> None:
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    got.append(message.payload)

            task = asyncio.create_task(pump())
            try:
                yield got
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
        return response.json() if response.content else None

    async def read(
        self, meter: str, at: datetime, value: str, utility: Utility = Utility.ELECTRICITY, **extra: str
    ) -> None:
        register = "energy_active_import_total" if utility is Utility.ELECTRICITY else "water_volume_total"
        registers = {register: Decimal(value), **{k: Decimal(v) for k, v in extra.items()}}
        reading = Reading.create(meter, utility, at, registers=registers)
        await self.billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=(reading,)), "")

    async def charged(self, account: str) -> Decimal:
        """Exact charges accrued or posted for the account (before rounding)."""
        async with self.billing.engine.connect() as conn:
            total: Decimal = (
                await conn.execute(
                    text("SELECT coalesce(sum(amount), 0) FROM billing.charge_lines WHERE account_id = :a"),
                    {"a": account},
                )
            ).scalar_one()
        return total

    async def lines(self, account: str) -> list[tuple[str, str, Decimal]]:
        async with self.billing.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT component, label, sum(quantity) AS q FROM billing.charge_lines WHERE account_id = :a "
                    "GROUP BY component, label, unit_price ORDER BY component, label"
                ),
                {"a": account},
            )
            return [(r.component, r.label, r.q) for r in rows]


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, mqtt_url: str) -> AsyncIterator[Service]:
    port = free_port()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"t-{port}",
        http_port=port,
        flush_interval_seconds=3600,
    )
    app = create_app(settings)
    server, task = await _serve(app, port)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, auth=infra.service_auth("billing")
        ) as http:
            # The base prices of the whole session (set directly: the API refuses new versions in the past
            # once a utility has one, and other modules may have added future ones).
            async with app.state.container.runtime.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO billing.tariffs (utility, unit_price, effective_from) VALUES "
                        "('electricity', 0.613, '2020-01-01T00:00:00Z'), ('water', 4.5, '2020-01-01T00:00:00Z') "
                        "ON CONFLICT DO NOTHING"
                    )
                )
            yield Service(http, app.state.container.billing, mqtt_url)
    finally:
        server.should_exit = True
        await task


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def estate_with_room(svc: Service, *, shared: bool = True, household: int = 1) -> tuple[str, str]:
    estate, building, floor, room = uid("est"), uid("b"), uid("f"), uid("r")
    await svc.ok("PUT", f"/v1/estates/{estate}", json={"name": "阳光苑", "shared_balance": shared})
    await svc.ok("PUT", f"/v1/buildings/{building}", json={"estate_id": estate, "name": "1栋"})
    await svc.ok("PUT", f"/v1/floors/{floor}", json={"building_id": building, "level": 3})
    await svc.ok(
        "PUT",
        f"/v1/rooms/{room}",
        json={"floor_id": floor, "code": uid("1-03"), "area_m2": "52.40", "household_size": household},
    )
    return estate, room


async def move_in(svc: Service, room: str, day: str) -> tuple[str, str]:
    tenant, lease = uid("t"), uid("L")
    await svc.ok("PUT", f"/v1/tenants/{tenant}", json={"name": "张三", "phone": "13800000000"})
    out = await svc.ok("PUT", f"/v1/leases/{lease}", json={"tenant_id": tenant, "room_id": room, "move_in": day})
    return tenant, str(out["account_id"])


async def test_premises_validate_and_leases_never_overlap(service: Service) -> None:
    _, room = await estate_with_room(service)
    bad = await service.http.put(f"/v1/rooms/{uid('r')}", json={"floor_id": "nope", "code": "x", "area_m2": "-3"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    missing = await service.http.put(f"/v1/rooms/{uid('r')}", json={"floor_id": "nope", "code": "x", "area_m2": "3"})
    assert missing.status_code == 404
    await move_in(service, room, "2030-01-01")
    other = uid("t")
    await service.ok("PUT", f"/v1/tenants/{other}", json={"name": "李四"})
    clash = await service.http.put(
        f"/v1/leases/{uid('L')}", json={"tenant_id": other, "room_id": room, "move_in": "2030-02-01"}
    )
    assert clash.status_code == 409
    assert clash.json()["code"] == "lease_overlap"
    unknown = await service.http.get(f"/v1/tenants/{uid('nobody')}/scope")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_tenant_scope_lists_the_active_lease(service: Service) -> None:
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    tenant, account = await move_in(service, room, "2020-01-01")
    scope = await service.ok("GET", f"/v1/tenants/{tenant}/scope")
    assert scope == {"tenant_id": tenant, "accounts": [account], "rooms": [room], "meters": [meter]}
    lease = (await service.ok("GET", f"/v1/rooms/{room}"))["leases"][0]["lease_id"]
    await service.ok("POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2020-06-01"})
    assert (await service.ok("GET", f"/v1/tenants/{tenant}/scope"))["meters"] == []


async def test_a_move_mid_month_bills_each_household_for_its_days(service: Service) -> None:
    # Flat 1.00/kWh from 2030-03: quantities equal money, so the split is plain to see.
    await service.ok(
        "POST",
        "/v1/tariffs/electricity/versions",
        json={"effective_from": "2030-03-01T00:00:00+08:00", "components": [{"kind": "flat", "unit_price": "1.00"}]},
    )
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    _, first = await move_in(service, room, "2030-03-01")
    lease = (await service.ok("GET", f"/v1/rooms/{room}"))["leases"][0]["lease_id"]
    await service.ok("POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2030-03-11"})
    _, second = await move_in(service, room, "2030-03-11")
    start = datetime(2030, 3, 1, tzinfo=UTC) - CST  # local midnight
    await service.read(meter, start, "100")
    # One gap of 20 days spans the move on the 11th: 10 days each, 300 kWh split 150/150.
    await service.read(meter, start + timedelta(days=20), "400")
    assert await service.charged(first) == Decimal("150")
    assert await service.charged(second) == Decimal("150")


async def test_csv_import_is_all_or_nothing_and_reports_every_bad_line(service: Service) -> None:
    estate, _ = await estate_with_room(service)
    header = "building,floor,room,code,area_m2,household_size,electricity_meter,water_meter,tenant_id,tenant_name,phone,move_in"
    code = uid("C")
    bad = "\n".join(
        [
            header,
            f"A,1,101,{code}-1,45.5,2,{code}E1,{code}W1,{code}T1,王五,139,2030-01-01",
            f"A,1,102,{code}-2,-4,2,{code}E2,,,,,",  # negative area
            f"A,x,103,{code}-3,40,1,{code}E1,,,,,",  # floor not a number, meter repeated
            f"A,1,104,{code}-4,40,1,,,{code}T4,,,2030-13-01",  # no tenant name, bad date
        ]
    )
    refused = await service.http.post(
        f"/v1/estates/{estate}/import", content=bad.encode(), headers={"content-type": "text/csv"}
    )
    assert refused.status_code == 422
    lines = sorted({(e["line"], e["column"]) for e in refused.json()["errors"]})
    assert lines == [(3, "area_m2"), (4, "electricity_meter"), (4, "floor"), (5, "move_in"), (5, "tenant_name")]
    assert (await service.http.get(f"/v1/rooms/{estate}.A.101")).status_code == 404  # nothing imported
    good = "\n".join([header, f"A,1,101,{code}-1,45.5,2,{code}E1,{code}W1,{code}T1,王五,139,2020-01-01"])
    counts = await service.ok(
        "POST", f"/v1/estates/{estate}/import", content=good.encode(), headers={"content-type": "text/csv"}
    )
    assert counts == {"buildings": 1, "floors": 1, "rooms": 1, "meters": 2, "leases": 1}
    scope = await service.ok("GET", f"/v1/tenants/{code}T1/scope")
    assert scope["meters"] == sorted([f"{code}E1", f"{code}W1"])


async def test_month_tiers_restart_at_the_local_month_and_widen_with_household_size(service: Service) -> None:
    tiers = {
        "kind": "tiered",
        "period": "month",
        "base_household_size": 3,
        "blocks": [
            {"label": "一档", "width": "10", "unit_price": "3.00", "extra_width_per_person": "2"},
            {"label": "二档", "width": None, "unit_price": "5.00"},
        ],
    }
    await service.ok(
        "POST",
        "/v1/tariffs/water/versions",
        json={"effective_from": "2031-01-01T00:00:00+08:00", "components": [tiers]},
    )
    _, room = await estate_with_room(service, household=4)  # one person above the base: first tier 12 m³
    meter = uid("W")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "water"})
    _, account = await move_in(service, room, "2031-01-01")
    jan = datetime(2031, 1, 1, tzinfo=UTC) - CST
    await service.read(meter, jan + timedelta(days=1), "0", Utility.WATER)
    await service.read(meter, jan + timedelta(days=10), "8", Utility.WATER)
    await service.read(meter, jan + timedelta(days=20), "15", Utility.WATER)  # 12 in tier 1, 3 in tier 2
    assert await service.lines(account) == [("tiered", "一档", Decimal("12")), ("tiered", "二档", Decimal("3"))]
    # The next reading 2 days later lies across local 1 February 00:00 (one day each side).
    feb = datetime(2031, 2, 1, tzinfo=UTC) - CST
    await service.read(meter, feb - timedelta(days=1), "15", Utility.WATER)
    await service.read(meter, feb + timedelta(days=1), "19", Utility.WATER)  # 2 m³ in Jan (tier 2), 2 in Feb (tier 1)
    assert await service.lines(account) == [("tiered", "一档", Decimal("14")), ("tiered", "二档", Decimal("5"))]
    assert await service.charged(account) == Decimal("14") * 3 + Decimal("5") * 5


async def test_year_tiers_carry_across_months(service: Service) -> None:
    tiers = {
        "kind": "tiered",
        "period": "year",
        "blocks": [
            {"label": "1", "width": "100", "unit_price": "0.50"},
            {"label": "2", "width": None, "unit_price": "0.80"},
        ],
    }
    await service.ok(
        "POST",
        "/v1/tariffs/electricity/versions",
        json={"effective_from": "2032-01-01T00:00:00+08:00", "components": [tiers]},
    )
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    _, account = await move_in(service, room, "2032-01-01")
    y = datetime(2032, 1, 1, tzinfo=UTC) - CST
    await service.read(meter, y + timedelta(days=1), "0")
    await service.read(meter, y + timedelta(days=40), "60")  # Jan–Feb: 60 in tier 1
    await service.read(meter, y + timedelta(days=100), "130")  # Apr: 40 more in tier 1, 30 in tier 2
    assert await service.lines(account) == [("tiered", "1", Decimal("100")), ("tiered", "2", Decimal("30"))]
    # New year: back to tier 1. The reading 2 days apart across 1 January splits 50/50 by time.
    ny = datetime(2033, 1, 1, tzinfo=UTC) - CST
    await service.read(meter, ny - timedelta(days=1), "130")
    await service.read(meter, ny + timedelta(days=1), "140")
    assert await service.lines(account) == [("tiered", "1", Decimal("105")), ("tiered", "2", Decimal("35"))]


async def test_a_gap_across_a_tariff_change_prices_each_part_at_its_version(service: Service) -> None:
    flat = {"kind": "flat", "unit_price": "1.00"}
    await service.ok(
        "POST",
        "/v1/tariffs/electricity/versions",
        json={"effective_from": "2034-05-01T00:00:00+08:00", "components": [flat]},
    )
    await service.ok(
        "POST",
        "/v1/tariffs/electricity/versions",
        json={"effective_from": "2034-05-16T00:00:00+08:00", "components": [{**flat, "unit_price": "2.00"}]},
    )
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    _, account = await move_in(service, room, "2034-05-01")
    change = datetime(2034, 5, 16, tzinfo=UTC) - CST
    await service.read(meter, change - timedelta(days=3), "10")
    await service.read(meter, change + timedelta(days=1), "50")  # 30 at 1.00, 10 at 2.00
    assert await service.charged(account) == Decimal("50")
    # A version already in force cannot change, and a new one asked to start in the past starts now.
    refused = await service.http.post(
        "/v1/tariffs/electricity/versions",
        json={"effective_from": "2020-01-01T00:00:00Z", "components": [{**flat, "unit_price": "9.99"}]},
    )
    assert refused.status_code == 409
    assert refused.json()["code"] == "tariff_in_force"
    before = datetime.now(UTC)
    late = await service.ok(
        "POST",
        "/v1/tariffs/water/versions",
        json={"effective_from": "2026-01-01T00:00:00Z", "components": [{"kind": "flat", "unit_price": "4.5"}]},
    )
    assert datetime.fromisoformat(late["effective_from"]) >= before


async def test_time_of_use_across_midnight_from_sample_times_and_from_tariff_registers(service: Service) -> None:
    tou = {
        "kind": "tou",
        "rates": [
            {"label": "峰", "unit_price": "1.00", "register_name": "energy_tariff_2"},
            {"label": "谷", "unit_price": "0.30", "register_name": "energy_tariff_4"},
        ],
        "segments": [{"start": "07:00", "rate": "峰"}, {"start": "23:00", "rate": "谷"}],
    }
    await service.ok(
        "POST",
        "/v1/tariffs/electricity/versions",
        json={"effective_from": "2035-01-01T00:00:00+08:00", "components": [tou]},
    )
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    _, account = await move_in(service, room, "2035-01-01")
    day = datetime(2035, 1, 10, tzinfo=UTC) - CST  # local midnight
    # Without rate registers: 22:00 → 02:00 local is 1 h 峰 and 3 h 谷 (谷 runs through midnight).
    await service.read(meter, day + timedelta(hours=22), "100")
    await service.read(meter, day + timedelta(hours=26), "108")
    assert await service.lines(account) == [("tou", "峰", Decimal("2")), ("tou", "谷", Decimal("6"))]
    # With them: the meter's own registers split the next delta (5 峰, 1 谷), whatever the clock says.
    await service.read(meter, day + timedelta(hours=27), "108", energy_tariff_2="50", energy_tariff_4="70")
    await service.read(meter, day + timedelta(hours=28), "114", energy_tariff_2="55", energy_tariff_4="71")
    assert await service.lines(account) == [("tou", "峰", Decimal("7")), ("tou", "谷", Decimal("7"))]


async def test_rollover_replacement_and_ct_ratio_are_explicit_events(service: Service) -> None:
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    _, account = await move_in(service, room, "2020-01-01")
    t = datetime(2026, 6, 1, tzinfo=UTC)
    async with service.listen(topics.reading_held(meter)) as got:
        await service.read(meter, t, "999990")
        await service.read(meter, t + timedelta(hours=1), "5")  # went down: held, announced, not billed
        await service.read(meter, t + timedelta(hours=1), "5")  # the same reading again: announced once
        await eventually(lambda: len(got) >= 1, "the held reading announced")
        await service.read(meter, t + timedelta(hours=1, minutes=1), "999991")
    announced = [ReadingHeld.model_validate_json(p) for p in got]
    assert [(a.reason, a.value, a.watermark_value) for a in announced] == [
        ("register_decreased", Decimal(5), Decimal(999990))
    ]
    held = await service.ok("GET", "/v1/held-readings")
    assert any(h["meter_id"] == meter and h["reason"] == "register_decreased" for h in held)
    assert await service.charged(account) == Decimal("0.613")  # only 999990 → 999991; the held 5 billed nothing
    event = {"operator": "抄表员", "reason": "表计翻转"}
    rolled = await service.ok(
        "POST",
        f"/v1/meters/{meter}/events",
        json={**event, "kind": "rollover", "at": (t + timedelta(hours=2)).isoformat(), "register_after": "5"},
    )
    assert Decimal(rolled["billed"]) == Decimal(
        "14"
    )  # from 999991: 999999.99 wraps at 1000000.00  # 999999.99 wraps at 1000000.00
    assert (await service.ok("GET", "/v1/held-readings")) == [h for h in held if h["meter_id"] != meter]
    replaced = await service.ok(
        "POST",
        f"/v1/meters/{meter}/events",
        json={
            **event,
            "kind": "replaced",
            "at": (t + timedelta(hours=2, minutes=30)).isoformat(),
            "old_closing_register": "7",
            "new_opening_register": "0",
        },
    )
    assert Decimal(replaced["billed"]) == 2
    await service.read(meter, t + timedelta(hours=3), "3")
    await service.ok(
        "POST",
        f"/v1/meters/{meter}/events",
        json={
            **event,
            "kind": "multiplier_changed",
            "at": (t + timedelta(hours=4)).isoformat(),
            "register_at_change": "4",
            "new_multiplier": "40",
        },
    )
    await service.read(meter, t + timedelta(hours=5), "4.5")  # 0.5 × 40 = 20 kWh
    async with service.billing.engine.connect() as conn:
        quantity = (
            await conn.execute(text("SELECT sum(quantity) FROM billing.accruals WHERE meter_id = :m"), {"m": meter})
        ).scalar_one()
    assert quantity == 1 + 14 + 2 + 3 + 1 + 20
    bad = await service.http.post(f"/v1/meters/{meter}/events", json={**event, "kind": "rollover", "at": t.isoformat()})
    assert bad.status_code == 422


async def test_subsidy_is_spent_first_and_a_reversal_happens_once_with_audit(service: Service) -> None:
    _, room = await estate_with_room(service)
    meter = uid("E")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
    _, account = await move_in(service, room, "2020-01-01")
    topup = await service.ok(
        "POST", f"/v1/accounts/{account}/topups", json={"amount": "50.00"}, headers={"Idempotency-Key": uid("key")}
    )
    key = uid("sub")
    grant = {"amount": "3.00", "program": "低保补贴"}
    first = await service.ok("POST", f"/v1/accounts/{account}/subsidies", json=grant, headers={"Idempotency-Key": key})
    again = await service.ok("POST", f"/v1/accounts/{account}/subsidies", json=grant, headers={"Idempotency-Key": key})
    assert (first["replayed"], again["replayed"]) == (False, True)
    t = datetime(2026, 7, 1, tzinfo=UTC)
    await service.read(meter, t, "100")
    await service.read(meter, t + timedelta(minutes=30), "110")  # 10 kWh × 0.613 = 6.13
    await service.billing.poster.flush(before=t + timedelta(hours=2))
    view = await service.ok("GET", f"/v1/accounts/{account}")
    assert (view["subsidy_balance"], view["paid_balance"]) == ("0.00", "46.87")
    correction = {"operator": "财务-王", "reason": "重复充值"}
    reversed_ = await service.ok("POST", f"/v1/ledger/transactions/{topup['txn_id']}/reversal", json=correction)
    assert reversed_["reverses"] == topup["txn_id"]
    twice = await service.http.post(f"/v1/ledger/transactions/{topup['txn_id']}/reversal", json=correction)
    assert twice.status_code == 409
    assert (await service.ok("GET", f"/v1/accounts/{account}"))["paid_balance"] == "-3.13"
    trail = await service.ok("GET", "/v1/corrections", params={"account_id": account})
    # Who reversed is the caller's credential, not the body's `operator`.
    assert [(c["operator"], c["reason"]) for c in trail] == [(infra.TEST_SUBJECT, "重复充值")]


async def test_separate_purses_keep_water_and_electricity_apart(service: Service) -> None:
    _, room = await estate_with_room(service, shared=False)
    meter = uid("W")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "water"})
    _, account = await move_in(service, room, "2020-01-01")
    unnamed = await service.http.post(
        f"/v1/accounts/{account}/topups", json={"amount": "10.00"}, headers={"Idempotency-Key": uid("key")}
    )
    assert unnamed.status_code == 422
    assert unnamed.json()["code"] == "utility_required"
    t = datetime(2026, 8, 1, tzinfo=UTC)
    async with service.listen(topics.balance(account)) as got:
        await service.ok(
            "POST",
            f"/v1/accounts/{account}/topups",
            json={"amount": "10.00", "utility": "electricity"},
            headers={"Idempotency-Key": uid("key")},
        )
        await service.read(meter, t, "10", Utility.WATER)
        await service.read(meter, t + timedelta(minutes=30), "11", Utility.WATER)  # 1 m³ × 4.5
        await eventually(lambda: len(got) >= 2, "two balance events")
    purses = {
        p["purse"]: Decimal(p["available"]) for p in (await service.ok("GET", f"/v1/accounts/{account}"))["purses"]
    }
    assert purses == {"electricity": Decimal("10.00"), "water": Decimal("-4.5")}
    seen = [BalanceEvent.model_validate_json(p) for p in got]
    # Each purse has its own level; the water purse's event names only the water meter.
    assert {(e.kind.value, tuple(m.meter_id for m in e.meters)) for e in seen} == {
        ("low_1", ()),
        ("exhausted", (meter,)),
    }


async def test_monthly_run_posts_fixed_fees_and_shares_common_consumption_by_area(service: Service) -> None:
    # An era of its own (June 2018): flat 0.50/kWh plus a 5.00 monthly service fee. Set up directly,
    # since the API never lets a new version start in the past.
    async with service.billing.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO billing.tariffs (utility, components, effective_from) VALUES "
                "('electricity', CAST(:c AS jsonb), '2018-05-01T00:00:00+08:00') ON CONFLICT DO NOTHING"
            ),
            {
                "c": '[{"kind": "flat", "name": "flat", "unit_price": "0.50"}, '
                '{"kind": "fixed", "name": "service_fee", "amount_per_month": "5.00"}]'
            },
        )
    estate, first = await estate_with_room(service)  # 52.40 m²
    building, floor = uid("b"), uid("f")
    await service.ok("PUT", f"/v1/buildings/{building}", json={"estate_id": estate, "name": "2栋"})
    await service.ok("PUT", f"/v1/floors/{floor}", json={"building_id": building, "level": 1})
    second = uid("r")
    await service.ok("PUT", f"/v1/rooms/{second}", json={"floor_id": floor, "code": uid("2-01"), "area_m2": "157.20"})
    _, a = await move_in(service, first, "2018-01-01")
    # b moved in mid-month: pays 21 of June's 30 days of the fee and of 公摊.
    _, b = await move_in(service, second, "2018-06-10")
    common = uid("LIFT")
    await service.ok("PUT", f"/v1/estates/{estate}/common-meters/{common}", json={"utility": "electricity"})
    june = datetime(2018, 6, 1, tzinfo=UTC) - CST
    await service.read(common, june + timedelta(hours=1), "100")
    await service.read(common, june + timedelta(days=19), "300.02")  # 200.02 kWh × 0.50 = 100.01
    run = await service.ok("POST", f"/v1/estates/{estate}/months/2018-06/run")
    assert run["fixed_fees"] == {a: "5.00", b: "3.50"}  # 5.00 × 21/30
    # 100.01 by area × leased days, 52.40 × 30 : 157.20 × 21 → 32.26 and 67.74, the odd fen to the larger remainder.
    assert run["shared_area"] == {"electricity": {a: "32.26", b: "67.75"}}
    again = await service.ok("POST", f"/v1/estates/{estate}/months/2018-06/run")
    assert again["replayed"] is True
    views = {x: await service.ok("GET", f"/v1/accounts/{x}") for x in (a, b)}
    assert (views[a]["balance"], views[b]["balance"]) == ("-37.26", "-71.25")
    async with service.billing.engine.connect() as conn:
        pool = (
            await conn.execute(
                text("SELECT balance FROM billing.balances WHERE ledger_account = :p"), {"p": f"shared:{estate}"}
            )
        ).scalar_one()
    assert pool == 0  # the common meter's cost is fully shared out
    early = await service.http.post(f"/v1/estates/{estate}/months/2999-01/run")
    assert early.status_code == 409


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        (
            "POST",
            "/v1/tariffs/electricity/versions",
            {
                "effective_from": "2099-01-01T00:00:00Z",
                "components": [
                    {
                        "kind": "tou",
                        "rates": [{"label": "平", "unit_price": "0.5"}],
                        "segments": [{"start": f"{h:02d}:00", "rate": "平"} for h in range(15)],
                    }
                ],
            },
            422,
            "validation_error",
        ),
        (
            "POST",
            "/v1/tariffs/water/versions",
            {
                "effective_from": "2099-01-01T00:00:00Z",
                "components": [{"kind": "tiered", "blocks": [{"label": "1", "width": "10", "unit_price": "3"}]}],
            },
            422,
            "invalid_tariff",
        ),
        (
            "POST",
            "/v1/tariffs/water/versions",
            {"effective_from": "2099-01-01T00:00:00", "components": []},
            422,
            "validation_error",
        ),
        (
            "POST",
            "/v1/meters/NOPE-1/events",
            {"kind": "replaced", "at": "2026-01-01T00:00:00Z", "operator": "x", "reason": "y"},
            422,
            "invalid_event",
        ),
        ("POST", "/v1/estates/nope/months/2026-13/run", None, 422, "invalid_month"),
        ("POST", "/v1/accounts/nobody/topups", {"amount": "1.00"}, 404, "not_found"),
        ("POST", "/v1/accounts/nobody/topups", {"amount": "1.001"}, 422, "validation_error"),
        (
            "POST",
            "/v1/ledger/transactions/00000000-0000-0000-0000-000000000000/reversal",
            {"operator": "a", "reason": "b"},
            404,
            "not_found",
        ),
        ("PUT", "/v1/estates/e1", {"name": "x", "shared_basis": "by_mood"}, 422, "validation_error"),
        ("POST", "/v1/estates/nope/import", None, 404, "not_found"),
    ],
)
async def test_bad_input_gets_a_clear_problem(
    service: Service, method: str, path: str, body: Any, status: int, code: str
) -> None:
    headers = {"Idempotency-Key": uid("key-bad")}
    if path.endswith("/import"):
        response = await service.http.post(path, content=b"room\n1\n", headers={"content-type": "text/csv"})
    else:
        response = await service.http.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def test_a_move_out_before_the_move_in_is_refused(service: Service) -> None:
    _, room = await estate_with_room(service)
    await move_in(service, room, "2025-05-01")
    lease = (await service.ok("GET", f"/v1/rooms/{room}"))["leases"][0]["lease_id"]
    response = await service.http.post(f"/v1/leases/{lease}/move-out", json={"move_out": "2025-04-30"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_lease"


async def test_a_meter_moved_to_another_room_bills_each_household_for_its_days(service: Service) -> None:
    _, room_a = await estate_with_room(service)
    _, room_b = await estate_with_room(service)
    _, first = await move_in(service, room_a, "2020-01-01")
    _, second = await move_in(service, room_b, "2020-01-01")
    meter = uid("E")
    t = datetime(2026, 9, 1, tzinfo=UTC)
    await service.ok("PUT", f"/v1/rooms/{room_a}/meters/{meter}", json={"utility": "electricity"})
    await service.read(meter, t, "10")
    moved = (t + timedelta(hours=3)).isoformat()
    await service.ok(
        "PUT", f"/v1/rooms/{room_b}/meters/{meter}", json={"utility": "electricity", "effective_from": moved}
    )
    # Moving it back to a time before the move just made is refused: bindings only move forward.
    back = await service.http.put(
        f"/v1/rooms/{room_a}/meters/{meter}", json={"utility": "electricity", "effective_from": t.isoformat()}
    )
    assert back.status_code == 409
    await service.read(meter, t + timedelta(hours=4), "14")  # 3 h in room A, 1 h in room B
    assert await service.charged(first) == Decimal("3") * Decimal("0.613")
    assert await service.charged(second) == Decimal("1") * Decimal("0.613")
    room = await service.ok("GET", f"/v1/rooms/{room_a}")
    assert [m["meter_id"] for m in room["meters"]] == [meter]


async def test_two_components_each_charge_the_quantity_which_usage_and_accruals_count_once(service: Service) -> None:
    water = {"kind": "flat", "name": "水费", "unit_price": "3.00"}
    sewage = {"kind": "flat", "name": "污水处理费", "unit_price": "0.95"}
    await service.ok(
        "POST",
        "/v1/tariffs/water/versions",
        json={"effective_from": "2037-06-01T00:00:00+08:00", "components": [water, sewage]},
    )
    _, room = await estate_with_room(service)
    meter = uid("W")
    await service.ok("PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "water"})
    _, account = await move_in(service, room, "2037-06-10")
    lease = (await service.ok("GET", f"/v1/rooms/{room}"))["leases"][0]["lease_id"]
    await service.ok("POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2037-06-11"})
    leased = datetime(2037, 6, 10, 2, tzinfo=UTC)
    await service.read(meter, leased + timedelta(minutes=10), "101", Utility.WATER)
    await service.read(meter, leased + timedelta(minutes=20), "103", Utility.WATER)
    await service.read(meter, leased + timedelta(minutes=40), "104", Utility.WATER)  # same hour: adds up
    vacant = datetime(2037, 6, 10, 17, tzinfo=UTC)  # the lease ended at 16:00 UTC (local midnight)
    await service.read(meter, vacant - timedelta(minutes=50), "104", Utility.WATER)
    await service.read(meter, vacant + timedelta(minutes=30), "106", Utility.WATER)  # nobody's
    async with service.billing.engine.connect() as conn:
        usage = (
            await conn.execute(
                text("SELECT hour, quantity, cost FROM billing.usage_hourly WHERE meter_id = :m ORDER BY hour"),
                {"m": meter},
            )
        ).all()
        accruals = (
            await conn.execute(
                text("SELECT account_id, hour, quantity, amount FROM billing.accruals WHERE meter_id = :m"),
                {"m": meter},
            )
        ).all()
    # Nobody's 2 m³ over 16:10 → 17:30 are recorded in the hours they were used: 50 min and 30 min of 80.
    assert [tuple(r) for r in usage] == [
        (leased, Decimal(3), Decimal("11.85")),
        (vacant - timedelta(hours=1), Decimal("1.25"), Decimal(0)),
        (vacant, Decimal("0.75"), Decimal(0)),
    ]
    assert [tuple(r) for r in accruals] == [(account, leased, Decimal(3), Decimal("11.85"))]
    assert sorted(await service.lines(account)) == [
        ("水费", "水费", Decimal(3)),
        ("污水处理费", "污水处理费", Decimal(3)),
    ]
    assert await service.charged(account) == Decimal("11.85")
