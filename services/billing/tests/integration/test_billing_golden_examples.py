"""docs/billing.md's worked examples, executed: every fenced ```yaml block of that page whose first line is
`# golden: <title>` is run against real billing — its own database, tariffs posted through the API, the
household made through the API, each reading a batch through billing's reading pipeline, meter events
through the API, every hour posted to the ledger — and what billing did is compared with the figures the
page states. The page cannot drift from the code: change either and this fails.

The block format (docs/billing.md, "Worked examples" explains it for readers):
    tariffs:   versions of the utility in force from a local time, components as in
               POST /v1/tariffs/{utility}/versions (the default plan)
    plans:     other tariff plans: {id, estate: household | elsewhere (absent: every estate),
               class (absent: every class), versions: [{from, components}]}
    household: {via: account} or {via: room, size: N, class: residential | non_residential | common}
    utility:   electricity (default) or water
    steps:     in delivery order, local times (Asia/Shanghai):
               read YYYY-MM-DD HH:MM[:SS] VALUE [REGISTER=VALUE …]   a batch of one reading
               lost YYYY-MM-DD HH:MM[:SS] VALUE                      never delivered (for the reader)
               rollover YYYY-MM-DD HH:MM register_after=VALUE        an operator's declared rollover
               replaced YYYY-MM-DD HH:MM old_closing=VALUE new_opening=VALUE
    expect:    billed (quantity), lines ("component label quantity × price = amount", summed per
               component, label and price), charged (posted to the household, whole fen), carried
               (the remainder below a fen), held (sample times held for review), hours (usage history
               per local hour, "YYYY-MM-DD HH:00 quantity") — each optional.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
import yaml
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.app import create_app
from shuidian_billing.domain.estate_csv import CSV_COLUMNS
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import client_of
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.db import create_engine
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
PAGE = Path(__file__).resolve().parents[4] / "docs" / "billing.md"
SHANGHAI = ZoneInfo("Asia/Shanghai")
REGISTER = {Utility.ELECTRICITY: "energy_active_import_total", Utility.WATER: "water_volume_total"}
EVERYTHING_POSTED = datetime(2200, 1, 1, tzinfo=UTC)
_BLOCK = re.compile(r"^```yaml\n# golden: (?P<title>[^\n]+)\n(?P<body>.*?)^```", re.M | re.S)
_LINE = re.compile(r"^(?P<component>\S+) (?P<label>\S+) (?P<quantity>[\d.]+) × (?P<price>[\d.]+) = (?P<amount>[\d.]+)$")


@dataclass(frozen=True)
class Example:
    title: str
    spec: dict[str, Any]


def examples() -> list[Example]:
    found = [Example(m["title"].strip(), yaml.safe_load(m["body"])) for m in _BLOCK.finditer(PAGE.read_text())]
    assert len(found) >= 10, "docs/billing.md lost its worked examples"
    return found


def local(value: object) -> datetime:
    """A local (Asia/Shanghai) wall time from the page as an aware UTC instant."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=SHANGHAI).astimezone(UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=SHANGHAI).astimezone(UTC)


def decimal(value: object) -> Decimal:
    return Decimal(str(value))


@pytest.fixture(params=examples(), ids=lambda e: e.title)
def example(request: pytest.FixtureRequest) -> Example:
    assert isinstance(request.param, Example)
    return request.param


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def template(pg_server_url: str) -> AsyncIterator[str]:
    """A database with billing's schema migrated once, copied for each example (a copy takes a moment, a
    migration from empty seconds)."""
    name = f"shuidian_golden_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        engine = await migrated_engine(url, "shuidian_billing", "billing")
        await engine.dispose()  # a template must have no connections while it is copied
        yield name
    finally:
        await infra.drop_database(pg_server_url, name)


@pytest.fixture
async def app(pg_server_url: str, mqtt_url: str, template: str) -> AsyncIterator[FastAPI]:
    # Tariff versions are global and may not be replaced once in force: each example gets its own database.
    name = f"{template}_{uuid.uuid4().hex[:6]}"
    server = create_engine(pg_server_url, pool_size=1)
    try:
        async with server.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            )
    finally:
        await server.dispose()
    try:
        settings = BillingSettings(
            environment="test",
            database_url=SecretStr(infra.with_database(pg_server_url, name)),
            mqtt_url=mqtt_url,
            mqtt_clean_session=True,
            instance_id=f"golden-{uuid.uuid4().hex[:6]}",
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            yield app
    finally:
        await infra.drop_database(pg_server_url, name)


async def ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


@dataclass(frozen=True)
class Household:
    account: str
    estate: str | None  # a leased room's estate; None for a meter bound straight to an account


async def household(client: httpx.AsyncClient, spec: dict[str, Any], utility: Utility, meter: str) -> Household:
    """The account that pays for `meter`: bound straight to it, or a room's lease (CSV import), the room of the
    customer class the spec names (residential unless it says otherwise)."""
    if spec.get("via", "account") == "account":
        account = f"acc-{uuid.uuid4().hex[:8]}"
        await ok(client, "PUT", f"/v1/accounts/{account}", json={"name": "甲"})
        await ok(client, "PUT", f"/v1/meters/{meter}/binding", json={"account_id": account, "utility": utility.value})
        return Household(account, None)
    estate = f"est-{uuid.uuid4().hex[:6]}"
    await ok(client, "PUT", f"/v1/estates/{estate}", json={"name": "示例小区"})
    electricity, water = (meter, "") if utility is Utility.ELECTRICITY else ("", meter)
    csv = ",".join(CSV_COLUMNS) + "\n"
    csv += f"1,1,101,1-101,60.00,{spec['size']},{electricity},{water},t-{estate},乙,13800000000,2020-01-01\n"
    await ok(client, "POST", f"/v1/estates/{estate}/import", content=csv.encode(), headers={"content-type": "text/csv"})
    scope = await ok(client, "GET", f"/v1/tenants/t-{estate}/scope")
    (account,) = scope["accounts"]
    (room,) = scope["rooms"]
    assert isinstance(account, str)
    if "class" in spec:
        await ok(client, "PUT", f"/v1/rooms/{room}/customer-class", json={"customer_class": spec["class"]})
    return Household(account, estate)


async def plans(client: httpx.AsyncClient, specs: list[dict[str, Any]], utility: Utility, home: Household) -> None:
    """Tariff plans beside the default one: `estate` is `household` (the household's estate), `elsewhere` (another
    estate) or absent (every estate); `class` a customer class or absent (every class)."""
    elsewhere = f"est-{uuid.uuid4().hex[:6]}"
    if any(plan.get("estate") == "elsewhere" for plan in specs):
        await ok(client, "PUT", f"/v1/estates/{elsewhere}", json={"name": "别的小区"})
    for plan in specs:
        estate = {"household": home.estate, "elsewhere": elsewhere, None: None}[plan.get("estate")]
        body = {"name": plan["id"], "estate_id": estate, "customer_class": plan.get("class")}
        await ok(client, "PUT", f"/v1/tariff-plans/{plan['id']}", json=body)
        for version in plan["versions"]:
            body = {"effective_from": local(version["from"]).isoformat(), "components": version["components"]}
            await ok(client, "POST", f"/v1/tariff-plans/{plan['id']}/versions/{utility.value}", json=body)


async def run(app: FastAPI, client: httpx.AsyncClient, example: Example) -> str:
    spec = example.spec
    utility = Utility(spec.get("utility", "electricity"))
    for version in spec["tariffs"]:
        body = {"effective_from": local(version["from"]).isoformat(), "components": version["components"]}
        await ok(client, "POST", f"/v1/tariffs/{utility.value}/versions", json=body)
    meter = f"M-{uuid.uuid4().hex[:8]}"
    home = await household(client, spec.get("household", {}), utility, meter)
    await plans(client, spec.get("plans", []), utility, home)
    billing: Billing = app.state.container.billing
    for step in spec["steps"]:
        kind, day, clock, *rest = str(step).split()
        at = local(f"{day} {clock}")
        if kind == "read":
            value, *extra = rest
            registers = {REGISTER[utility]: Decimal(value)} | {
                name: Decimal(v) for name, v in (item.split("=") for item in extra)
            }
            reading = Reading.create(meter, utility, at, registers=registers)
            await billing.readings.on_readings(ReadingBatch(source="golden", gateway_id="g", readings=(reading,)), "")
        elif kind == "lost":
            continue
        elif kind in ("rollover", "replaced"):
            fields = dict(item.split("=") for item in rest)
            body = {"kind": kind, "at": at.isoformat(), "reason": example.title}
            if kind == "rollover":
                body["register_after"] = fields["register_after"]
            else:
                body |= {"old_closing_register": fields["old_closing"], "new_opening_register": fields["new_opening"]}
            await ok(client, "POST", f"/v1/meters/{meter}/events", json=body)
        else:
            pytest.fail(f"unknown step {step!r} in {example.title}")
    await billing.poster.flush(before=EVERYTHING_POSTED)
    return meter + " " + home.account


async def test_the_worked_example_holds(app: FastAPI, example: Example) -> None:
    async with client_of(app) as client:
        meter, account = (await run(app, client, example)).split()
    expect = example.spec["expect"]
    billing: Billing = app.state.container.billing
    async with billing.engine.connect() as conn:
        usage = (
            await conn.execute(
                text("SELECT hour, quantity FROM billing.usage_hourly WHERE meter_id = :m ORDER BY hour"), {"m": meter}
            )
        ).all()
        lines = (
            await conn.execute(
                text(
                    "SELECT component, label, unit_price, sum(quantity) AS q, sum(amount) AS a FROM billing.charge_lines "
                    "WHERE meter_id = :m GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                ),
                {"m": meter},
            )
        ).all()
        posted = (
            await conn.execute(
                text("SELECT coalesce(-sum(amount), 0) FROM billing.ledger_entries WHERE ledger_account LIKE :h"),
                {"h": f"household:{account}%"},
            )
        ).scalar_one()
        carried = (
            await conn.execute(
                text("SELECT coalesce(sum(remainder), 0) FROM billing.carries WHERE meter_id = :m"), {"m": meter}
            )
        ).scalar_one()
        held = (
            (
                await conn.execute(
                    text("SELECT sampled_at FROM billing.held_readings WHERE meter_id = :m ORDER BY sampled_at"),
                    {"m": meter},
                )
            )
            .scalars()
            .all()
        )
    if "billed" in expect:
        assert sum((q for _, q in usage), Decimal(0)) == decimal(expect["billed"]), "billed quantity"
    if "lines" in expect:
        wanted = []
        for line in expect["lines"]:
            parsed = _LINE.match(str(line))
            assert parsed, f"malformed line {line!r}"
            wanted.append(
                (parsed["component"], parsed["label"], *(decimal(parsed[k]) for k in ("price", "quantity", "amount")))
            )
        assert sorted(wanted) == sorted((r.component, r.label, r.unit_price, r.q, r.a) for r in lines), "charge lines"
    if "charged" in expect:
        assert posted == decimal(expect["charged"]), "charged to the household, whole fen"
    if "carried" in expect:
        assert carried == decimal(expect["carried"]), "remainder carried below a fen"
    if "held" in expect:
        assert [t.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S") for t in held] == [
            local(v).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S") for v in expect["held"]
        ], "held readings"
    if "hours" in expect:
        booked = {h.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:00"): q for h, q in usage}
        stated = {" ".join(str(e).split()[:2]): decimal(str(e).split()[2]) for e in expect["hours"]}
        assert booked == stated, "usage history per local hour"
