"""A lease from move-in to settlement against real PostgreSQL and a real broker: the retained room
occupancy after every premises change, fixed fees pro-rated by leased days (the monthly run and the
settlement never charge the same days twice), and the move-out settlement — final readings (the
meter's own or a staff-entered closing value), final bill, refund, arrears, idempotent replay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.occupancy import REPUBLISH_CHUNK, RoomOccupancies
from shuidian_billing.adapters.premises import local_midnight
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, RoomOccupancy, Utility

pytestmark = pytest.mark.integration
CST = timedelta(hours=8)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "lifecycle") as app:
        # This module's prices since 2020: electricity 1.00/kWh plus a 31.00 monthly service fee
        # (so a fee share is plain to read: 12 of 31 days = 12.00), water 5.00/m³.
        async with app.state.container.runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.tariffs (utility, unit_price, components, effective_from) VALUES "
                    "('electricity', NULL, CAST(:c AS jsonb), '2020-01-01T00:00:00+08:00'), "
                    "('water', 5.00, NULL, '2020-01-01T00:00:00+08:00')"
                ),
                {
                    "c": '[{"kind": "flat", "name": "flat", "unit_price": "1.00"}, '
                    '{"kind": "fixed", "name": "service_fee", "amount_per_month": "31.00"}]'
                },
            )
        yield app


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as client:
        yield client


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def local(day: str, hour: int = 0) -> datetime:
    """A local (UTC+8) wall-clock instant as an aware UTC datetime."""
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC) - CST


async def ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


async def estate(client: httpx.AsyncClient) -> tuple[str, str]:
    """An estate with one building and floor; returns (estate, floor)."""
    estate_id, building, floor = uid("est"), uid("b"), uid("f")
    await ok(client, "PUT", f"/v1/estates/{estate_id}", json={"name": "阳光苑"})
    await ok(client, "PUT", f"/v1/buildings/{building}", json={"estate_id": estate_id, "name": "1栋"})
    await ok(client, "PUT", f"/v1/floors/{floor}", json={"building_id": building, "level": 3})
    return estate_id, floor


async def room(client: httpx.AsyncClient, floor: str) -> str:
    room_id = uid("r")
    await ok(client, "PUT", f"/v1/rooms/{room_id}", json={"floor_id": floor, "code": uid("C"), "area_m2": "40.00"})
    return room_id


async def move_in(client: httpx.AsyncClient, room_id: str, day: str) -> tuple[str, str, str]:
    """Returns (tenant, lease, account)."""
    tenant, lease = uid("t"), uid("L")
    await ok(client, "PUT", f"/v1/tenants/{tenant}", json={"name": "张三"})
    out = await ok(client, "PUT", f"/v1/leases/{lease}", json={"tenant_id": tenant, "room_id": room_id, "move_in": day})
    return tenant, lease, str(out["account_id"])


async def read(app: FastAPI, meter: str, at: datetime, value: str, utility: Utility = Utility.ELECTRICITY) -> None:
    register = "energy_active_import_total" if utility is Utility.ELECTRICITY else "water_volume_total"
    reading = Reading.create(meter, utility, at, registers={register: Decimal(value)})
    billing: Billing = app.state.container.billing
    await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=(reading,)), "")


async def retained(mqtt_url: str, room_id: str, until: Callable[[RoomOccupancy], bool]) -> RoomOccupancy:
    """The room's retained occupancy as a fresh subscriber gets it, once it satisfies `until`."""
    address = BrokerAddress.parse(mqtt_url)
    last: RoomOccupancy | None = None
    async with asyncio.timeout(15):
        while True:
            async with aiomqtt.Client(address.host, address.port) as mqtt:
                await mqtt.subscribe(topics.room_occupancy(room_id), qos=1)
                try:
                    async with asyncio.timeout(1):
                        async for message in mqtt.messages:
                            if not message.retain:
                                break  # published live while subscribing: look again as a fresh subscriber
                            assert isinstance(message.payload, bytes)
                            last = RoomOccupancy.model_validate_json(message.payload)
                            break
                except TimeoutError:
                    pass
            if last is not None and until(last):
                return last
            await asyncio.sleep(0.1)


def meters_of(state: RoomOccupancy) -> list[tuple[str, str]]:
    return [(m.meter_id, m.utility.value) for m in state.meters]


# --- occupancy --------------------------------------------------------------------------------------


async def test_room_occupancy_is_retained_after_every_premises_change(
    app: FastAPI, client: httpx.AsyncClient, mqtt_url: str
) -> None:
    estate_id, floor = await estate(client)
    first, second = await room(client, floor), await room(client, floor)
    meter, water = uid("E"), uid("W")

    await ok(client, "PUT", f"/v1/rooms/{first}/meters/{meter}", json={"utility": "electricity"})
    vacant = await retained(mqtt_url, first, lambda s: bool(s.meters))
    assert (vacant.room_id, vacant.estate_id, vacant.leased, vacant.lease_id, vacant.account_id) == (
        first,
        estate_id,
        False,
        None,
        None,
    )
    assert meters_of(vacant) == [(meter, "electricity")]

    tenant, lease, account = await move_in(client, first, "2024-01-01")
    leased = await retained(mqtt_url, first, lambda s: s.leased)
    assert (leased.lease_id, leased.account_id, leased.tenant_id) == (lease, account, tenant)
    assert leased.since == local("2024-01-01")

    await ok(client, "PUT", f"/v1/rooms/{first}/meters/{water}", json={"utility": "water"})
    both = await retained(mqtt_url, first, lambda s: len(s.meters) == 2)
    assert sorted(meters_of(both)) == sorted([(meter, "electricity"), (water, "water")])
    assert both.leased

    # The electricity meter moves to the second room: both rooms are announced.
    await ok(client, "PUT", f"/v1/rooms/{second}/meters/{meter}", json={"utility": "electricity"})
    assert meters_of(await retained(mqtt_url, first, lambda s: len(s.meters) == 1)) == [(water, "water")]
    assert meters_of(await retained(mqtt_url, second, lambda s: bool(s.meters))) == [(meter, "electricity")]

    # The water meter becomes a common meter (公摊): the room has none left.
    await ok(client, "PUT", f"/v1/estates/{estate_id}/common-meters/{water}", json={"utility": "water"})
    assert (await retained(mqtt_url, first, lambda s: not s.meters)).leased

    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-06-01"})
    out = await retained(mqtt_url, first, lambda s: not s.leased)
    assert (out.since, out.lease_id, out.account_id, out.tenant_id, out.meters) == (
        local("2024-06-01"),
        None,
        None,
        None,
        (),
    )


async def test_a_fresh_broker_gets_every_room_back_and_dated_changes_are_announced_when_due(
    app: FastAPI, client: httpx.AsyncClient, mqtt_url: str
) -> None:
    _, floor = await estate(client)
    room_id = await room(client, floor)
    meter = uid("E")
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{meter}", json={"utility": "electricity"})
    await retained(mqtt_url, room_id, lambda s: bool(s.meters))
    # The broker loses its retained state (an empty retained payload clears it) …
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as mqtt:
        await mqtt.publish(topics.room_occupancy(room_id), b"", qos=1, retain=True)
    # … and the ops endpoint republishes every room.
    republished = await ok(client, "POST", "/v1/rooms/occupancy/republish")
    assert republished["rooms"] >= 1
    assert meters_of(await retained(mqtt_url, room_id, lambda s: bool(s.meters))) == [(meter, "electricity")]

    # A move-in dated tomorrow leaves the room vacant now; the transition pass announces it when due.
    tomorrow = datetime.now(UTC).astimezone(CHINA_STANDARD_TIME).date() + timedelta(days=1)
    _, lease, _ = await move_in(client, room_id, tomorrow.isoformat())
    await asyncio.sleep(0.5)
    assert not (await retained(mqtt_url, room_id, lambda s: True)).leased
    occupancy: RoomOccupancies = app.state.container.occupancy
    due = local_midnight(tomorrow)
    assert await occupancy.publish_transitions(due - timedelta(minutes=1), due) >= 1
    state = await retained(mqtt_url, room_id, lambda s: s.leased)
    assert (state.lease_id, state.since) == (lease, due)

    # A meter bound straight to an account elsewhere (the original binding route) leaves the room: the
    # transition pass sees the room binding end and announces the room without it.
    before = datetime.now(UTC)
    account = uid("acc")
    await ok(client, "PUT", f"/v1/accounts/{account}", json={"name": "直接绑定"})
    await ok(client, "PUT", f"/v1/meters/{meter}/binding", json={"account_id": account, "utility": "electricity"})
    assert await occupancy.publish_transitions(before, datetime.now(UTC)) >= 1
    assert (await retained(mqtt_url, room_id, lambda s: not s.meters)).meters == ()


# --- settlement and pro-rated fees ------------------------------------------------------------------


async def settle(client: httpx.AsyncClient, lease: str, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        f"/v1/leases/{lease}/settlement", json={"operator": "经理-王", **body}, headers={"Idempotency-Key": key}
    )


async def test_move_out_settlement_bills_the_final_reading_and_fees_then_refunds_the_rest(
    app: FastAPI, client: httpx.AsyncClient, mqtt_url: str
) -> None:
    estate_id, floor = await estate(client)
    room_id = await room(client, floor)
    meter = uid("E")
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{meter}", json={"utility": "electricity"})
    _, lease, account = await move_in(client, room_id, "2024-03-20")
    await ok(
        client,
        "POST",
        f"/v1/accounts/{account}/topups",
        json={"amount": "100.00", "channel": "cash"},
        headers={"Idempotency-Key": uid("topup")},
    )
    await ok(
        client,
        "POST",
        f"/v1/accounts/{account}/subsidies",
        json={"amount": "3.00", "program": "低保"},
        headers={"Idempotency-Key": uid("subsidy")},
    )
    await read(app, meter, local("2024-03-20"), "100")
    await read(app, meter, local("2024-04-01"), "120")  # 20 kWh in March
    march = await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-03/run")
    assert march["fixed_fees"] == {account: "12.00"}  # in on the 20th: 12 of 31 days
    await read(app, meter, local("2024-04-10"), "129")  # 9 kWh

    # Until a reading after the move-out instant arrives, the settlement is refused and changes nothing.
    missing = problem(await settle(client, lease, uid("key"), move_out="2024-04-11"), 409, "final_reading_missing")
    assert meter in missing["detail"]
    assert (await ok(client, "GET", f"/v1/rooms/{room_id}"))["leases"][0]["move_out"] is None

    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-04-11"})
    _, next_lease, next_account = await move_in(client, room_id, "2024-04-11")
    await read(app, meter, local("2024-04-12"), "133")  # 4 kWh over two days: 2 each side of the move

    key = uid("settle")
    response = await settle(client, lease, key)
    assert response.status_code == 201, response.text
    done = response.json()
    assert done["final_readings"] == [
        {
            "meter_id": meter,
            "utility": "electricity",
            "source": "meter",
            "value": "133.000000",
            "sampled_at": local("2024-04-12").isoformat().replace("+00:00", "Z"),
            "operator": None,
            "billed_through_register": "133.000000",
        }
    ]
    bill = done["final_bill"]
    assert (bill["period_start"], bill["period_end"]) == (
        local("2024-04-01").isoformat().replace("+00:00", "Z"),
        local("2024-04-11").isoformat().replace("+00:00", "Z"),
    )
    assert [(c["utility"], Decimal(c["quantity"]), Decimal(c["amount_exact"])) for c in bill["consumption"]] == [
        ("electricity", Decimal(11), Decimal(11))  # 9 + 2 kWh in April
    ]
    # April 1–10: 10 of 30 days of 31.00 = 10.333…: 10.33 posted, the rest carried.
    assert bill["fixed_fees"] == [
        {
            "month": "2024-04",
            "utility": "electricity",
            "component": "service_fee",
            "days": 10,
            "days_in_month": 30,
            "amount": "10.33",
            "posted_by": "settlement",
        }
    ]
    # 100 paid + 3 subsidy − 31 kWh − 12.00 − 10.33 = 49.67, all of it paid credit: refunded in cash.
    refund = done["refund"]
    assert (refund["refunded"], refund["not_refunded"], refund["subsidy_kept"]) == ("49.67", "0.00", "0.00")
    assert [(r["channel"], r["amount"]) for r in refund["refunds"]] == [("cash", "49.67")]
    assert done["closing_balance"]["paid"] == "0.00"
    assert (done["arrears"], done["replayed"]) == ("0.00", False)
    view = await ok(client, "GET", f"/v1/accounts/{account}")
    assert (view["balance"], view["paid_balance"]) == ("0.00", "0.00")

    # A replay returns the same settlement; another key or another body is refused.
    again = await settle(client, lease, key)
    assert again.status_code == 200
    assert again.json() == {**done, "replayed": True}
    assert (await ok(client, "GET", f"/v1/leases/{lease}/settlement")) == {**done, "replayed": True}
    problem(await settle(client, lease, uid("other")), 409, "lease_settled")
    problem(await settle(client, lease, key, move_out="2024-04-11"), 409, "idempotency_conflict")

    # April's run charges the next household its 20 days and never the settled lease's 10 again:
    # 10.33 + 20.66 = 30.99, the whole fee less the fen cut toward zero.
    april = await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-04/run")
    assert april["fixed_fees"] == {next_account: "20.66"}
    assert [(x["lease_id"], x["days"], x["amount"]) for x in april["fixed_fee_lines"]] == [(next_lease, 20, "20.66")]
    async with app.state.container.runtime.engine.connect() as conn:
        fees = (
            await conn.execute(
                text(
                    "SELECT lease_id, to_char(month, 'YYYY-MM') AS m, amount FROM billing.fee_postings "
                    "WHERE lease_id = ANY(:l) ORDER BY month, lease_id"
                ),
                {"l": [lease, next_lease]},
            )
        ).all()
        ledger = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(amount), 0) FROM billing.ledger_entries "
                    "WHERE ledger_account LIKE :h AND kind = 'fixed_fee'"
                ),
                {"h": f"household:{account}%"},
            )
        ).scalar_one()
    assert {(f.lease_id, f.m): f.amount for f in fees} == {
        (lease, "2024-03"): Decimal("12.00"),
        (lease, "2024-04"): Decimal("10.33"),
        (next_lease, "2024-04"): Decimal("20.66"),
    }
    assert ledger == Decimal("-22.33")  # charged once each month


async def test_a_closing_value_is_billed_like_a_reading_and_arrears_stay_owed(
    app: FastAPI, client: httpx.AsyncClient, mqtt_url: str
) -> None:
    _, floor = await estate(client)
    room_id = await room(client, floor)
    meter, water = uid("E"), uid("W")
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{meter}", json={"utility": "electricity"})
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{water}", json={"utility": "water"})
    _, lease, account = await move_in(client, room_id, "2024-05-01")
    await ok(
        client,
        "POST",
        f"/v1/accounts/{account}/topups",
        json={"amount": "10.00", "channel": "cash"},
        headers={"Idempotency-Key": uid("topup")},
    )
    await read(app, meter, local("2024-05-01"), "0")
    await read(app, meter, local("2024-05-20"), "50")
    await read(app, water, local("2024-05-01"), "10", Utility.WATER)
    # The move-out is recorded before the meter's next reading, which then splits at the move-out instant.
    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-05-21"})
    await read(app, meter, local("2024-05-22"), "60")  # 10 kWh over two days: 5 before the move-out

    key = uid("settle")
    missing = problem(await settle(client, lease, key, move_out="2024-05-21"), 409, "final_reading_missing")
    assert water in missing["detail"]
    assert meter not in missing["detail"]
    unknown = [{"meter_id": uid("X"), "value": "1"}]
    problem(await settle(client, lease, key, move_out="2024-05-21", closing_readings=unknown), 422, "unknown_meter")
    below = [{"meter_id": water, "value": "9.5"}]
    problem(
        await settle(client, lease, key, move_out="2024-05-21", closing_readings=below),
        422,
        "closing_value_below_register",
    )
    already = [{"meter_id": meter, "value": "70"}, {"meter_id": water, "value": "12.5"}]
    problem(
        await settle(client, lease, key, move_out="2024-05-21", closing_readings=already), 409, "final_reading_present"
    )
    closing = [{"meter_id": water, "value": "12.5"}]
    response = await settle(client, lease, key, move_out="2024-05-21", closing_readings=closing)
    assert response.status_code == 201, response.text
    done = response.json()
    readings = {r["meter_id"]: r for r in done["final_readings"]}
    assert readings[water] == {
        "meter_id": water,
        "utility": "water",
        "source": "closing_value",
        "value": "12.500000",
        "sampled_at": local("2024-05-21").isoformat().replace("+00:00", "Z"),
        "operator": infra.TEST_SUBJECT,  # who entered it: the caller's credential, not the body's operator
        "billed_through_register": "12.500000",
    }
    assert (readings[meter]["source"], readings[meter]["value"]) == ("meter", "60.000000")
    # 55 kWh × 1.00 + 2.5 m³ × 5.00 + 20 of 31 days × 31.00 = 55.00 + 12.50 + 20.00 = 87.50 against 10.00 paid.
    charged = {c["utility"]: Decimal(c["amount_exact"]) for c in done["final_bill"]["consumption"]}
    assert charged == {"electricity": Decimal(55), "water": Decimal("12.5")}
    assert [(f["days"], f["amount"]) for f in done["final_bill"]["fixed_fees"]] == [(20, "20.00")]
    assert (done["refund"]["refunded"], done["refund"]["refunds"]) == ("0.00", [])
    assert (done["arrears"], done["closing_balance"]["paid"]) == ("77.50", "-77.50")
    assert (await ok(client, "GET", f"/v1/accounts/{account}"))["balance"] == "-77.50"  # the receivable
    # The closing value went down the reading path: the water meter's watermark is it, at the move-out instant.
    async with app.state.container.runtime.engine.connect() as conn:
        mark = (
            await conn.execute(
                text("SELECT value, sampled_at FROM billing.watermarks WHERE meter_id = :m"), {"m": water}
            )
        ).one()
    assert (mark.value, mark.sampled_at) == (Decimal("12.5"), local("2024-05-21"))
    replay = await settle(client, lease, key, move_out="2024-05-21", closing_readings=closing)
    assert replay.status_code == 200
    assert replay.json() == {**done, "replayed": True}


async def test_settlement_waits_for_the_move_out_hour_and_needs_an_ended_lease(client: httpx.AsyncClient) -> None:
    _, floor = await estate(client)
    room_id = await room(client, floor)
    _, lease, _ = await move_in(client, room_id, "2024-01-01")
    problem(await settle(client, lease, uid("key")), 409, "lease_not_ended")
    tomorrow = (datetime.now(UTC) + CST).date() + timedelta(days=1)
    problem(await settle(client, lease, uid("key"), move_out=tomorrow.isoformat()), 409, "move_out_not_reached")
    assert (await ok(client, "GET", f"/v1/rooms/{room_id}"))["leases"][0]["move_out"] is None  # nothing changed
    problem(await settle(client, uid("nope"), uid("key"), move_out="2024-02-01"), 404, "not_found")
    no_operator = await client.post(
        f"/v1/leases/{lease}/settlement", json={"operator": ""}, headers={"Idempotency-Key": uid("key")}
    )
    assert no_operator.status_code == 422
    no_key = await client.post(f"/v1/leases/{lease}/settlement", json={"operator": "经理-王"})
    assert no_key.status_code == 422


async def test_a_shared_account_is_not_settled_while_another_lease_uses_it(client: httpx.AsyncClient) -> None:
    _, floor = await estate(client)
    first, second = await room(client, floor), await room(client, floor)
    tenant, lease, account = await move_in(client, first, "2024-01-01")
    await ok(
        client,
        "PUT",
        f"/v1/leases/{uid('L')}",
        json={"tenant_id": tenant, "room_id": second, "move_in": "2024-01-01", "account_id": account},
    )
    problem(await settle(client, lease, uid("key"), move_out=date(2024, 2, 1).isoformat()), 409, "account_in_use")


# --- settlement against the monthly run (the run comes before or after, the old run's rows) ----------


async def topup(client: httpx.AsyncClient, account: str, amount: str) -> None:
    await ok(
        client,
        "POST",
        f"/v1/accounts/{account}/topups",
        json={"amount": amount, "channel": "cash"},
        headers={"Idempotency-Key": uid("topup")},
    )


async def fee_entries(app: FastAPI, account: str) -> list[Decimal]:
    async with app.state.container.runtime.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        "SELECT amount FROM billing.ledger_entries WHERE ledger_account LIKE :h "
                        "AND kind = 'fixed_fee' ORDER BY entry_id"
                    ),
                    {"h": f"household:{account}%"},
                )
            ).scalars()
        )


async def test_the_fees_of_months_not_run_are_settled_and_the_run_never_charges_them_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    estate_id, floor = await estate(client)
    room_id = await room(client, floor)
    meter = uid("E")
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{meter}", json={"utility": "electricity"})
    _, lease, account = await move_in(client, room_id, "2024-03-01")
    await topup(client, account, "100.00")
    await read(app, meter, local("2024-03-01"), "0")
    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-04-02"})
    await read(app, meter, local("2024-04-03"), "10")  # 10 kWh over 33 days: 32 of them leased

    # March is not run yet (and has no 公摊): the settlement posts its fee with April's one day.
    done = (await settle(client, lease, uid("key"))).json()
    fees = [(f["month"], f["days"], f["amount"], f["posted_by"]) for f in done["final_bill"]["fixed_fees"]]
    assert fees == [("2024-03", 31, "31.00", "settlement"), ("2024-04", 1, "1.03", "settlement")]
    # 32/33 of 10 kWh = 9.6969… kWh: 9.69 posted, 0.0069… under a fen is waived, not kept back from the refund.
    assert done["closing_balance"]["paid"] == "0.00"
    assert Decimal(done["closing_balance"]["pending"]) == 0
    assert done["refund"]["refunded"] == "58.28"  # 100 − 31.00 − 9.69 − 1.03
    assert done["arrears"] == "0.00"

    # The runs of March and April, after it, charge the settled lease nothing more.
    march = await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-03/run")
    april = await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-04/run")
    assert (march["fixed_fees"], april["fixed_fees"]) == ({}, {})
    view = await ok(client, "GET", f"/v1/accounts/{account}")
    assert (view["balance"], view["paid_balance"]) == ("0.00", "0.00")
    assert await fee_entries(app, account) == [Decimal("-31.00"), Decimal("-1.03")]


async def test_a_month_with_shared_cost_not_run_holds_the_settlement(app: FastAPI, client: httpx.AsyncClient) -> None:
    estate_id, floor = await estate(client)
    room_id = await room(client, floor)
    common = uid("C")
    await ok(client, "PUT", f"/v1/estates/{estate_id}/common-meters/{common}", json={"utility": "electricity"})
    _, lease, account = await move_in(client, room_id, "2024-03-01")
    await topup(client, account, "100.00")
    await read(app, common, local("2024-03-01"), "0")
    await read(app, common, local("2024-03-31"), "20")  # 20.00 of 公摊 in March
    await app.state.container.billing.poster.flush(before=local("2024-04-01"))

    # Only the run shares March's 公摊 out: refunding first would leave it unpaid. Refused, nothing kept.
    held = problem(await settle(client, lease, uid("key"), move_out="2024-04-02"), 409, "month_run_pending")
    assert "2024-03" in held["detail"]
    assert (await ok(client, "GET", f"/v1/rooms/{room_id}"))["leases"][0]["move_out"] is None

    march = await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-03/run")
    assert (march["fixed_fees"], march["shared_area"]) == ({account: "31.00"}, {"electricity": {account: "20.00"}})
    done = (await settle(client, lease, uid("key"), move_out="2024-04-02")).json()
    assert [(f["month"], f["amount"]) for f in done["final_bill"]["fixed_fees"]] == [("2024-04", "1.03")]
    assert (done["refund"]["refunded"], done["arrears"]) == ("47.97", "0.00")  # 100 − 31.00 − 20.00 − 1.03


async def test_shared_area_follows_leased_days_and_is_never_charged_after_a_settlement(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    estate_id, floor = await estate(client)
    rooms = [await room(client, floor) for _ in range(3)]  # 40 m² each
    common = uid("C")
    await ok(client, "PUT", f"/v1/estates/{estate_id}/common-meters/{common}", json={"utility": "electricity"})
    _, short, early = await move_in(client, rooms[0], "2024-06-01")  # leaves on the 3rd: 2 days
    _, _, whole = await move_in(client, rooms[1], "2024-06-01")  # 30 days
    _, first_half, first = await move_in(client, rooms[2], "2024-06-01")  # 15 days, then
    await ok(client, "POST", f"/v1/leases/{first_half}/move-out", json={"move_out": "2024-06-16"})
    _, _, second = await move_in(client, rooms[2], "2024-06-16")  # another household 15 days
    await topup(client, early, "100.00")
    await read(app, common, local("2024-06-01"), "0")
    await read(app, common, local("2024-06-30"), "100")  # 100.00 of 公摊 in June

    done = (await settle(client, short, uid("key"), move_out="2024-06-03")).json()
    assert done["refund"]["refunded"] == "97.94"  # 2 of 30 days of 31.00 = 2.06
    june = await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-06/run")
    # Weights: 40 m² × days = 80 (settled), 1200, 600, 600 of 2480. 100.00 × 80/2480 = 3.23 stays on the
    # pool (borne by the estate, reported): the others pay their own part, never the settled one's.
    assert june["shared_area"] == {"electricity": {whole: "48.39", first: "24.19", second: "24.19"}}
    assert june["shared_area_waived"] == {"electricity": {early: "3.23"}}
    view = await ok(client, "GET", f"/v1/accounts/{early}")
    assert (view["balance"], view["paid_balance"]) == ("0.00", "0.00")


async def test_a_month_run_before_fee_postings_existed_is_not_charged_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    estate_id, floor = await estate(client)
    room_id = await room(client, floor)
    _, lease, account = await move_in(client, room_id, "2024-07-01")
    await topup(client, account, "100.00")
    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-08-11"})
    await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-07/run")
    await ok(client, "POST", f"/v1/estates/{estate_id}/months/2024-08/run")
    # As the runs before migration 0003 left it: the fees on the ledger, the runs recorded, no fee_postings.
    async with app.state.container.runtime.engine.begin() as conn:
        await conn.execute(text("DELETE FROM billing.fee_postings WHERE lease_id = :l"), {"l": lease})
    charged = await fee_entries(app, account)
    assert charged == [Decimal("-31.00"), Decimal("-10.00")]
    done = (await settle(client, lease, uid("key"))).json()
    assert done["final_bill"]["fixed_fees"] == []
    assert await fee_entries(app, account) == charged
    assert done["refund"]["refunded"] == "59.00"


async def test_a_closing_value_overtaken_by_a_real_reading_is_not_recorded(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shuidian_billing.adapters.payments import ledger_port

    _, floor = await estate(client)
    room_id = await room(client, floor)
    meter = uid("E")
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{meter}", json={"utility": "electricity"})
    _, lease, _ = await move_in(client, room_id, "2024-09-01")
    await read(app, meter, local("2024-09-01"), "0")
    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-09-11"})
    bill_readings = ledger_port.bill_readings

    async def real_reading_first(billing: Billing, batch: ReadingBatch) -> None:
        await read(app, meter, local("2024-09-12"), "30")  # the meter's own reading arrives meanwhile
        await bill_readings(billing, batch)

    monkeypatch.setattr(ledger_port, "bill_readings", real_reading_first)
    key = uid("key")
    closing = [{"meter_id": meter, "value": "20"}]
    problem(await settle(client, lease, key, closing_readings=closing), 409, "closing_value_superseded")
    monkeypatch.undo()
    async with app.state.container.runtime.engine.connect() as conn:
        recorded = (
            await conn.execute(text("SELECT count(*) FROM billing.closing_readings WHERE lease_id = :l"), {"l": lease})
        ).scalar_one()
    assert recorded == 0
    done = (await settle(client, lease, uid("key"))).json()
    assert [(r["source"], r["value"]) for r in done["final_readings"]] == [("meter", "30.000000")]


async def test_the_same_settlement_sent_twice_at_once_is_one_settlement(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, floor = await estate(client)
    room_id = await room(client, floor)
    _, lease, account = await move_in(client, room_id, "2024-10-01")
    await topup(client, account, "50.00")
    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-10-11"})
    key = uid("key")
    responses = await asyncio.gather(*(settle(client, lease, key) for _ in range(3)))
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    assert len({r.json()["settlement_id"] for r in responses}) == 1
    view = await ok(client, "GET", f"/v1/accounts/{account}")
    assert (view["balance"], view["paid_balance"]) == ("0.00", "0.00")  # refunded once: 50.00 − 10.00
    assert await fee_entries(app, account) == [Decimal("-10.00")]


async def test_an_account_still_paying_for_a_meter_of_its_own_is_not_settled(client: httpx.AsyncClient) -> None:
    _, floor = await estate(client)
    room_id = await room(client, floor)
    _, lease, account = await move_in(client, room_id, "2024-11-01")
    await ok(client, "PUT", f"/v1/meters/{uid('E')}/binding", json={"account_id": account, "utility": "electricity"})
    problem(await settle(client, lease, uid("key"), move_out="2024-11-11"), 409, "account_in_use")


async def test_republishing_every_room_waits_while_the_outbox_is_busy(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, floor = await estate(client)
    await room(client, floor)
    occupancy: RoomOccupancies = app.state.container.occupancy
    engine = app.state.container.runtime.engine

    async def queued() -> int:
        async with engine.connect() as conn:
            count: int = (
                await conn.execute(
                    text("SELECT count(*) FROM billing.outbox WHERE topic LIKE :t"), {"t": "%/occupancy"}
                )
            ).scalar_one()
            return count

    # Balance events and the like wait in the outbox (the drainer held off by holding its lock) …
    async with engine.connect() as holder:
        await holder.execute(text("BEGIN"))
        await holder.execute(text("SELECT pg_advisory_xact_lock(hashtext('outbox:billing'))"))
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.outbox (topic, payload) SELECT 'shuidian/v1/test/backlog', "
                    "convert_to('{}', 'UTF8') FROM generate_series(1, :n)"
                ),
                {"n": REPUBLISH_CHUNK},
            )
        before = await queued()  # the drainer is held off: only what the calls above queued
        republish = asyncio.create_task(occupancy.republish())
        await asyncio.sleep(1.0)
        # … so no room is queued behind them yet.
        assert not republish.done()
        assert await queued() == before
        await holder.execute(text("COMMIT"))
    async with asyncio.timeout(30):
        assert await republish >= 1


async def test_two_operators_settling_at_once_record_only_the_value_billed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, floor = await estate(client)
    room_id = await room(client, floor)
    meter = uid("E")
    await ok(client, "PUT", f"/v1/rooms/{room_id}/meters/{meter}", json={"utility": "electricity"})
    _, lease, _ = await move_in(client, room_id, "2024-12-01")
    await read(app, meter, local("2024-12-01"), "0")
    await ok(client, "POST", f"/v1/leases/{lease}/move-out", json={"move_out": "2024-12-11"})
    responses = await asyncio.gather(
        *(settle(client, lease, uid("key"), closing_readings=[{"meter_id": meter, "value": v}]) for v in ("20", "25"))
    )
    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 409).json()
    assert refused["code"] in ("closing_value_superseded", "lease_settled", "final_reading_present")
    async with app.state.container.runtime.engine.connect() as conn:
        recorded = (
            await conn.execute(text("SELECT value FROM billing.closing_readings WHERE lease_id = :l"), {"l": lease})
        ).scalar_one()
        mark = (
            await conn.execute(
                text("SELECT value, sampled_at FROM billing.watermarks WHERE meter_id = :m"), {"m": meter}
            )
        ).one()
    assert (mark.value, mark.sampled_at) == (recorded, local("2024-12-11"))
    settled = next(r for r in responses if r.status_code == 201).json()
    assert settled["final_readings"][0]["value"] == f"{recorded:.6f}"
