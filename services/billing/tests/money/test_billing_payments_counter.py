"""Cash shifts, bank statement imports, refunds and move-out settlement over real HTTP against the
billing app on real PostgreSQL (receipts, totals, matching, the review queue, idempotent retries,
refunds never exceeding what was paid)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shuidian_billing.adapters.billing import Billing
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "counter") as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as client:
        yield client


async def new_account(client: httpx.AsyncClient) -> str:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    assert (await client.put(f"/v1/accounts/{account}", json={"name": "测试住户"})).status_code == 204
    return account


async def balance(client: httpx.AsyncClient, account: str) -> Decimal:
    return Decimal((await client.get(f"/v1/accounts/{account}")).json()["balance"])


async def top_up(client: httpx.AsyncClient, account: str, amount: str, channel: str = "cash") -> str:
    response = await client.post(
        f"/v1/accounts/{account}/topups",
        json={"amount": amount, "channel": channel},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    payment_id: str = response.json()["payment_id"]
    return payment_id


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


# --- who may call ---------------------------------------------------------------------------------


async def test_nothing_is_credited_or_refunded_without_a_service_token_and_staff_come_from_the_token(
    client: httpx.AsyncClient,
) -> None:
    account = await new_account(client)
    payment = await top_up(client, account, "50.00")
    for case, headers in infra.refused_credentials("billing").items():
        key = {"Idempotency-Key": uuid.uuid4().hex}
        topped = await client.post(
            f"/v1/accounts/{account}/topups", json={"amount": "77.00"}, headers={**headers, **key}, auth=infra.UNSIGNED
        )
        problem(topped, 401, "unauthorised")
        refund = {"amount": "10.00", "operator": "someone-else", "reason": "x"}
        refunded = await client.post(
            f"/v1/payments/{payment}/refunds", json=refund, headers={**headers, **key}, auth=infra.UNSIGNED
        )
        problem(refunded, 401, "unauthorised")
        order = await client.post(
            "/v1/payments/orders",
            json={"provider": "sandbox", "account_id": account, "amount": "77.00"},
            headers={**headers, **key},
            auth=infra.UNSIGNED,
        )
        problem(order, 401, "unauthorised")
        assert await balance(client, account) == Decimal("50.00"), case
    # The refund and the shift record the token's subject, whatever the body says.
    refunded = await client.post(
        f"/v1/payments/{payment}/refunds",
        json={"amount": "10.00", "operator": "someone-else", "reason": "重复缴费"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert refunded.status_code == 201, refunded.text
    assert refunded.json()["operator"] == infra.TEST_SUBJECT
    counter = f"C{uuid.uuid4().hex[:6]}"
    opened = await client.post("/v1/cash/shifts", json={"counter_id": counter, "cashier": "someone-else"})
    assert opened.json()["cashier"] == infra.TEST_SUBJECT


# --- cash -----------------------------------------------------------------------------------------


async def test_cash_shift_numbers_receipts_per_counter_and_totals_the_drawer(client: httpx.AsyncClient) -> None:
    counter = f"C{uuid.uuid4().hex[:6]}"
    account = await new_account(client)
    opened = await client.post(
        "/v1/cash/shifts", json={"counter_id": counter, "cashier": "收银员-李", "opening_float": "100.00"}
    )
    assert opened.status_code == 201, opened.text
    shift = opened.json()["shift_id"]
    problem(
        await client.post("/v1/cash/shifts", json={"counter_id": counter, "cashier": "x"}), 409, "shift_already_open"
    )

    async def pay(amount: str, key: str) -> httpx.Response:
        return await client.post(
            f"/v1/cash/shifts/{shift}/payments",
            json={"account_id": account, "amount": amount},
            headers={"Idempotency-Key": key},
        )

    keys = [uuid.uuid4().hex for _ in range(3)]
    receipts = [
        (await pay(amount, key)).json()["receipt_no"]
        for amount, key in zip(["50.00", "20.50", "9.99"], keys, strict=True)
    ]
    assert receipts == [f"{counter}-000001", f"{counter}-000002", f"{counter}-000003"]
    # The cashier's retry returns the same receipt; the same key for another amount is refused.
    replay = await pay("20.50", keys[1])
    assert (replay.status_code, replay.json()["receipt_no"]) == (200, f"{counter}-000002")
    problem(await pay("25.00", keys[1]), 409, "idempotency_conflict")
    problem(await pay("0.00", uuid.uuid4().hex), 422, "validation_error")
    assert await balance(client, account) == Decimal("80.49")

    closed = await client.post(
        f"/v1/cash/shifts/{shift}/close", json={"closed_by": "主管-王", "counted_cash": "179.49"}
    )
    summary = closed.json()
    assert (summary["receipt_count"], summary["takings"], summary["expected_cash"]) == (3, "80.49", "180.49")
    assert (summary["counted_cash"], summary["difference"]) == ("179.49", "-1.00")
    assert [r["receipt_no"] for r in summary["receipts"]] == receipts
    problem(await pay("5.00", uuid.uuid4().hex), 409, "shift_closed")
    assert (await pay("9.99", keys[2])).json()["receipt_no"] == f"{counter}-000003"
    again = await client.post(f"/v1/cash/shifts/{shift}/close", json={"closed_by": "主管-王", "counted_cash": "179.49"})
    assert again.json() == summary
    problem(
        await client.post(f"/v1/cash/shifts/{shift}/close", json={"closed_by": "x", "counted_cash": "1.00"}),
        409,
        "shift_closed",
    )

    # The next shift at the counter continues the counter's numbering.
    shift = (await client.post("/v1/cash/shifts", json={"counter_id": counter, "cashier": "收银员-赵"})).json()[
        "shift_id"
    ]
    assert (await pay("1.00", uuid.uuid4().hex)).json()["receipt_no"] == f"{counter}-000004"
    assert await balance(client, account) == Decimal("81.49")


async def test_concurrent_retries_of_a_cash_payment_issue_one_receipt(client: httpx.AsyncClient) -> None:
    counter = f"C{uuid.uuid4().hex[:6]}"
    account = await new_account(client)
    shift = (await client.post("/v1/cash/shifts", json={"counter_id": counter, "cashier": "李"})).json()["shift_id"]
    key = uuid.uuid4().hex
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/cash/shifts/{shift}/payments",
                json={"account_id": account, "amount": "10.00"},
                headers={"Idempotency-Key": key},
            )
            for _ in range(5)
        )
    )
    assert {r.json()["receipt_no"] for r in responses} == {f"{counter}-000001"}
    assert await balance(client, account) == Decimal("10.00")
    assert (await client.get(f"/v1/cash/shifts/{shift}")).json()["receipt_count"] == 1


# --- bank -----------------------------------------------------------------------------------------


async def test_bank_statement_matches_by_account_and_room_code_and_queues_the_rest(client: httpx.AsyncClient) -> None:
    alice, bob = await new_account(client), await new_account(client)
    room = f"RM-{uuid.uuid4().hex[:4]}-402"
    assert (
        await client.put(f"/v1/payments/aliases/{room}", json={"account_id": bob, "kind": "room"})
    ).status_code == 204
    tx = uuid.uuid4().hex[:8]
    csv = (
        "交易日期,交易流水号,付款人,金额,附言\n"
        f"2026-11-20,{tx}1,张三,100.00,缴水电费 {alice}\n"
        f"2026/11/20,{tx}2,李四,200.50,{room.lower()}房 电费\n"
        f'20261121,{tx}3,王五,"1,234.00",水电费\n'
        f"2026-11-21,{tx}4,本行,-50.00,手续费\n"
        f"2026-11-22,{tx}5,赵六,10.00,{alice} {bob}\n"
    )
    data = csv.encode("gb18030")  # how most Chinese banks export
    params = {"imported_by": "财务-王", "filename": "cmb-20261122.csv"}
    first = await client.post(
        "/v1/payments/bank/imports", content=data, params=params, headers={"Content-Type": "text/csv"}
    )
    assert first.status_code == 201, first.text
    result = first.json()
    assert (result["lines"], result["matched"], result["review"], result["skipped_debits"]) == (4, 2, 2, 1)
    assert [r["status"] for r in result["results"]] == ["matched", "matched", "review", "review"]
    assert (await balance(client, alice), await balance(client, bob)) == (Decimal("100.00"), Decimal("200.50"))

    again = (await client.post("/v1/payments/bank/imports", content=data, params=params)).json()
    assert (again["matched"], again["review"], again["duplicate"]) == (0, 0, 4)
    assert (await balance(client, alice), await balance(client, bob)) == (Decimal("100.00"), Decimal("200.50"))

    queue = (await client.get("/v1/payments/reviews")).json()
    unmatched = {r["subject"]: r for r in queue if r["kind"] == "bank_unmatched"}
    no_reference, ambiguous = unmatched[f"txn:{tx}3"], unmatched[f"txn:{tx}5"]
    assert no_reference["amount"] == "1234.00"
    assert alice in ambiguous["reason"]
    assert bob in ambiguous["reason"]
    assign = f"/v1/payments/reviews/{no_reference['review_id']}/assign"
    assert (await client.post(assign, json={"account_id": alice, "operator": "财务-王"})).status_code == 200
    assert (await client.post(assign, json={"account_id": alice, "operator": "财务-王"})).status_code == 200
    problem(await client.post(assign, json={"account_id": bob, "operator": "财务-王"}), 409, "review_closed")
    assert await balance(client, alice) == Decimal("1334.00")
    dismissed = await client.post(
        f"/v1/payments/reviews/{ambiguous['review_id']}/dismiss", json={"operator": "财务-王", "reason": "已退回付款人"}
    )
    assert dismissed.json()["status"] == "dismissed"
    open_now = {r["subject"] for r in (await client.get("/v1/payments/reviews")).json()}
    assert not open_now & {f"txn:{tx}3", f"txn:{tx}5"}


@pytest.mark.parametrize(
    "csv",
    [
        "date,amount,reference\n2026-11-20,12.345,acc\n",  # sub-fen amount
        "date,amount,reference\n2026-13-40,12.00,acc\n",  # impossible date
        "date,amount,reference\n2026-11-20,twelve,acc\n",
        "date,payer\n2026-11-20,someone\n",  # no amount or reference column
        "date,amount,reference\n2026-11-20,12.00\n",  # short row
        "",
    ],
)
async def test_a_malformed_statement_is_refused_whole(client: httpx.AsyncClient, csv: str) -> None:
    response = await client.post("/v1/payments/bank/imports", content=csv.encode(), params={"imported_by": "财务"})
    problem(response, 422, "bank_statement_invalid")


# --- refunds and settlement -----------------------------------------------------------------------


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    paid=st.lists(st.integers(min_value=1, max_value=50_000), min_size=1, max_size=3),
    attempts=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 60_000), st.integers(0, 3), st.integers(1, 3)),
        min_size=1,
        max_size=8,
    ),
)
async def test_refunds_never_exceed_payments_and_are_idempotent_under_retries(
    client: httpx.AsyncClient, paid: list[int], attempts: list[tuple[int, int, int, int]]
) -> None:
    account = await new_account(client)
    payments = [
        await top_up(client, account, str(Decimal(fen) / 100), channel)
        for fen, channel in zip(paid, ["cash", "bank", "wechat"], strict=False)
    ]
    keys = [uuid.uuid4().hex for _ in range(4)]
    recorded: dict[str, tuple[int, int, str]] = {}  # key → (payment, fen, refund id)
    refunded = [0] * len(payments)
    for which, fen, key_index, retries in attempts:
        which %= len(payments)
        key = keys[key_index]
        body = {"amount": str(Decimal(fen) / 100), "operator": "财务", "reason": "测试退款"}
        # The client retries at once, concurrently, as a flaky network makes it do.
        responses = await asyncio.gather(
            *(
                client.post(f"/v1/payments/{payments[which]}/refunds", json=body, headers={"Idempotency-Key": key})
                for _ in range(retries)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        if key in recorded:
            first_payment, first_fen, refund_id = recorded[key]
            if (first_payment, first_fen) == (which, fen):
                assert statuses == [200] * retries
                assert {r.json()["refund_id"] for r in responses} == {refund_id}
            else:
                assert {(r.status_code, r.json()["code"]) for r in responses} == {(409, "idempotency_conflict")}
        elif fen > paid[which] - refunded[which]:
            assert {(r.status_code, r.json()["code"]) for r in responses} == {(409, "refund_exceeds_payment")}
        else:
            assert statuses == [200] * (retries - 1) + [201]
            assert len({r.json()["refund_id"] for r in responses}) == 1
            recorded[key] = (which, fen, responses[0].json()["refund_id"])
            refunded[which] += fen
    for index, payment in enumerate(payments):
        rows = (await client.get(f"/v1/payments/{payment}/refunds")).json()
        total = sum(Decimal(r["amount"]) for r in rows)
        assert total == Decimal(refunded[index]) / 100 <= Decimal(paid[index]) / 100
    expected = Decimal(sum(paid[: len(payments)]) - sum(refunded)) / 100
    assert await balance(client, account) == expected
    ledger = (await client.get(f"/v1/accounts/{account}/ledger", params={"limit": 1000})).json()
    assert sum(Decimal(e["amount"]) for e in ledger) == expected


async def test_a_refund_cannot_take_credit_already_consumed(app: FastAPI, client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    payment = await top_up(client, account, "10.00")
    await consume(app, client, account, kwh="10")  # 10 kWh at 0.613 = 6.13 charged
    refund = await client.post(
        f"/v1/payments/{payment}/refunds",
        json={"amount": "3.88", "operator": "财务", "reason": "测试"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    problem(refund, 409, "refund_exceeds_balance")
    problem(
        await client.post(
            f"/v1/payments/{uuid.uuid4()}/refunds",
            json={"amount": "1.00", "operator": "财务", "reason": "测试"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        ),
        404,
        "not_found",
    )


async def consume(app: FastAPI, client: httpx.AsyncClient, account: str, *, kwh: str) -> None:
    """Bill `kwh` on a fresh meter of `account` two hours ago and post it to the ledger."""
    await client.put(
        "/v1/tariffs/electricity", json={"unit_price": "0.613", "effective_from": "2020-01-01T00:00:00+00:00"}
    )
    meter = f"E-{uuid.uuid4().hex[:8]}"
    assert (
        await client.put(f"/v1/meters/{meter}/binding", json={"account_id": account, "utility": "electricity"})
    ).status_code == 204
    billing: Billing = app.state.container.billing
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    readings = tuple(
        Reading.create(
            meter, Utility.ELECTRICITY, start + timedelta(minutes=m), registers={"energy_active_import_total": value}
        )
        for m, value in ((0, Decimal("1000")), (30, Decimal("1000") + Decimal(kwh)))
    )
    await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=readings), "")
    await billing.poster.flush(before=start + timedelta(hours=2))


async def test_move_out_settlement_refunds_the_remaining_credit_newest_payment_first(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    account = await new_account(client)
    cash = await top_up(client, account, "30.00", "cash")
    wechat = await top_up(client, account, "20.00", "wechat")
    await consume(app, client, account, kwh="10")  # 6.13
    key = uuid.uuid4().hex
    body = {"operator": "管家-周", "reason": "退租"}
    first = await client.post(f"/v1/accounts/{account}/settlement", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    summary: dict[str, Any] = first.json()
    assert (summary["refundable_before"], summary["refunded"], summary["paid_balance_after"]) == (
        "43.87",
        "43.87",
        "0.00",
    )
    assert [(r["payment_id"], r["channel"], r["amount"]) for r in summary["refunds"]] == [
        (wechat, "wechat", "20.00"),
        (cash, "cash", "23.87"),
    ]
    replay = await client.post(f"/v1/accounts/{account}/settlement", json=body, headers={"Idempotency-Key": key})
    assert replay.status_code == 200
    assert {**replay.json(), "replayed": False} == summary
    assert await balance(client, account) == Decimal("0.00")
    second = (
        await client.post(
            f"/v1/accounts/{account}/settlement", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
    ).json()
    assert (second["refunded"], second["refunds"]) == ("0.00", [])
    problem(
        await client.post(
            f"/v1/accounts/{await new_account(client)}/settlement", json=body, headers={"Idempotency-Key": key}
        ),
        409,
        "idempotency_conflict",
    )


async def test_a_room_code_on_a_transfer_credits_the_household_living_there(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:6]
    account, code = await new_account(client), f"{tag}-0302"
    for path, body in (
        (f"/v1/estates/es-{tag}", {"name": "幸福里"}),
        (f"/v1/buildings/bd-{tag}", {"estate_id": f"es-{tag}", "name": "1号楼"}),
        (f"/v1/floors/fl-{tag}", {"building_id": f"bd-{tag}", "level": 3}),
        (f"/v1/rooms/rm-{tag}", {"floor_id": f"fl-{tag}", "code": code, "area_m2": "45.50"}),
        (f"/v1/tenants/tn-{tag}", {"name": "李四"}),
    ):
        assert (await client.put(path, json=body)).status_code == 204, path
    move_in = (datetime.now(UTC) - timedelta(days=10)).date().isoformat()
    lease = await client.put(
        f"/v1/leases/ls-{tag}",
        json={"tenant_id": f"tn-{tag}", "room_id": f"rm-{tag}", "move_in": move_in, "account_id": account},
    )
    assert lease.status_code == 200, lease.text
    csv = f"date,amount,reference,payer\n2026-11-23,66.00,{code}房水电费,李四\n2026-11-23,5.00,{tag}-9999,李四\n"
    result = (
        await client.post("/v1/payments/bank/imports", content=csv.encode(), params={"imported_by": "财务"})
    ).json()
    assert [(r["status"], r["account_id"]) for r in result["results"]] == [("matched", account), ("review", None)]
    assert await balance(client, account) == Decimal("66.00")
