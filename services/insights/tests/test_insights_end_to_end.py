"""End to end over real sockets: billing (rooms, lease, TOU tariff) and insights on real PostgreSQL and a
real broker. A month of simulated hourly readings goes through the readings topic; insights archives every
register value (a replayed batch changes nothing), the nightly job derives frozen values and profiles, and
the tenant's report names the household's real base load and peak share. Reading history answers by meter
and by room, as JSON and CSV, and the query for a meter's year uses the archive's index."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_billing.app import create_app as create_billing
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_insights.app import create_app
from shuidian_insights.settings import InsightsSettings
from shuidian_kit.db import create_engine
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
TZ = ZoneInfo("Asia/Shanghai")
REGISTER = "energy_active_import_total"
BASE_KW = Decimal("0.3")
EVENING_EXTRA = Decimal("1.2")  # 18:00–22:00, inside the 峰 rate
DAYS = 40  # more than a month, so the last whole month always has use
TOU = [
    {
        "kind": "tou",
        "rates": [{"label": "峰", "unit_price": "0.80"}, {"label": "谷", "unit_price": "0.30"}],
        "segments": [{"start": "08:00", "rate": "峰"}, {"start": "22:00", "rate": "谷"}],
    }
]


@dataclass
class Stack:
    billing: httpx.AsyncClient
    insights: httpx.AsyncClient
    database_url: str
    meter: str
    room: str
    account: str
    first_day: date
    today: date


def use_in(hour: int) -> Decimal:
    return BASE_KW + (EVENING_EXTRA if 18 <= hour < 22 else Decimal(0))


def month_of_readings(meter: str, first_day: date) -> list[ReadingBatch]:
    """Hourly samples of the cumulative register, from the local midnight before `first_day` for DAYS days."""
    start = datetime.combine(first_day, datetime.min.time(), TZ)
    value = Decimal("1000")
    readings = [Reading.create(meter, Utility.ELECTRICITY, start.astimezone(UTC), registers={REGISTER: value})]
    for index in range(DAYS * 24):
        at = start + timedelta(hours=index + 1)
        value += use_in((at - timedelta(hours=1)).hour)
        readings.append(Reading.create(meter, Utility.ELECTRICITY, at.astimezone(UTC), registers={REGISTER: value}))
    return [
        ReadingBatch(source="collector-test", gateway_id="GW-INS", readings=tuple(readings[i : i + 48]))
        for i in range(0, len(readings), 48)
    ]


async def ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(pg_server_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    tag = uuid.uuid4().hex[:6]
    name = f"shuidian_insights_{tag}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    billing_port, insights_port = free_port(), free_port()
    common: dict[str, Any] = {
        "environment": "test",
        "database_url": SecretStr(url),
        "mqtt_url": mqtt_url,
        "mqtt_clean_session": True,
    }
    billing_app = create_billing(BillingSettings(**common, instance_id=f"b-{tag}", http_port=billing_port))
    insights_app = create_app(
        InsightsSettings(
            **common,
            instance_id=f"i-{tag}",
            http_port=insights_port,
            billing_url=f"http://127.0.0.1:{billing_port}",
            job_interval_seconds=3600,
        )
    )
    today = datetime.now(TZ).date()
    try:
        async with serve_ready(billing_app, billing_port) as billing:
            meter, room = f"M-{tag}", f"R-{tag}"
            await ok(billing, "PUT", f"/v1/estates/E-{tag}", json={"name": "小区"})
            await ok(billing, "PUT", f"/v1/buildings/B-{tag}", json={"estate_id": f"E-{tag}", "name": "1栋"})
            await ok(billing, "PUT", f"/v1/floors/F-{tag}", json={"building_id": f"B-{tag}", "level": 1})
            await ok(
                billing,
                "PUT",
                f"/v1/rooms/{room}",
                json={"floor_id": f"F-{tag}", "code": f"C{tag}", "area_m2": "60.00", "household_size": 3},
            )
            await ok(billing, "PUT", f"/v1/rooms/{room}/meters/{meter}", json={"utility": "electricity"})
            await ok(billing, "PUT", f"/v1/tenants/T-{tag}", json={"name": "张三", "phone": "13800000000"})
            lease = await ok(
                billing,
                "PUT",
                f"/v1/leases/L-{tag}",
                json={"tenant_id": f"T-{tag}", "room_id": room, "move_in": "2020-01-01"},
            )
            await ok(
                billing,
                "POST",
                "/v1/tariffs/electricity/versions",
                json={"effective_from": "2020-01-01T00:00:00+08:00", "components": TOU},
            )
            async with serve_ready(insights_app, insights_port) as insights:
                yield Stack(
                    billing,
                    insights,
                    url,
                    meter,
                    room,
                    lease["account_id"],
                    today - timedelta(days=DAYS),
                    today,
                )
    finally:
        await infra.drop_database(pg_server_url, name)


async def count_archived(stack: Stack) -> int:
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return int(
                await conn.scalar(
                    text("SELECT count(*) FROM insights.readings WHERE meter_id = :m"), {"m": stack.meter}
                )
                or 0
            )
    finally:
        await engine.dispose()


async def test_a_month_of_readings_becomes_the_tenants_report(stack: Stack, mqtt_url: str) -> None:
    batches = month_of_readings(stack.meter, stack.first_day)
    expected = sum(len(b.readings) for b in batches)
    messages = [(topics.readings(b.gateway_id), b) for b in batches]
    await publish(mqtt_url, *messages, *messages[:3])  # the first batches twice: a replay changes nothing

    async def archived() -> bool:
        return await count_archived(stack) == expected

    await eventually(archived, "every sample archived once", timeout=60)

    async def known() -> bool:
        response = await stack.insights.get(f"/v1/households/{stack.account}/report")
        return response.status_code == 200

    await eventually(known, "the household from billing's occupancy", timeout=30)
    done = await ok(stack.insights, "POST", "/v1/jobs/nightly/run")
    assert done["days"] >= DAYS
    again = await ok(stack.insights, "POST", "/v1/jobs/nightly/run")
    assert again["days"] == 0  # resumable: done days are not run again

    report = await ok(stack.insights, "GET", f"/v1/households/{stack.account}/report")
    items = {item["code"]: item for item in report["items"]}
    assert items["base_load"]["figures"]["base_load_kw"] == "0.300"
    daily = BASE_KW * 24 + EVENING_EXTRA * 4
    peak_daily = BASE_KW * 14 + EVENING_EXTRA * 4
    assert items["peak_share"]["figures"]["peak_share_pct"] == str((peak_daily * 100 / daily).quantize(Decimal("1")))
    assert Decimal(items["peak_share"]["saving_per_month"]) == (
        peak_daily * 30 * Decimal("0.2") * Decimal("0.5")
    ).quantize(Decimal("0.01"))
    assert "峰" in items["peak_share"]["text_zh"]
    assert "comparison" not in items  # no similar homes known yet: nothing claimed


async def test_re_pricing_under_the_current_tariff_reproduces_billings_charges_to_the_fen(stack: Stack) -> None:
    last_month = stack.today.replace(day=1) - timedelta(days=1)
    start = datetime.combine(last_month.replace(day=1), datetime.min.time(), TZ)
    end = datetime.combine(stack.today.replace(day=1), datetime.min.time(), TZ)

    async def billed() -> dict[str, Any] | None:
        usage = await ok(
            stack.billing,
            "GET",
            f"/v1/accounts/{stack.account}/usage",
            params={"granularity": "month", "start": start.isoformat(), "end": end.isoformat()},
        )
        return usage if usage["buckets"] else None

    usage = await eventually(billed, "billing's charges for last month", timeout=60)
    charged = sum((Decimal(b["cost"]) for b in usage["buckets"]), Decimal(0))
    estate = (await ok(stack.insights, "GET", f"/v1/households/{stack.account}/report"))["estate_id"]
    same = await ok(
        stack.insights,
        "POST",
        "/v1/what-if",
        json={"utility": "electricity", "months": 1, "estate_id": estate, "proposed": {"components": TOU}},
    )
    assert same["households"] == 1
    assert Decimal(same["current_revenue"]) == charged.quantize(Decimal("0.01"), rounding="ROUND_DOWN") > 0
    assert Decimal(same["revenue_change"]) == 0
    flat = {"components": [{"kind": "flat", "unit_price": "0.80"}]}
    dearer = await ok(
        stack.insights,
        "POST",
        "/v1/what-if",
        json={"utility": "electricity", "months": 1, "estate_id": estate, "proposed": flat},
    )
    assert (dearer["pay_more"], dearer["pay_less"]) == (1, 0)
    bad = await stack.insights.post("/v1/what-if", json={"utility": "electricity", "proposed": {"components": []}})
    assert bad.status_code == 422


async def test_the_report_compares_with_similar_homes_of_the_estate(stack: Stack) -> None:
    report = await ok(stack.insights, "GET", f"/v1/households/{stack.account}/report")
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            household = (
                await conn.execute(
                    text("SELECT * FROM insights.households WHERE account_id = :a"), {"a": stack.account}
                )
            ).one()
            month = (stack.today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
            own = await conn.scalar(
                text("SELECT total FROM insights.monthly_profiles WHERE meter_id = :m AND month = :month"),
                {"m": stack.meter, "month": month},
            )
            # Six homes like this one (area 60 ± 20 %, 2–4 persons) and one far bigger that must not count.
            for i, (area, size, total) in enumerate(
                [(55, 3, 100), (60, 2, 110), (65, 4, 120), (70, 3, 130), (50, 3, 140), (60, 3, 150), (200, 3, 999)]
            ):
                await conn.execute(
                    text("INSERT INTO insights.households VALUES (:a, :e, :r, NULL, true, :b, :area, :size, now());"),
                    {
                        "a": f"PEER{i}-{stack.account}",
                        "e": household.estate_id,
                        "r": f"PR{i}",
                        "b": household.building_id,
                        "area": area,
                        "size": size,
                    },
                )
                await conn.execute(
                    text("INSERT INTO insights.household_meters VALUES (:m, :a, :r, 'electricity')"),
                    {"m": f"PM{i}-{stack.meter}", "a": f"PEER{i}-{stack.account}", "r": f"PR{i}"},
                )
                await conn.execute(
                    text("INSERT INTO insights.monthly_profiles VALUES (:m, :month, :hours, 30, :total)"),
                    {
                        "m": f"PM{i}-{stack.meter}",
                        "month": month,
                        "hours": [Decimal(total)] + [Decimal(0)] * 23,
                        "total": total,
                    },
                )
    finally:
        await engine.dispose()
    assert household.area_m2 == Decimal("60.00")  # billing's room, read by insights
    assert "comparison" not in {item["code"] for item in report["items"]}
    report = await ok(stack.insights, "GET", f"/v1/households/{stack.account}/report")
    item = next(item for item in report["items"] if item["code"] == "comparison")
    assert item["inputs"]["peers"] == "6"
    assert item["inputs"]["month"] == month
    # Median of 100..150 is 125, the 20th percentile 110.
    assert item["figures"]["similar_median"] == "125.000"
    assert item["figures"]["efficient_p20"] == "110.000"
    assert item["figures"]["own"] == str(own.quantize(Decimal("0.001")))
    # The month's habits: the peers share one shape, this household has its own evening peak.
    habits = await ok(stack.insights, "GET", "/v1/habits", params={"month": month, "estate_id": household.estate_id})
    assert habits["k"] == 2
    assert sorted(c["households"] for c in habits["clusters"]) == [1, 7]
    assert all(c["peak_share"] is not None for c in habits["clusters"])
    shares = [Decimal(habits[k]) for k in ("peak_share", "flat_share", "valley_share")]
    assert sum(shares) == pytest.approx(Decimal(1), abs=Decimal("0.002"))
    trends = await ok(stack.insights, "GET", "/v1/trends", params={"estate_id": household.estate_id})
    assert month in [t["period"] for t in trends]
    exported = await stack.insights.get("/v1/trends", params={"estate_id": household.estate_id, "format": "csv"})
    assert exported.text.splitlines()[0] == "period,quantity,mom_pct,yoy_pct"
    assert len(exported.text.splitlines()) == len(trends) + 1


async def test_reading_history_by_meter_and_room_as_json_and_csv(stack: Stack) -> None:
    start = datetime.combine(stack.first_day, datetime.min.time(), TZ)
    params = {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()}
    by_meter = await ok(stack.insights, "GET", "/v1/readings/history", params={**params, "meter_id": stack.meter})
    assert len(by_meter["raw"]) == 24  # the first midnight up to, not including, the next one
    assert by_meter["raw"][0]["value"] == "1000"
    by_room = await ok(stack.insights, "GET", "/v1/readings/history", params={**params, "room_id": stack.room})
    assert by_room["raw"] == by_meter["raw"]
    csv = await stack.insights.get("/v1/readings/history", params={**params, "meter_id": stack.meter, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "meter_id,register_name,read_at,value,reading_id"
    assert len(csv.text.splitlines()) == 25
    daily = await ok(
        stack.insights,
        "GET",
        "/v1/readings/history",
        params={
            "kind": "day",
            "meter_id": stack.meter,
            "start": start.isoformat(),
            "end": (start + timedelta(days=3)).isoformat(),
        },
    )
    # Each local midnight's 日冻结 is traced to the sample taken then.
    first = daily["frozen"][0]
    assert (first["value"], first["read_at"]) == ("1000", start.astimezone(UTC).isoformat().replace("+00:00", "Z"))
    bad = await stack.insights.get("/v1/readings/history", params={**params})
    assert bad.status_code == 422


async def test_a_meters_year_is_read_through_the_index(stack: Stack) -> None:
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            # Other meters' samples over the same month, as a real archive holds (a table of one meter
            # is read fastest without an index).
            await conn.execute(
                text(
                    "INSERT INTO insights.readings SELECT 'OTHER-' || m, :r, t, m, gen_random_uuid() "
                    "FROM generate_series(1, 300) m, generate_series(:s, :e, interval '1 hour') t ON CONFLICT DO NOTHING"
                ),
                {
                    "r": REGISTER,
                    "s": datetime.combine(stack.first_day, datetime.min.time(), TZ) + timedelta(minutes=7),
                    "e": datetime.combine(stack.today, datetime.min.time(), TZ),
                },
            )
            await conn.execute(text("ANALYZE insights.readings"))
            plan = "\n".join(
                (
                    await conn.scalars(
                        text(
                            "EXPLAIN SELECT * FROM insights.readings WHERE meter_id = :m "
                            "AND read_at >= now() - interval '1 year' AND read_at < now()"
                        ),
                        {"m": stack.meter},
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    assert "Index" in plan, plan
    assert "Seq Scan" not in plan, plan
