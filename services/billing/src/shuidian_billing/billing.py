"""The billing application service: prices reading batches into hourly accruals, posts them to the
ledger, takes top-ups, and emits balance events — each unit of work in one database transaction,
events through the outbox only after commit."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing import store
from shuidian_billing.domain import consumption, ledger
from shuidian_billing.settings import BillingSettings
from shuidian_kit.errors import Conflict, NotFound, ServiceError
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    MeterRef,
    Reading,
    ReadingBatch,
    Utility,
)
from shuidian_shared.money import split_cents

log = logging.getLogger(__name__)

READINGS = Counter("billing_readings_total", "readings consumed", ["outcome"])
BATCH_SECONDS = Histogram("billing_batch_seconds", "time to bill one reading batch")

REGISTER = {Utility.ELECTRICITY: "energy_active_import_total", Utility.WATER: "water_volume_total"}
REVENUE = {Utility.ELECTRICITY: "revenue:electricity", Utility.WATER: "revenue:water"}
CHANNEL_ACCOUNTS = {
    "cash": "cash:counter",
    "bank": "clearing:bank",
    "wechat": "clearing:wechat",
    "alipay": "clearing:alipay",
    "sandbox": "clearing:sandbox",
}


class BillingError(ServiceError):
    """Root of billing's domain errors."""


@dataclass(frozen=True)
class Binding:
    account_id: str
    utility: Utility


def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class Billing:
    def __init__(self, engine: AsyncEngine, outbox: Outbox, settings: BillingSettings, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._settings = settings
        self._source = source
        self._max_rate = {
            Utility.ELECTRICITY: settings.max_plausible_kwh_per_hour,
            Utility.WATER: settings.max_plausible_m3_per_hour,
        }

    # --- readings -------------------------------------------------------------------------------

    async def on_readings(self, batch: ReadingBatch, topic: str) -> None:
        with BATCH_SECONDS.time():
            async with self._engine.begin() as conn:
                accounts = await self._bill(conn, batch.readings)
                await self._evaluate_levels(conn, accounts)
        self._outbox.notify()

    async def _bill(self, conn: AsyncConnection, readings: tuple[Reading, ...]) -> set[str]:
        meter_ids = sorted({r.meter_id for r in readings})
        bindings = {
            row.meter_id: Binding(row.account_id, Utility(row.utility))
            for row in await conn.execute(
                text("SELECT meter_id, account_id, utility FROM billing.meter_bindings WHERE meter_id = ANY(:m)"),
                {"m": meter_ids},
            )
        }
        # Locked in a stable order: concurrent consumers of the same meters serialise, never deadlock.
        marks = {
            (row.meter_id, row.register): consumption.Watermark(
                meter_id=row.meter_id, register=row.register, value=row.value, sampled_at=row.sampled_at
            )
            for row in await conn.execute(
                text(
                    "SELECT meter_id, register, value, sampled_at FROM billing.watermarks "
                    "WHERE meter_id = ANY(:m) ORDER BY meter_id, register FOR UPDATE"
                ),
                {"m": meter_ids},
            )
        }
        prices = await self._prices(conn)
        accrual: dict[tuple[str, datetime], tuple[str, Utility, Decimal, Decimal]] = {}
        held: list[tuple[Reading, str, Decimal, str]] = []
        changed: dict[tuple[str, str], consumption.Watermark] = {}
        # Oldest first, so a batch that holds several samples of one meter bills each step.
        for reading in sorted(readings, key=lambda r: r.sampled_at):
            binding = bindings.get(reading.meter_id)
            register = REGISTER[reading.utility]
            value = reading.registers.get(register)
            if binding is None or value is None:
                READINGS.labels("unbound" if binding is None else "no_register").inc()
                continue
            key = (reading.meter_id, register)
            step = consumption.advance(
                marks.get(key),
                consumption.RegisterReading(
                    meter_id=reading.meter_id, register=register, value=value, sampled_at=reading.sampled_at
                ),
                max_plausible_rate=self._max_rate[binding.utility],
            )
            READINGS.labels(step.outcome.value).inc()
            if step.outcome is consumption.Outcome.HELD:
                held.append((reading, register, value, str(step.hold_reason)))
                continue
            if step.watermark is not None and step.watermark != marks.get(key):
                marks[key] = changed[key] = step.watermark
            if step.billed > 0:
                price = prices[binding.utility]
                bucket = (reading.meter_id, _hour(reading.sampled_at))
                _, _, qty, amount = accrual.get(bucket, (binding.account_id, binding.utility, Decimal(0), Decimal(0)))
                accrual[bucket] = (binding.account_id, binding.utility, qty + step.billed, amount + step.billed * price)
        await self._save_watermarks(conn, list(changed.values()))
        await self._save_accruals(conn, accrual)
        await self._hold(conn, held)
        return {account for account, _, _, _ in accrual.values()}

    async def _prices(self, conn: AsyncConnection) -> dict[Utility, Decimal]:
        rows = await conn.execute(
            text(
                "SELECT DISTINCT ON (utility) utility, unit_price FROM billing.tariffs "
                "WHERE effective_from <= now() ORDER BY utility, effective_from DESC"
            )
        )
        prices = {Utility(row.utility): row.unit_price for row in rows}
        return {u: prices.get(u, Decimal(0)) for u in Utility}

    @staticmethod
    async def _save_watermarks(conn: AsyncConnection, marks: list[consumption.Watermark]) -> None:
        if not marks:
            return
        await conn.execute(
            text(
                "INSERT INTO billing.watermarks (meter_id, register, value, sampled_at) "
                "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:r AS text[]), CAST(:v AS numeric[]), CAST(:t AS timestamptz[])) "
                "ON CONFLICT (meter_id, register) DO UPDATE SET value = EXCLUDED.value, sampled_at = EXCLUDED.sampled_at"
            ),
            {
                "m": [w.meter_id for w in marks],
                "r": [w.register for w in marks],
                "v": [w.value for w in marks],
                "t": [w.sampled_at for w in marks],
            },
        )

    @staticmethod
    async def _save_accruals(
        conn: AsyncConnection, accrual: dict[tuple[str, datetime], tuple[str, Utility, Decimal, Decimal]]
    ) -> None:
        if not accrual:
            return
        keys = sorted(accrual)
        params = {
            "m": [k[0] for k in keys],
            "h": [k[1] for k in keys],
            "a": [accrual[k][0] for k in keys],
            "u": [accrual[k][1].value for k in keys],
            "q": [accrual[k][2] for k in keys],
            "x": [accrual[k][3] for k in keys],
        }
        unnest = (
            "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:h AS timestamptz[]), CAST(:a AS text[]), "
            "CAST(:u AS text[]), CAST(:q AS numeric[]), CAST(:x AS numeric[]))"
        )
        await conn.execute(
            text(
                f"INSERT INTO billing.accruals (meter_id, hour, account_id, utility, quantity, amount) {unnest} "
                "ON CONFLICT (meter_id, hour) DO UPDATE SET quantity = billing.accruals.quantity + EXCLUDED.quantity, "
                "amount = billing.accruals.amount + EXCLUDED.amount"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO billing.usage_hourly (meter_id, hour, utility, quantity, cost) "
                f"SELECT m, h, u, q, x FROM ({unnest}) AS s(m, h, a, u, q, x) "
                "ON CONFLICT (meter_id, hour) DO UPDATE SET quantity = billing.usage_hourly.quantity + EXCLUDED.quantity, "
                "cost = billing.usage_hourly.cost + EXCLUDED.cost"
            ),
            params,
        )

    @staticmethod
    async def _hold(conn: AsyncConnection, held: list[tuple[Reading, str, Decimal, str]]) -> None:
        for reading, register, value, reason in held:
            log.warning("held reading of %s for review: %s", reading.meter_id, reason)
            await conn.execute(
                text(
                    "INSERT INTO billing.held_readings (reading_id, meter_id, register, value, sampled_at, reason) "
                    "VALUES (:i, :m, :r, :v, :t, :why) ON CONFLICT DO NOTHING"
                ),
                {
                    "i": reading.reading_id,
                    "m": reading.meter_id,
                    "r": register,
                    "v": value,
                    "t": reading.sampled_at,
                    "why": reason,
                },
            )

    # --- posting accruals to the ledger ---------------------------------------------------------

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval_seconds)
            try:
                await self.flush(before=_hour(datetime.now(UTC)))
            except Exception:
                log.exception("posting accruals failed; will retry")

    async def flush(self, *, before: datetime) -> int:
        """Post every accrual of an hour that ended before `before`: one ledger transaction per meter-hour."""
        posted = 0
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        "DELETE FROM billing.accruals WHERE hour < :b "
                        "RETURNING meter_id, hour, account_id, utility, amount"
                    ),
                    {"b": before},
                )
            ).all()
            if not rows:
                return 0
            carries = {
                row.meter_id: row.remainder
                for row in await conn.execute(
                    text("SELECT meter_id, remainder FROM billing.carries WHERE meter_id = ANY(:m) FOR UPDATE"),
                    {"m": sorted({r.meter_id for r in rows})},
                )
            }
            for row in sorted(rows, key=lambda r: (r.meter_id, r.hour)):
                fen, carries[row.meter_id] = split_cents(carries.get(row.meter_id, Decimal(0)) + row.amount)
                if fen == 0:
                    continue
                await store.post(
                    conn,
                    "consumption",
                    [
                        store.Entry(store.household(row.account_id), -fen, row.meter_id, row.hour),
                        store.Entry(REVENUE[Utility(row.utility)], fen, row.meter_id, row.hour),
                    ],
                )
                posted += 1
            await conn.execute(
                text(
                    "INSERT INTO billing.carries (meter_id, remainder) SELECT * FROM unnest(CAST(:m AS text[]), CAST(:r AS numeric[])) "
                    "ON CONFLICT (meter_id) DO UPDATE SET remainder = EXCLUDED.remainder"
                ),
                {"m": list(carries), "r": list(carries.values())},
            )
        return posted

    # --- balances -------------------------------------------------------------------------------

    async def _available(self, conn: AsyncConnection, account_ids: list[str]) -> dict[str, Decimal]:
        rows = await conn.execute(
            text(
                "SELECT a.account_id, coalesce(b.balance, 0) - coalesce(p.pending, 0) - coalesce(c.carried, 0) AS available "
                "FROM unnest(CAST(:a AS text[])) AS a(account_id) "
                "LEFT JOIN billing.balances b ON b.ledger_account = 'household:' || a.account_id "
                "LEFT JOIN (SELECT account_id, sum(amount) AS pending FROM billing.accruals WHERE account_id = ANY(:a) "
                "           GROUP BY account_id) p ON p.account_id = a.account_id "
                "LEFT JOIN (SELECT mb.account_id, sum(c.remainder) AS carried FROM billing.carries c "
                "           JOIN billing.meter_bindings mb USING (meter_id) WHERE mb.account_id = ANY(:a) "
                "           GROUP BY mb.account_id) c ON c.account_id = a.account_id"
            ),
            {"a": account_ids},
        )
        return {row.account_id: row.available for row in rows}

    async def _evaluate_levels(self, conn: AsyncConnection, account_ids: set[str]) -> None:
        if not account_ids:
            return
        ordered = sorted(account_ids)
        accounts = (
            await conn.execute(
                text(
                    "SELECT account_id, level, sequence, low_1, low_2, grace_credit FROM billing.accounts "
                    "WHERE account_id = ANY(:a) ORDER BY account_id FOR UPDATE"
                ),
                {"a": ordered},
            )
        ).all()
        available = await self._available(conn, ordered)
        meters = await self._meters_of(conn, ordered)
        for acc in accounts:
            previous = BalanceLevel(acc.level)
            thresholds = ledger.BalanceThresholds(level1=acc.low_1, level2=acc.low_2, grace_credit=acc.grace_credit)
            level = ledger.classify_balance(
                available[acc.account_id], previous, thresholds, self._settings.restore_hysteresis
            )
            if level is previous:
                continue
            # An improvement that is not a restoration (low_2 → ok) is still announced, so the
            # low-balance alarm can clear and displays follow.
            kinds = ledger.transition_events(previous, level) or [BalanceEventKind.CHANGED]
            sequence = acc.sequence
            for kind in kinds:
                sequence += 1
                event = BalanceEvent(
                    source=self._source,
                    account_id=acc.account_id,
                    kind=kind,
                    level=level,
                    balance=available[acc.account_id].quantize(Decimal("0.01")),
                    sequence=sequence,
                    meters=meters.get(acc.account_id, ()),
                )
                await self._outbox.add(conn, topics.balance(acc.account_id), event)
                log.info("account %s: %s (available %s)", acc.account_id, kind, event.balance)
            await conn.execute(
                text("UPDATE billing.accounts SET level = :l, sequence = :s WHERE account_id = :a"),
                {"l": level.value, "s": sequence, "a": acc.account_id},
            )

    @staticmethod
    async def _meters_of(conn: AsyncConnection, account_ids: list[str]) -> dict[str, tuple[MeterRef, ...]]:
        result: dict[str, list[MeterRef]] = {}
        rows = await conn.execute(
            text(
                "SELECT account_id, meter_id, utility FROM billing.meter_bindings WHERE account_id = ANY(:a) "
                "ORDER BY meter_id"
            ),
            {"a": account_ids},
        )
        for row in rows:
            result.setdefault(row.account_id, []).append(MeterRef(meter_id=row.meter_id, utility=Utility(row.utility)))
        return {k: tuple(v) for k, v in result.items()}

    # --- payments -------------------------------------------------------------------------------

    async def top_up(
        self, account_id: str, amount: Decimal, channel: str, reference: str | None, idempotency_key: str
    ) -> dict[str, Any]:
        """Credit an account once per idempotency key; a replay returns the original payment."""
        if amount <= 0:
            raise BillingError("amount must be positive", code="invalid_amount", status_code=422)
        if channel not in CHANNEL_ACCOUNTS:
            raise BillingError(f"unknown channel {channel}", code="invalid_channel", status_code=422)
        fingerprint = hashlib.sha256(f"{account_id}|{amount}|{channel}|{reference or ''}".encode()).hexdigest()
        async with self._engine.begin() as conn:
            # Serialise concurrent retries of the same key before looking for an earlier result.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": idempotency_key})
            existing = (
                await conn.execute(
                    text("SELECT * FROM billing.payments WHERE idempotency_key = :k"), {"k": idempotency_key}
                )
            ).first()
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("idempotency key already used for a different payment", code="idempotency_conflict")
                return {**self._payment_out(existing._asdict()), "replayed": True}
            if (
                await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
            ).first() is None:
                raise NotFound(f"no account {account_id}")
            txn_id = await store.post(
                conn,
                "topup",
                [store.Entry(store.household(account_id), amount), store.Entry(CHANNEL_ACCOUNTS[channel], -amount)],
                memo=f"{channel} {reference or ''}".strip(),
            )
            balance = (
                await conn.execute(
                    text("SELECT balance FROM billing.balances WHERE ledger_account = :a"),
                    {"a": store.household(account_id)},
                )
            ).scalar_one()
            payment = {
                "payment_id": uuid.uuid4(),
                "account_id": account_id,
                "channel": channel,
                "amount": amount,
                "reference": reference,
                "idempotency_key": idempotency_key,
                "fingerprint": fingerprint,
                "txn_id": txn_id,
                "balance_after": balance,
            }
            await conn.execute(
                text(
                    "INSERT INTO billing.payments (payment_id, account_id, channel, amount, reference, idempotency_key, "
                    "fingerprint, txn_id, balance_after) VALUES (:payment_id, :account_id, :channel, :amount, :reference, "
                    ":idempotency_key, :fingerprint, :txn_id, :balance_after)"
                ),
                payment,
            )
            await self._evaluate_levels(conn, {account_id})
        self._outbox.notify()
        return {**self._payment_out(payment), "replayed": False}

    @staticmethod
    def _payment_out(row: dict[str, Any]) -> dict[str, Any]:
        keys = ("payment_id", "account_id", "amount", "channel", "reference", "balance_after", "txn_id")
        return {k: row[k] for k in keys}

    # --- set-up and queries ---------------------------------------------------------------------

    async def put_account(self, account_id: str, name: str, low_1: Decimal, low_2: Decimal, grace: Decimal) -> None:
        if not low_1 >= low_2 >= 0 or grace < 0:
            raise BillingError(
                "thresholds must satisfy low_1 ≥ low_2 ≥ 0 and grace ≥ 0", code="invalid_thresholds", status_code=422
            )
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.accounts (account_id, name, low_1, low_2, grace_credit) VALUES (:a, :n, :l1, :l2, :g) "
                    "ON CONFLICT (account_id) DO UPDATE SET name = EXCLUDED.name, low_1 = EXCLUDED.low_1, "
                    "low_2 = EXCLUDED.low_2, grace_credit = EXCLUDED.grace_credit"
                ),
                {"a": account_id, "n": name, "l1": low_1, "l2": low_2, "g": grace},
            )

    async def bind_meter(self, meter_id: str, account_id: str, utility: Utility) -> None:
        async with self._engine.begin() as conn:
            if (
                await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
            ).first() is None:
                raise NotFound(f"no account {account_id}")
            await conn.execute(
                text(
                    "INSERT INTO billing.meter_bindings (meter_id, account_id, utility) VALUES (:m, :a, :u) "
                    "ON CONFLICT (meter_id) DO UPDATE SET account_id = EXCLUDED.account_id, utility = EXCLUDED.utility"
                ),
                {"m": meter_id, "a": account_id, "u": utility.value},
            )

    async def set_tariff(self, utility: Utility, unit_price: Decimal, effective_from: datetime) -> None:
        if unit_price < 0:
            raise BillingError("price must not be negative", code="invalid_price", status_code=422)
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.tariffs (utility, unit_price, effective_from) VALUES (:u, :p, :e) "
                    "ON CONFLICT (utility, effective_from) DO UPDATE SET unit_price = EXCLUDED.unit_price"
                ),
                {"u": utility.value, "p": unit_price, "e": effective_from},
            )

    async def account(self, account_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            acc = (
                await conn.execute(text("SELECT * FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
            ).first()
            if acc is None:
                raise NotFound(f"no account {account_id}")
            balance = (
                await conn.execute(
                    text("SELECT balance FROM billing.balances WHERE ledger_account = :a"),
                    {"a": store.household(account_id)},
                )
            ).scalar_one_or_none() or Decimal("0.00")
            available = (await self._available(conn, [account_id]))[account_id]
        return {
            "account_id": account_id,
            "name": acc.name,
            "balance": balance,
            "available": available,
            "level": acc.level,
            "sequence": acc.sequence,
        }

    async def ledger(self, account_id: str, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT entry_id, txn_id, amount, kind, meter_id, period_start, reverses, memo, created_at "
                    "FROM billing.ledger_entries WHERE ledger_account = :a ORDER BY entry_id DESC LIMIT :n"
                ),
                {"a": store.household(account_id), "n": limit},
            )
            return [r._asdict() for r in rows]
