"""Fake backends (billing, collector, control, alarm, insights in one small app) speaking the documented
contracts, for the gateway's and the SDK's tests: two estates, two tenants, each with an account,
a room and a meter. Serve it on a real socket and point every `GATEWAY_<SERVICE>_URL` at it.

Every route here exists in a real service (test_gateway_contracts.py compares this app's routes with
the services' OpenAPI), and the routes of `shuidian_shared.contracts` answer with its typed models.
Tests only: it keeps everything in memory and records every call it receives.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse

from shuidian_kit.service import problem
from shuidian_shared.contracts import billing as billing_contract
from shuidian_shared.contracts import collector as collector_contract
from shuidian_shared.contracts import control as control_contract
from shuidian_shared.contracts import insights as insights_contract

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC).isoformat()
MOVE_IN = date(2026, 1, 1)


@dataclass
class Household:
    tenant_id: str
    estate_id: str
    account_id: str
    room_id: str
    meter_id: str
    txn_id: str
    alarm_id: str
    phone: str = ""


@dataclass
class FakeBackends:
    households: list[Household] = field(
        default_factory=lambda: [
            Household(
                "T-A",
                "E1",
                "A-A",
                "R-A",
                "M-A",
                "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
                "11111111-1111-4111-8111-111111111111",
                "13800000001",
            ),
            Household(
                "T-B",
                "E2",
                "A-B",
                "R-B",
                "M-B",
                "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
                "22222222-2222-4222-8222-222222222222",
                "13800000002",
            ),
        ]
    )
    calls: list[tuple[str, str]] = field(default_factory=list)
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    topups: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: list[dict[str, Any]] = field(default_factory=list)
    # Per account, fields that replace the fixed balance figures (a test moves a balance this way).
    balances: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per tenant, the notification settings alarm holds (with their "version").
    notification_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Answer every other documented route too (for fuzzing); otherwise unknown routes are plain 404s.
    complete: bool = False

    def household(self, **match: str) -> Household | None:
        for h in self.households:
            if all(getattr(h, k) == v for k, v in match.items()):
                return h
        return None

    def command_count(self, kind: str) -> int:
        return sum(1 for c in self.commands.values() if c["kind"] == kind)


def _missing(what: str) -> JSONResponse:
    return problem(404, "not found", f"no {what}", "not_found")


def create_fake_backends(state: FakeBackends | None = None) -> FastAPI:
    fake = state or FakeBackends()
    app = FastAPI()
    app.state.fake = fake

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        fake.calls.append((request.method, request.url.path))
        response: Response = await call_next(request)
        return response

    # -- billing ---------------------------------------------------------------------------------
    @app.get("/v1/tenants/{tenant_id}/scope")
    async def scope(tenant_id: str) -> Any:
        h = fake.household(tenant_id=tenant_id)
        if h is None:
            return _missing("tenant")
        return {
            "tenant_id": tenant_id,
            "accounts": [h.account_id],
            "rooms": [{"room_id": h.room_id}],
            "meters": [h.meter_id],
        }

    @app.get("/v1/tenants/{tenant_id}")
    async def tenant(tenant_id: str) -> Any:
        h = fake.household(tenant_id=tenant_id)
        if h is None:
            return _missing("tenant")
        return billing_contract.TenantRecordOut(tenant_id=tenant_id, name="张三", phone=h.phone)

    @app.get("/v1/tenants/{tenant_id}/leases")
    async def tenant_leases(tenant_id: str) -> Any:
        h = fake.household(tenant_id=tenant_id)
        if h is None:
            return _missing("tenant")
        lease = billing_contract.TenantLeaseOut(
            lease_id=f"L-{h.room_id}",
            room_id=h.room_id,
            account_id=h.account_id,
            move_in=MOVE_IN,
            move_out=None,
        )
        return billing_contract.TenantLeasesOut(tenant_id=tenant_id, leases=[lease])

    @app.get("/v1/estates/{estate_id}/meters")
    async def estate_meters(estate_id: str) -> Any:
        meters = sorted(h.meter_id for h in fake.households if h.estate_id == estate_id)
        return billing_contract.EstateMetersOut(estate_id=estate_id, meters=meters) if meters else _missing("estate")

    @app.get("/v1/estates")
    async def estates(limit: int = 100) -> Any:
        return [{"estate_id": e, "name": f"estate {e}"} for e in sorted({h.estate_id for h in fake.households})][:limit]

    @app.get("/v1/estates/{estate_id}")
    async def estate(estate_id: str) -> Any:
        if fake.household(estate_id=estate_id) is None:
            return _missing("estate")
        return {"estate_id": estate_id, "name": f"estate {estate_id}", "address": "…"}

    @app.get("/v1/estates/{estate_id}/buildings")
    async def buildings(estate_id: str, limit: int = 100) -> Any:
        if fake.household(estate_id=estate_id) is None:
            return _missing("estate")
        return [{"building_id": f"{estate_id}-B{i}", "estate_id": estate_id, "name": f"{i}号楼"} for i in range(1, 4)][
            :limit
        ]

    @app.put("/v1/estates/{estate_id}", status_code=204)
    async def put_estate(estate_id: str) -> None:
        return None

    @app.get("/v1/rooms")
    async def rooms(estate_id: str | None = None, limit: int = 100) -> Any:
        rows = [
            {"room_id": h.room_id, "estate_id": h.estate_id, "name": h.room_id}
            for h in fake.households
            if estate_id in (None, h.estate_id)
        ]
        return rows[:limit]

    @app.get("/v1/rooms/{room_id}")
    async def room(room_id: str) -> Any:
        h = fake.household(room_id=room_id)
        if h is None:
            return _missing("room")
        lease = billing_contract.RoomLeaseOut(
            lease_id=f"L-{h.room_id}",
            tenant_id=h.tenant_id,
            room_id=h.room_id,
            account_id=h.account_id,
            move_in=MOVE_IN,
            move_out=None,
        )
        binding = billing_contract.RoomBindingOut(
            meter_id=h.meter_id, utility="electricity", valid_from=None, valid_to=None
        )
        return billing_contract.RoomDetailOut(
            room_id=room_id,
            floor_id=f"{h.estate_id}-B1-F1",
            code=room_id,
            area_m2=Decimal("45.50"),
            household_size=2,
            building_id=f"{h.estate_id}-B1",
            estate_id=h.estate_id,
            leases=[lease],
            meters=[binding],
        )

    @app.get("/v1/rooms/{room_id}/meters/{meter_id}")
    async def room_meter(room_id: str, meter_id: str) -> Any:
        h = fake.household(room_id=room_id, meter_id=meter_id)
        if h is None:
            return _missing("room meter")
        return billing_contract.RoomMeterOut(
            room_id=room_id,
            meter_id=meter_id,
            utility="electricity",
            estate_id=h.estate_id,
            valid_from=None,
            valid_to=None,
        )

    @app.get("/v1/buildings/{building_id}")
    async def building(building_id: str) -> Any:
        estate_id = building_id.split("-B", 1)[0]
        if fake.household(estate_id=estate_id) is None:
            return _missing("building")
        return billing_contract.BuildingRecordOut(building_id=building_id, estate_id=estate_id, name="1号楼")

    @app.get("/v1/floors/{floor_id}")
    async def floor(floor_id: str) -> Any:
        estate_id = floor_id.split("-B", 1)[0]
        if fake.household(estate_id=estate_id) is None:
            return _missing("floor")
        return billing_contract.FloorRecordOut(
            floor_id=floor_id, building_id=floor_id.rsplit("-F", 1)[0], estate_id=estate_id, level=1
        )

    @app.get("/v1/tariffs/{utility}")
    async def tariff(utility: str) -> Any:
        if utility not in ("electricity", "water"):
            return _missing("tariff")
        version = billing_contract.TariffVersionOut(
            tariff_id=1, effective_from=datetime(2026, 1, 1, tzinfo=UTC), unit_price=Decimal("0.5883")
        )
        return billing_contract.TariffOut(utility=utility, versions=[version])

    @app.get("/v1/meters/{meter_id}/binding")
    async def meter_binding(meter_id: str) -> Any:
        h = fake.household(meter_id=meter_id)
        if h is None:
            return _missing("binding")
        return billing_contract.MeterBindingOut(
            meter_id=meter_id,
            utility="electricity",
            account_id=None,
            room_id=h.room_id,
            common_estate_id=None,
            estate_id=h.estate_id,
            valid_from=None,
            valid_to=None,
        )

    @app.get("/v1/accounts/{account_id}")
    async def account(account_id: str) -> Any:
        h = fake.household(account_id=account_id)
        if h is None:
            return _missing("account")
        return {
            "account_id": account_id,
            "estate_id": h.estate_id,
            "name": h.room_id,
            "balance": "35.20",
            "available": "34.87",
            "level": "ok",
            "sequence": 3,
            **fake.balances.get(account_id, {}),
        }

    @app.get("/v1/accounts/{account_id}/ledger")
    async def ledger(account_id: str, limit: int = 100) -> Any:
        if fake.household(account_id=account_id) is None:
            return _missing("account")
        return [{"entry_id": i, "amount": f"-{i}.00", "kind": "charge", "created_at": NOW} for i in range(1, 8)][:limit]

    @app.post("/v1/accounts/{account_id}/topups", status_code=201)
    async def topup(account_id: str, body: dict[str, Any], idempotency_key: str = Header()) -> Any:
        if fake.household(account_id=account_id) is None:
            return _missing("account")
        if idempotency_key not in fake.topups:
            fake.topups[idempotency_key] = {
                "payment_id": str(uuid.uuid4()),
                "account_id": account_id,
                "amount": body.get("amount"),
                "channel": body.get("channel", "cash"),
                "balance_after": "85.20",
                "replayed": False,
            }
        return fake.topups[idempotency_key]

    @app.get("/v1/accounts/{account_id}/usage")
    async def usage(account_id: str, granularity: str = "day") -> Any:
        if fake.household(account_id=account_id) is None:
            return _missing("account")
        return {
            "account_id": account_id,
            "granularity": granularity,
            "rows": [{"period_start": NOW, "meter_id": "M", "quantity": "1.250", "cost": "0.75"}],
        }

    @app.get("/v1/accounts/{account_id}/statements/{month}")
    async def statement(account_id: str, month: str, format: str = "json") -> Any:
        if fake.household(account_id=account_id) is None:
            return _missing("account")
        if format == "pdf":
            return Response(
                b"%PDF-1.4 fake statement",
                media_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="statement-{account_id}-{month}.pdf"'},
            )
        return {"account_id": account_id, "month": month, "total": "88.10"}

    @app.get("/v1/ledger/transactions/{txn_id}/explain")
    async def explain(txn_id: str) -> Any:
        h = fake.household(txn_id=txn_id)
        if h is None:
            return _missing("transaction")
        return {
            "txn_id": txn_id,
            "kind": "charge",
            "entries": [{"ledger_account": f"household:{h.account_id}", "amount": "-0.75", "meter_id": h.meter_id}],
            "lines": [{"text_zh": "电费 1.25 kWh × 0.60", "amount": "0.75"}],
        }

    @app.post("/v1/payments/orders", status_code=201)
    async def create_order(body: dict[str, Any]) -> Any:
        order = {
            "order_id": f"O-{len(fake.orders) + 1}",
            "account_id": body["account_id"],
            "amount": body["amount"],
            "provider": body["provider"],
            "status": "open",
            "pay_url": "https://sandbox.example/pay",
        }
        fake.orders[order["order_id"]] = order
        return order

    @app.get("/v1/payments/methods")
    async def payment_methods(account_id: str | None = None) -> Any:
        return [{"provider": "sandbox", "methods": ["native", "h5"]}]

    @app.get("/v1/payments/orders/{order_id}")
    async def order(order_id: str) -> Any:
        return fake.orders.get(order_id) or _missing("order")

    @app.post("/v1/payments/sandbox/orders/{order_id}/pay")
    async def sandbox_pay(order_id: str) -> Any:
        found = fake.orders.get(order_id)
        if found is None:
            return _missing("order")
        found["status"] = "paid"
        return {"code": "SUCCESS", "message": "成功", "outcome": "accepted", "order_id": order_id, "payment": None}

    @app.get("/v1/payments")
    async def payments(account_id: str | None = None, limit: int = 100) -> Any:
        return [p for p in fake.payments if account_id in (None, p["account_id"])][:limit]

    @app.get("/v1/payments/reconciliations")
    async def reconciliations(bill_date: date | None = None, limit: int = 100) -> Any:
        return []

    @app.post("/v1/payments/reconciliations/{provider}/{bill_date}")
    async def reconcile(provider: str, bill_date: date) -> Any:
        zero = Decimal("0.00")
        return billing_contract.ReconciliationOut(
            provider=provider,
            bill_date=bill_date,
            settled_payments=zero,
            settled_refunds=zero,
            booked_payments=zero,
            booked_refunds=zero,
            lines=0,
            differences=[],
            balanced=True,
            run_at=NOW,
        )

    # -- collector -------------------------------------------------------------------------------
    @app.get("/v1/meters/{meter_id}/state")
    async def device_state(meter_id: str) -> Any:
        if fake.household(meter_id=meter_id) is None:
            return _missing("meter")
        return {
            "meter_id": meter_id,
            "online": True,
            "relay": "closed",
            "valve": None,
            "keep_power": False,
            "last_reading_at": NOW,
            "updated_at": NOW,
        }

    @app.get("/v1/meters/{meter_id}/reading")
    async def latest(meter_id: str) -> Any:
        if fake.household(meter_id=meter_id) is None:
            return _missing("meter")
        return billing_contract.LatestReadingOut(
            meter_id=meter_id,
            sampled_at=datetime.fromisoformat(NOW),
            registers={"energy_active_import_total": Decimal("1234.56")},
        )

    @app.put("/v1/meters/{meter_id}", status_code=204)
    async def put_meter(meter_id: str) -> None:
        return None

    @app.get("/v1/gateways/{gateway_id}")
    async def gateway(gateway_id: str) -> Any:
        return collector_contract.GatewayRecordOut(gateway_id=gateway_id, name="东区网关", shard=None)

    @app.get("/v1/buses/{bus_id}")
    async def bus(bus_id: str) -> Any:
        return collector_contract.BusRecordOut(
            bus_id=bus_id,
            gateway_id="GW1",
            host="10.0.0.7",
            port=10001,
            protocol="dlt645",
            baud=2400,
            timeout_ms=1000,
            retries=2,
        )

    @app.get("/v1/meters/{meter_id}")
    async def registered_meter(meter_id: str) -> Any:
        if fake.household(meter_id=meter_id) is None:
            return _missing("meter")
        return collector_contract.MeterRecordOut(
            meter_id=meter_id,
            bus_id="GW1-1",
            address="000000000101",
            model="dds1588",
            utility="electricity",
            poll_interval_s=60,
            enabled=True,
        )

    @app.post("/v1/registry/import")
    async def commissioning(request: Request) -> Any:
        lines = (await request.body()).decode().strip().splitlines()
        return {"rows": max(len(lines) - 1, 0), "created": max(len(lines) - 1, 0), "errors": []}

    # -- control ---------------------------------------------------------------------------------
    @app.post("/v1/commands", status_code=202)
    async def command(body: dict[str, Any]) -> Any:
        command_id = body.get("command_id") or str(uuid.uuid4())
        fake.commands.setdefault(command_id, {**body, "command_id": command_id, "state": "pending", "created_at": NOW})
        return {"command_id": command_id}

    @app.post("/v1/batches", status_code=202)
    async def batch(body: dict[str, Any]) -> Any:
        ids = []
        for meter_id in body["meters"]:
            command_id = str(uuid.uuid4())
            fake.commands[command_id] = {**body, "meter_id": meter_id, "command_id": command_id, "state": "pending"}
            ids.append(command_id)
        return {"batch_id": str(uuid.uuid4()), "commands": ids}

    @app.post("/v1/schedules", status_code=201)
    async def schedule(body: dict[str, Any]) -> Any:
        return {"schedule_id": str(uuid.uuid4()), **body}

    @app.get("/v1/commands")
    async def commands(meter_id: str | None = None, limit: int = 100) -> Any:
        return [c for c in fake.commands.values() if meter_id in (None, c["meter_id"])][:limit]

    @app.get("/v1/meters/{meter_id}/shadow")
    async def shadow(meter_id: str) -> Any:
        if fake.household(meter_id=meter_id) is None:
            return _missing("meter")
        return {
            "meter_id": meter_id,
            "desired_relay": "closed",
            "reported_relay": "closed",
            "version": 1,
            "updated_at": NOW,
        }

    @app.get("/v1/keep-power/households/{account_id}")
    async def keep_power(account_id: str) -> Any:
        if fake.household(account_id=account_id) is None:
            return _missing("keep-power")
        return control_contract.KeepPowerOut(
            scope="household",
            subject=account_id,
            reason="medical",
            note="",
            set_by="admin",
            set_at=datetime.fromisoformat(NOW),
        )

    @app.get("/v1/commands/{command_id}")
    async def get_command(command_id: str) -> Any:
        return fake.commands.get(command_id) or _missing("command")

    # -- alarm -----------------------------------------------------------------------------------
    @app.get("/v1/alarms/{alarm_id}")
    async def one_alarm(alarm_id: str) -> Any:
        for row in await alarms():
            if row["alarm_id"] == alarm_id:
                return row
        return _missing("alarm")

    @app.get("/v1/alarms")
    async def alarms(source_id: str | None = None, limit: int = 100) -> Any:
        rows = []
        for h in fake.households:
            for source in (h.account_id, h.meter_id):
                if source_id in (None, source):
                    rows.append(
                        {
                            "alarm_id": h.alarm_id
                            if source == h.account_id
                            else str(uuid.uuid5(uuid.NAMESPACE_URL, source)),
                            "source_id": source,
                            "estate": h.estate_id,
                            "alarm_type": "balance_low",
                            "severity": "warning",
                            "state": "active",
                            "message_zh": "余额不足",
                            "message_en": "low balance",
                            "raised_at": NOW,
                        }
                    )
        return rows[:limit]

    defaults = {"low_balance": True, "alarms": True, "statements": True, "channels": ["app"], "quiet_hours": None}

    @app.get("/v1/tenants/{tenant_id}/notification-settings")
    async def notification_settings(tenant_id: str) -> Any:
        return {"tenant_id": tenant_id, **defaults, "version": 0, **fake.notification_settings.get(tenant_id, {})}

    @app.put("/v1/tenants/{tenant_id}/notification-settings")
    async def put_notification_settings(tenant_id: str, body: dict[str, Any]) -> Any:
        current = await notification_settings(tenant_id)
        expected = body.pop("expected_version", None)
        if expected is not None and expected != current["version"]:
            return problem(409, "conflict", "the settings changed since you read them", "version_conflict")
        # Contacts are not judged here: the real alarm service does (see its tests and the gateway's).
        saved = {k: body.get(k, v) for k, v in defaults.items()}
        saved["channels"] = list(dict.fromkeys(saved["channels"]))
        fake.notification_settings[tenant_id] = {**saved, "version": current["version"] + 1}
        return await notification_settings(tenant_id)

    # -- insights --------------------------------------------------------------------------------
    @app.get("/v1/households/{account_id}/report")
    async def household_report(account_id: str) -> Any:
        h = fake.household(account_id=account_id)
        if h is None:
            return _missing("household")
        return insights_contract.TenantReportOut(
            account_id=account_id,
            estate_id=h.estate_id,
            computed_at=datetime.fromisoformat(NOW),
            window_start=date(2026, 10, 26),
            window_end=date(2026, 11, 24),
            items=[],
        )

    @app.get("/v1/readings/history")
    async def reading_history(start: datetime, end: datetime, kind: str = "raw", format: str = "json") -> Any:
        if format == "csv":
            return Response("meter_id,register_name,read_at,value,reading_id\n", media_type="text/csv; charset=utf-8")
        return insights_contract.ReadingHistoryOut(kind=kind, start=start, end=end, meters=[], raw=[], frozen=[])

    @app.post("/v1/what-if")
    async def what_if(body: insights_contract.WhatIfIn) -> Any:
        zero = Decimal(0)
        return insights_contract.WhatIfOut(
            utility=body.utility,
            months=[],
            households=0,
            current_revenue=zero,
            proposed_revenue=zero,
            revenue_change=zero,
            revenue_change_pct=None,
            pay_more=0,
            pay_less=0,
            unchanged=0,
            change_percentiles={},
            histogram=[],
            biggest_increases=[],
            seconds=0.0,
        )

    @app.get("/v1/habits")
    async def habits(month: str, utility: str = "electricity", estate_id: str | None = None) -> Any:
        return _missing("household with use that month")

    @app.get("/v1/trends")
    async def trends() -> Any:
        return []

    @app.put("/v1/line-loss/groups/{group_id}", status_code=204)
    async def put_line_loss_group(group_id: str) -> None:
        return None

    @app.get("/v1/line-loss/groups/{group_id}/days")
    async def line_loss_days(group_id: str) -> Any:
        return []

    if fake.complete:

        @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        async def anything(path: str, request: Request) -> Any:
            if request.method in ("PUT", "DELETE"):
                return Response(status_code=204)
            if request.method == "GET" and "limit" in request.query_params:
                return []
            body = {"id": path.rsplit("/", 1)[-1], "estate_id": "E1", "meter_id": "M-A"}
            return JSONResponse(body, status_code=201 if request.method == "POST" else 200)

    return app
