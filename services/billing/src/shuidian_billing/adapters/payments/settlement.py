"""Move-out settlement of a lease (退租结算): final readings, final bill and refund as one explicit,
idempotent, audited operation.

1. Check, in one transaction (ending the lease first when a move-out date is given): the move-out
   hour has passed; the account pays for no other lease after it; every meter the room had at the
   move-out instant has a reading at or after it — whose delta bills the household for its part —
   or the operator gives a closing value for it; no month before the move-out month with 公摊 to
   share is waiting for its monthly run (409 `month_run_pending`). Otherwise nothing happens (409
   `final_reading_missing`, …). 公摊 is never charged to a settled household.
2. Bill each closing value exactly like a reading sampled at the move-out instant (same path,
   same watermark rules; a value below the register or implausible is held and refused), recorded
   with its operator in `closing_readings`; the meter's register must then be exactly that value at
   the move-out instant (else 409 `closing_value_superseded`: what is recorded is what was billed).
3. Post every ended hour's accruals (the flush) and the fixed fees, pro-rated to the days leased,
   of every month of the lease not run yet (`periodic.post_fixed_fees`; the monthly run then skips
   them) — a month already run charged them — and waive the account's sub-fen carries.
4. Refund the remaining paid credit (`Refunds.settle`: newest payments first, each through its own
   channel; subsidy is never refunded). Arrears stay on the ledger as a receivable and are reported.

Every step is idempotent, so a retry with the same Idempotency-Key resumes a settlement cut short and
a replay of a finished one returns the stored summary. A lease is settled once: another key is 409.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port
from shuidian_billing.adapters.payments.refunds import Refunds
from shuidian_billing.adapters.periodic import LeaseTerm, post_fixed_fees
from shuidian_billing.adapters.premises import Premises
from shuidian_billing.domain.fees import month_start
from shuidian_billing.domain.meters import REGISTER
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME
from shuidian_billing.errors import Conflict, NotFound, PaymentError
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import Reading, ReadingBatch, Utility, reading_id
from shuidian_shared.money import split_cents

ZERO = Decimal("0.00")
_HOUR = timedelta(hours=1)
SETTLEMENT_GATEWAY = "settlement"
"""The gateway id closing readings are billed under (a gateway of its own: one billing lane, never a real bus)."""


@dataclass(frozen=True, slots=True)
class FinalMeter:
    meter_id: str
    utility: Utility
    value: Decimal | None  # the meter's register now (None: never read)
    sampled_at: datetime | None


class LeaseSettlements:
    def __init__(self, engine: AsyncEngine, billing: Billing, premises: Premises, outbox: Outbox) -> None:
        self._engine = engine
        self._billing = billing
        self._premises = premises
        self._refunds = Refunds(engine, billing, outbox)
        self._outbox = outbox

    async def settle(
        self,
        lease_id: str,
        *,
        operator: str,
        reason: str,
        key: str,
        move_out: date | None = None,
        closing: dict[str, Decimal] | None = None,
    ) -> dict[str, Any]:
        """Settle a lease once: final readings, final bill, refund (a replay returns the same summary)."""
        closing = closing or {}
        if not operator.strip():
            raise PaymentError("an operator is required", code="invalid_settlement", status_code=422)
        fingerprint = hashlib.sha256(
            json.dumps([lease_id, str(move_out), sorted((m, str(v)) for m, v in closing.items())]).encode()
        ).hexdigest()
        now = datetime.now(UTC)
        # 1. Checks (ending the lease first when asked): all or nothing.
        async with self._engine.begin() as conn:
            earlier = await self._earlier(conn, lease_id, key, fingerprint)
            if earlier is not None and earlier.summary is not None:
                return {**earlier.summary, "replayed": True}
            if move_out is not None:
                await self._premises.end_lease(lease_id, move_out, conn)
            lease = (
                await conn.execute(text("SELECT * FROM billing.leases WHERE lease_id = :l FOR UPDATE"), {"l": lease_id})
            ).first()
            if lease is None:
                raise NotFound(f"no lease {lease_id}")
            await self._check_lease(conn, lease, now)
            meters = await self._final_meters(conn, lease)
            recorded = await self._recorded_closings(conn, lease_id)
            to_bill = self._check_readings(lease, meters, closing, recorded)
        self._outbox.notify()  # the move-out, when this call made it
        # 2. Closing values go down the reading path; one that was held is refused.
        if to_bill:
            await self._bill_closing(lease, meters, to_bill, operator)
        async with self._engine.begin() as conn:
            meters = await self._final_meters(conn, lease)
            held = [m for m in to_bill if (meters[m].sampled_at or datetime.min.replace(tzinfo=UTC)) < lease.ends_at]
            if held:
                raise PaymentError(
                    f"抄表值未被接受（低于表底或跳变过大，已转人工复核）· closing value(s) held for review, not billed: "
                    f"{', '.join(sorted(held))}",
                    code="closing_value_held",
                    status_code=422,
                )
            # What is recorded must be what was billed: a reading after move-out arriving meanwhile, or
            # another operator's different value billed first, leaves the register elsewhere.
            superseded = [
                m for m, value in to_bill.items() if (meters[m].value, meters[m].sampled_at) != (value, lease.ends_at)
            ]
            if superseded:
                raise Conflict(
                    f"录入值未计费（表已有其他读数）· closing value(s) not billed, the meter's register moved on: "
                    f"{', '.join(sorted(superseded))}; settle again",
                    code="closing_value_superseded",
                )
            await self._record_closings(conn, lease, meters, to_bill, operator, reason)
            if earlier is None:
                await self._claim(conn, lease_id, key, fingerprint, operator, reason)
            settlement_id = (
                await conn.execute(
                    text("SELECT settlement_id FROM billing.lease_settlements WHERE lease_id = :l"), {"l": lease_id}
                )
            ).scalar_one()
        # 3. Final bill: every ended hour on the ledger, then the fees of the months not run.
        await ledger_port.post_ended_hours(self._billing, now.replace(minute=0, second=0, microsecond=0))
        async with self._engine.begin() as conn:
            # Two retries of one key at once: the second waits here and finds the fees posted.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"lease-settlement:{lease_id}"}
            )
            # The estate's monthly run locks the estate: one of the two goes first and the other sees it.
            estate = await estate_of(conn, lease.room_id)
            await conn.execute(text("SELECT 1 FROM billing.estates WHERE estate_id = :e FOR SHARE"), {"e": estate})
            # A month already run charged its fees (runs before fee_postings existed, too): only the others.
            for month in await months_not_run(conn, lease, estate, earlier=False):
                await post_fixed_fees(
                    conn,
                    [LeaseTerm(lease.lease_id, lease.account_id, lease.move_in, lease.move_out)],
                    month.year,
                    month.month,
                    "settlement",
                )
            # Under a fen is never charged (rounding toward zero): drop the sub-fen carries so the whole
            # paid balance goes back.
            await ledger_port.waive_sub_fen(conn, lease.account_id)
            await ledger_port.after_debit(self._billing, conn, lease.account_id)
        self._outbox.notify()
        # 4. Refund of the paid credit left (subsidy is kept), then the summary, stored for replays.
        refund = await self._refunds.settle(lease.account_id, operator, reason, f"lease:{lease_id}")
        async with self._engine.begin() as conn:
            summary = await self._summary(conn, lease, settlement_id, meters, operator, reason, refund)
            await conn.execute(
                text(
                    "UPDATE billing.lease_settlements SET summary = CAST(:s AS jsonb), completed_at = now() "
                    "WHERE lease_id = :l"
                ),
                {"s": json.dumps(summary), "l": lease_id},
            )
        return {**summary, "replayed": False}

    async def get(self, lease_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT summary FROM billing.lease_settlements WHERE lease_id = :l"), {"l": lease_id}
                )
            ).first()
        if row is None or row.summary is None:
            raise NotFound(f"lease {lease_id} has no completed settlement")
        return {**row.summary, "replayed": True}

    # --- steps ----------------------------------------------------------------------------------

    @staticmethod
    async def _earlier(conn: AsyncConnection, lease_id: str, key: str, fingerprint: str) -> Any:
        """The settlement this key started (to replay or resume); refuses a key reused or a lease settled."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"lease-settlement:{lease_id}"})
        # One statement (one snapshot): a concurrent request's claim is seen by key and by lease alike.
        rows = (
            await conn.execute(
                text(
                    "SELECT lease_id, idempotency_key, settlement_id, fingerprint, summary "
                    "FROM billing.lease_settlements WHERE idempotency_key = :k OR lease_id = :l"
                ),
                {"k": key, "l": lease_id},
            )
        ).all()
        by_key = next((r for r in rows if r.idempotency_key == key), None)
        if by_key is not None:
            if by_key.lease_id != lease_id or by_key.fingerprint != fingerprint:
                raise Conflict("idempotency key already used for a different settlement", code="idempotency_conflict")
            return by_key
        other = next((r for r in rows if r.lease_id == lease_id), None)
        if other is not None:
            raise Conflict(
                f"租约已结算 · lease {lease_id} is already settled (settlement {other.settlement_id})",
                code="lease_settled",
            )
        return None

    @staticmethod
    async def _check_lease(conn: AsyncConnection, lease: Any, now: datetime) -> None:
        if lease.ends_at is None:
            raise Conflict(
                "租约尚未退租，请提供退租日期 · the lease has not ended: give move_out", code="lease_not_ended"
            )
        if now < lease.ends_at + _HOUR:
            local = (lease.ends_at + _HOUR).astimezone(CHINA_STANDARD_TIME)
            raise Conflict(
                f"退租时刻所在小时结束后方可结算 · settle after the move-out hour has ended ({local:%Y-%m-%d %H:%M})",
                code="move_out_not_reached",
            )
        other = (
            await conn.execute(
                text(
                    "SELECT lease_id FROM billing.leases WHERE account_id = :a AND lease_id <> :l "
                    "AND (ends_at IS NULL OR ends_at > :e) LIMIT 1"
                ),
                {"a": lease.account_id, "l": lease.lease_id, "e": lease.ends_at},
            )
        ).first()
        if other is not None:
            raise Conflict(
                f"账户仍用于租约 {other.lease_id} · account {lease.account_id} still pays for lease {other.lease_id}",
                code="account_in_use",
            )
        meter = (
            await conn.execute(
                text(
                    "SELECT meter_id FROM billing.meter_bindings WHERE account_id = :a "
                    "AND (valid_to IS NULL OR valid_to > :e) ORDER BY meter_id LIMIT 1"
                ),
                {"a": lease.account_id, "e": lease.ends_at},
            )
        ).first()
        if meter is not None:
            raise Conflict(
                f"账户仍直接绑定表 {meter.meter_id} · account {lease.account_id} still pays for meter {meter.meter_id} "
                "bound to it after the move-out",
                code="account_in_use",
            )
        # An ended month not run yet: the settlement posts its fixed fees, but only the run can share
        # its 公摊 out — refunding first would leave the household's share unpaid. Run it, then settle.
        estate = await estate_of(conn, lease.room_id)
        pending = await months_with_shared_cost(conn, estate, await months_not_run(conn, lease, estate, earlier=True))
        if pending:
            months = ", ".join(f"{m:%Y-%m}" for m in pending)
            raise Conflict(
                f"请先执行 {months} 的月度结算（公摊未分摊）· run the estate's month(s) {months} first: "
                "their 公摊 is not shared out yet",
                code="month_run_pending",
            )

    @staticmethod
    async def _final_meters(conn: AsyncConnection, lease: Any) -> dict[str, FinalMeter]:
        """The room's meters at the move-out instant with their register now."""
        rows = await conn.execute(
            text(
                "SELECT b.meter_id, b.utility, w.value, w.sampled_at FROM billing.meter_bindings b "
                "LEFT JOIN billing.watermarks w ON w.meter_id = b.meter_id "
                "AND w.register = CASE b.utility WHEN 'water' THEN :water ELSE :electricity END "
                "WHERE b.room_id = :r AND (b.valid_from IS NULL OR b.valid_from < :e) "
                "AND (b.valid_to IS NULL OR b.valid_to >= :e) ORDER BY b.meter_id"
            ),
            {
                "r": lease.room_id,
                "e": lease.ends_at,
                "water": REGISTER[Utility.WATER],
                "electricity": REGISTER[Utility.ELECTRICITY],
            },
        )
        return {r.meter_id: FinalMeter(r.meter_id, Utility(r.utility), r.value, r.sampled_at) for r in rows}

    @staticmethod
    async def _recorded_closings(conn: AsyncConnection, lease_id: str) -> dict[str, Decimal]:
        rows = await conn.execute(
            text("SELECT meter_id, value FROM billing.closing_readings WHERE lease_id = :l"), {"l": lease_id}
        )
        return {r.meter_id: r.value for r in rows}

    @staticmethod
    def _check_readings(
        lease: Any, meters: dict[str, FinalMeter], closing: dict[str, Decimal], recorded: dict[str, Decimal]
    ) -> dict[str, Decimal]:
        """The closing values to bill now; refuses a settlement whose final readings are incomplete."""
        unknown = sorted(set(closing) - set(meters))
        if unknown:
            raise PaymentError(
                f"退租时房间内没有这些表 · not a meter of the room at move-out: {', '.join(unknown)}",
                code="unknown_meter",
                status_code=422,
            )
        to_bill: dict[str, Decimal] = {}
        missing: list[str] = []
        for meter in meters.values():
            read = meter.sampled_at is not None and meter.sampled_at >= lease.ends_at
            value = closing.get(meter.meter_id)
            if value is None:
                if not read:
                    missing.append(meter.meter_id)
                continue
            if read:
                if recorded.get(meter.meter_id) == value:
                    continue  # billed by this settlement before it was cut short
                raise Conflict(
                    f"表 {meter.meter_id} 已有退租后的读数，不需要录入 · the meter already has a reading after move-out",
                    code="final_reading_present",
                )
            if value < 0 or (meter.value is not None and value < meter.value):
                raise PaymentError(
                    f"录入值 {value} 低于表底 {meter.value} · closing value below the meter's register",
                    code="closing_value_below_register",
                    status_code=422,
                )
            to_bill[meter.meter_id] = value
        if missing:
            raise Conflict(
                "缺少退租后的读数：等待抄表或录入表底值 · final reading missing: wait for the meter's next reading "
                f"or give a closing value for: {', '.join(missing)}",
                code="final_reading_missing",
            )
        return to_bill

    async def _bill_closing(
        self, lease: Any, meters: dict[str, FinalMeter], values: dict[str, Decimal], operator: str
    ) -> None:
        readings = tuple(
            Reading.create(
                meter_id, meters[meter_id].utility, lease.ends_at, registers={REGISTER[meters[meter_id].utility]: value}
            )
            for meter_id, value in sorted(values.items())
        )
        batch = ReadingBatch(source=f"settlement/{operator}"[:128], gateway_id=SETTLEMENT_GATEWAY, readings=readings)
        await ledger_port.bill_readings(self._billing, batch)

    @staticmethod
    async def _record_closings(
        conn: AsyncConnection,
        lease: Any,
        meters: dict[str, FinalMeter],
        values: dict[str, Decimal],
        operator: str,
        reason: str,
    ) -> None:
        for meter_id, value in sorted(values.items()):
            utility = meters[meter_id].utility
            await conn.execute(
                text(
                    "INSERT INTO billing.closing_readings (lease_id, meter_id, utility, register, value, sampled_at, "
                    "reading_id, operator, reason) VALUES (:l, :m, :u, :r, :v, :t, :i, :o, :why) "
                    "ON CONFLICT (lease_id, meter_id) DO NOTHING"
                ),
                {
                    "l": lease.lease_id,
                    "m": meter_id,
                    "u": utility.value,
                    "r": REGISTER[utility],
                    "v": value,
                    "t": lease.ends_at,
                    "i": reading_id(meter_id, lease.ends_at),
                    "o": operator,
                    "why": reason,
                },
            )

    @staticmethod
    async def _claim(
        conn: AsyncConnection, lease_id: str, key: str, fingerprint: str, operator: str, reason: str
    ) -> None:
        try:
            async with conn.begin_nested():
                await conn.execute(
                    text(
                        "INSERT INTO billing.lease_settlements (lease_id, settlement_id, idempotency_key, fingerprint, "
                        "operator, reason) VALUES (:l, :s, :k, :f, :o, :r)"
                    ),
                    {"l": lease_id, "s": uuid.uuid4(), "k": key, "f": fingerprint, "o": operator, "r": reason},
                )
        except IntegrityError as err:
            # The same request sent twice at once: the loser resumes the winner's settlement.
            winner = (
                await conn.execute(
                    text("SELECT lease_id, fingerprint FROM billing.lease_settlements WHERE idempotency_key = :k"),
                    {"k": key},
                )
            ).first()
            if winner is not None and (winner.lease_id, winner.fingerprint) == (lease_id, fingerprint):
                return
            raise Conflict(f"lease {lease_id} is being settled under another key", code="lease_settled") from err

    async def _summary(
        self,
        conn: AsyncConnection,
        lease: Any,
        settlement_id: uuid.UUID,
        meters: dict[str, FinalMeter],
        operator: str,
        reason: str,
        refund: dict[str, Any],
    ) -> dict[str, Any]:
        last_day = lease.move_out - timedelta(days=1)
        bill_start = max(lease.starts_at, month_start(last_day.year, last_day.month))
        closings = {
            r.meter_id: r
            for r in await conn.execute(
                text("SELECT meter_id, value, sampled_at, operator FROM billing.closing_readings WHERE lease_id = :l"),
                {"l": lease.lease_id},
            )
        }
        through = {
            r.meter_id: r.register_to
            for r in await conn.execute(
                text(
                    "SELECT meter_id, max(register_to) AS register_to FROM billing.charge_lines "
                    "WHERE account_id = :a AND meter_id = ANY(:m) GROUP BY meter_id"
                ),
                {"a": lease.account_id, "m": sorted(meters)},
            )
        }
        readings = []
        for meter in meters.values():
            closed = closings.get(meter.meter_id)
            readings.append(
                {
                    "meter_id": meter.meter_id,
                    "utility": meter.utility.value,
                    "source": "closing_value" if closed else "meter",
                    "value": closed.value if closed else meter.value,
                    "sampled_at": closed.sampled_at if closed else meter.sampled_at,
                    "operator": closed.operator if closed else None,
                    "billed_through_register": through.get(meter.meter_id),
                }
            )
        # Pieces of consumption ending after the period's start (a piece ends at a month start at the latest).
        consumption = []
        for r in await conn.execute(
            text(
                "SELECT t.utility, c.component, sum(c.quantity) AS quantity, sum(c.amount) AS amount "
                "FROM billing.charge_lines c JOIN billing.tariffs t USING (tariff_id) "
                "WHERE c.account_id = :a AND c.last_sample > :s GROUP BY t.utility, c.component ORDER BY 1, 2"
            ),
            {"a": lease.account_id, "s": bill_start},
        ):
            consumption.append(
                {"utility": r.utility, "component": r.component, "quantity": r.quantity, "amount_exact": r.amount}
            )
        fees = [
            r._asdict()
            for r in await conn.execute(
                text(
                    "SELECT to_char(month, 'YYYY-MM') AS month, utility, component, days, days_in_month, amount, posted_by "
                    "FROM billing.fee_postings WHERE lease_id = :l AND (month >= :m OR posted_by = 'settlement') "
                    "ORDER BY month, utility, component"
                ),
                {"l": lease.lease_id, "m": date(last_day.year, last_day.month, 1)},
            )
        ]
        balance = await ledger_port.balance_figures(self._billing, conn, lease.account_id)
        available = balance["available"]
        summary = {
            "settlement_id": settlement_id,
            "lease_id": lease.lease_id,
            "account_id": lease.account_id,
            "room_id": lease.room_id,
            "tenant_id": lease.tenant_id,
            "move_in": lease.move_in,
            "move_out": lease.move_out,
            "moved_out_at": lease.ends_at,
            "final_readings": readings,
            "final_bill": {
                "period_start": bill_start,
                "period_end": lease.ends_at,
                "consumption": consumption,
                "fixed_fees": fees,
            },
            "refund": {k: v for k, v in refund.items() if k != "replayed"},
            "closing_balance": balance,
            # What the household still owes after the refund: left on the ledger as a receivable.
            "arrears": split_cents(-available)[0] if available < 0 else ZERO,
            "operator": operator,
            "reason": reason,
        }
        result: dict[str, Any] = json.loads(json.dumps(summary, default=_jsonable))
        return result


async def estate_of(conn: AsyncConnection, room_id: str) -> str:
    estate: str = (
        await conn.execute(
            text(
                "SELECT b.estate_id FROM billing.rooms r JOIN billing.floors f USING (floor_id) "
                "JOIN billing.buildings b USING (building_id) WHERE r.room_id = :r"
            ),
            {"r": room_id},
        )
    ).scalar_one()
    return estate


async def months_not_run(conn: AsyncConnection, lease: Any, estate_id: str, *, earlier: bool) -> list[date]:
    """The lease's months (first days) its estate's monthly run has not run: through the move-out
    month, or only those before it (`earlier`)."""
    last_day = lease.move_out - timedelta(days=1)
    rows = await conn.execute(
        text(
            "SELECT CAST(m AS date) FROM generate_series(CAST(:first AS date), CAST(:last AS date), "
            "interval '1 month') m WHERE NOT EXISTS (SELECT 1 FROM billing.period_runs p "
            "WHERE p.estate_id = :e AND p.month = CAST(m AS date)) ORDER BY 1"
        ),
        {
            "first": date(lease.move_in.year, lease.move_in.month, 1),
            "last": date(last_day.year, last_day.month, 1) - (timedelta(days=1) if earlier else timedelta(0)),
            "e": estate_id,
        },
    )
    return list(rows.scalars())


async def months_with_shared_cost(conn: AsyncConnection, estate_id: str, months: list[date]) -> list[date]:
    """Those of `months` in which the estate's common meters cost something (公摊 to share out)."""
    if not months:
        return []
    rows = await conn.execute(
        text(
            "SELECT DISTINCT CAST(date_trunc('month', period_start AT TIME ZONE 'Asia/Shanghai') AS date) AS m "
            "FROM billing.ledger_entries WHERE ledger_account = :p AND amount <> 0 "
            "AND period_start >= :s AND period_start < :e ORDER BY 1"
        ),
        {
            "p": f"shared:{estate_id}",
            "s": month_start(months[0].year, months[0].month),
            "e": month_start(months[-1].year + months[-1].month // 12, months[-1].month % 12 + 1),
        },
    )
    wanted = set(months)
    return [m for m in rows.scalars() if m in wanted]


def _jsonable(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
