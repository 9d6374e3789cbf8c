"""Staff reports, read straight from the ledger and the hourly usage billing keeps: arrears (欠费),
revenue by channel and local day (收入), consumption by building (用量) and the collection rate
(收缴率) of a month — each one or two queries over indexes (after a `SET LOCAL jit = off`).

Definitions (also in docs/billing.md, "Reports"):
  * arrears: a purse whose ledger balance (paid + subsidy credit) is below zero; it has been in
    arrears since the ledger entry that last took it from ≥ 0 to < 0.
  * revenue: the money that came in through each channel, i.e. the movement of the channel's
    ledger account (cash:counter, clearing:*), negated: top-ups − refunds ± corrections (冲正).
  * consumption: quantity and exact cost of `usage_hourly` per building of the metered rooms,
    plus the estate's common meters and the 公摊 shares posted to each building's households.
  * collection rate: collected ÷ billable over the local month, where billable (应收) is what was
    charged to households (usage, fixed fees, 公摊, net of their corrections) and collected (实收)
    what households paid in (top-ups net of refunds and their corrections)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters import statements, store
from shuidian_billing.adapters.credits import CHANNEL_ACCOUNTS
from shuidian_billing.adapters.listings import ListingError, instant, order_by, page, require_estate
from shuidian_shared.messages import Utility
from shuidian_shared.money import CENT

ZERO = Decimal("0.00")
MAX_RANGE = timedelta(days=400)
CHANNEL_OF = {account: channel for channel, account in CHANNEL_ACCOUNTS.items()}
# Every ledger account a household's money can sit in, as suffixes of 'household:<account_id>'.
PURSE_SUFFIXES = [name.removeprefix(store.household("-")) for name in store.purses_of("-")]
# The household account of a ledger account name (the inverse of store.purse / store.subsidy).
# (A colon before a word is escaped: SQLAlchemy's text() would read it as a bind parameter.)
ACCOUNT_OF_PURSE = r"regexp_replace(substr({col}, 11), '(\:(electricity|water))?(\:subsidy)?$', '')"


@asynccontextmanager
async def _reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for one report. These statements join many small index lookups, whose summed cost
    estimates cross PostgreSQL's JIT threshold: compiling then takes ~0.5 s for ~20 ms of execution."""
    async with engine.connect() as conn:
        await conn.execute(text("SET LOCAL jit = off"))
        yield conn


def _money(value: Decimal | None) -> Decimal:
    return (value or ZERO).quantize(CENT)


def _window(start: str | None, end: str | None, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) in UTC; by default from the local start of this month until now."""
    now = datetime.now(UTC)
    until = instant(end, "end", tz) or now
    since = instant(start, "start", tz) or now.astimezone(tz).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    ).astimezone(UTC)
    if not since < until:
        raise ListingError("start must be before end / 开始时间须早于结束时间", code="invalid_range")
    if until - since > MAX_RANGE:
        raise ListingError(
            f"at most {MAX_RANGE.days} days per report / 单次最多 {MAX_RANGE.days} 天", code="invalid_range"
        )
    return since, until


ARREARS_SQL = """
WITH acc AS (
    SELECT a.account_id, a.name, a.estate_id, a.grace_credit, a.level, coalesce(e.shared_balance, true) AS shared
    FROM billing.accounts a LEFT JOIN billing.estates e USING (estate_id)
    WHERE CAST(:e AS text) IS NULL OR a.estate_id = :e
), purse AS (
    SELECT acc.*, p.purse, 'household:' || acc.account_id || p.suffix AS ledger_account
    FROM acc JOIN (VALUES ('all', '', true), ('electricity', '\\:electricity', false), ('water', '\\:water', false))
         AS p(purse, suffix, shared) ON p.shared = acc.shared
), owing AS (
    SELECT purse.*, coalesce(paid.balance, 0) + coalesce(sub.balance, 0) AS balance
    FROM purse
    LEFT JOIN billing.balances paid ON paid.ledger_account = purse.ledger_account
    LEFT JOIN billing.balances sub ON sub.ledger_account = purse.ledger_account || '\\:subsidy'
    WHERE coalesce(paid.balance, 0) + coalesce(sub.balance, 0) < 0
), arrears AS (
    SELECT o.account_id, o.name AS account_name, o.estate_id, o.purse, o.balance, -o.balance AS owed, o.grace_credit,
           coalesce(lvl.level, CASE WHEN o.purse = 'all' THEN o.level END, 'ok') AS level, since.at AS since,
           floor(extract(epoch FROM CAST(:now AS timestamptz) - since.at) / 86400)::int AS days_in_arrears,
           who.room_id, who.code AS room_code, who.tenant_id, who.tenant_name, who.phone
    FROM owing o
    LEFT JOIN billing.purse_levels lvl ON lvl.account_id = o.account_id AND lvl.purse = o.purse
    -- Newest entry first (by booking time), the balance before each entry is the balance now minus every entry since:
    -- the newest entry before which the balance was >= 0 is the one that took it below zero.
    CROSS JOIN LATERAL (
        SELECT h.created_at AS at FROM (
            SELECT entry_id, created_at, o.balance - sum(amount) OVER (ORDER BY created_at DESC, entry_id DESC) AS before
            FROM billing.ledger_entries
            WHERE ledger_account IN (o.ledger_account, o.ledger_account || '\\:subsidy')
        ) h WHERE h.before >= 0 ORDER BY h.created_at DESC, h.entry_id DESC LIMIT 1
    ) since
    LEFT JOIN LATERAL (
        SELECT l.room_id, r.code, l.tenant_id, t.name AS tenant_name, t.phone
        FROM billing.leases l JOIN billing.rooms r USING (room_id) JOIN billing.tenants t USING (tenant_id)
        WHERE l.account_id = o.account_id ORDER BY l.starts_at DESC LIMIT 1
    ) who ON true
)
SELECT * FROM arrears WHERE days_in_arrears >= :min_days
"""
ARREARS_SORTS = {
    "days_in_arrears": "days_in_arrears",
    "owed": "owed",
    "balance": "balance",
    "since": "since",
    "room_code": "room_code",
    "account_id": "account_id",
    "tenant_name": "tenant_name",
}


async def arrears(
    engine: AsyncEngine,
    *,
    estate_id: str | None = None,
    min_days: int = 0,
    sort: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    order = order_by(sort, ARREARS_SORTS, "-days_in_arrears", "account_id, purse")
    async with _reading(engine) as conn:
        rows = [
            r._asdict()
            for r in await conn.execute(
                text(f"{ARREARS_SQL} {order} LIMIT :n OFFSET :o"),
                {"e": estate_id, "now": datetime.now(UTC), "min_days": min_days, "n": limit + 1, "o": offset},
            )
        ]
        if not rows:
            await require_estate(conn, estate_id)
    return page(rows, limit, offset)


REVENUE_SQL = """
WITH purses AS (
    SELECT 'household:' || a.account_id || s.suffix AS name
    FROM billing.accounts a CROSS JOIN unnest(CAST(:suffixes AS text[])) AS s(suffix) WHERE a.estate_id = :e
)
SELECT to_char(c.created_at AT TIME ZONE :tz, 'YYYY-MM-DD') AS day, c.ledger_account,
       coalesce(-sum(c.amount) FILTER (WHERE c.kind = 'topup'), 0) AS payments,
       coalesce(sum(c.amount) FILTER (WHERE c.kind = 'refund'), 0) AS refunds,
       coalesce(-sum(c.amount) FILTER (WHERE c.kind NOT IN ('topup', 'refund')), 0) AS corrections,
       -sum(c.amount) AS net, count(*) FILTER (WHERE c.kind = 'topup') AS count
FROM billing.ledger_entries c
WHERE c.ledger_account = ANY(:channels) AND c.created_at >= :s AND c.created_at < :u
  AND (CAST(:e AS text) IS NULL OR EXISTS (
       SELECT 1 FROM billing.ledger_entries h WHERE h.txn_id = c.txn_id AND h.ledger_account IN (SELECT name FROM purses)))
GROUP BY 1, 2 ORDER BY 1, 2
"""
_FIGURES = ("payments", "refunds", "corrections", "net")


def _add(total: dict[str, Any], row: dict[str, Any]) -> None:
    for key in (*_FIGURES, "count"):
        total[key] = total.get(key, 0) + row[key]


async def revenue(
    engine: AsyncEngine,
    timezone: str,
    *,
    estate_id: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    tz = ZoneInfo(timezone)
    since, until = _window(start, end, tz)
    async with _reading(engine) as conn:
        await require_estate(conn, estate_id)
        rows = await conn.execute(
            text(REVENUE_SQL),
            {
                "e": estate_id,
                "suffixes": PURSE_SUFFIXES,
                "tz": str(tz),
                "channels": sorted(CHANNEL_OF),
                "s": since,
                "u": until,
            },
        )
        days = [{**r._asdict(), "channel": CHANNEL_OF[r.ledger_account]} for r in rows]
    channels: dict[str, dict[str, Any]] = {}
    total: dict[str, Any] = {}
    for day in days:
        _add(channels.setdefault(day["channel"], {}), day)
        _add(total, day)
    total = {k: total.get(k, 0 if k == "count" else ZERO) for k in (*_FIGURES, "count")}
    for key in _FIGURES:
        total[key] = _money(total[key])
    window = f"{since.astimezone(tz):%Y-%m-%d %H:%M} – {until.astimezone(tz):%Y-%m-%d %H:%M}"
    return {
        "estate_id": estate_id,
        "timezone": str(tz),
        "start": since.astimezone(tz).isoformat(),
        "end": until.astimezone(tz).isoformat(),
        "days": days,
        "channels": [
            {"channel": c, "channel_zh": statements.CHANNEL_ZH.get(c, c), **figures}
            for c, figures in sorted(channels.items())
        ],
        "total": total,
        "summary_zh": f"{window} 实收 ¥{total['net']}（缴费 ¥{total['payments']}，退款 ¥{total['refunds']}，"
        f"冲正 ¥{total['corrections']}，共 {total['count']} 笔缴费）",
        "summary_en": f"{window}: net ¥{total['net']} received (payments ¥{total['payments']}, refunds "
        f"¥{total['refunds']}, corrections ¥{total['corrections']}; {total['count']} payments)",
    }


CONSUMPTION_SQL = """
WITH bound AS (
    SELECT mb.meter_id, mb.utility, mb.valid_from, mb.valid_to,
           CASE WHEN mb.estate_id IS NOT NULL THEN 'common' WHEN mb.room_id IS NOT NULL THEN 'building'
                ELSE 'unassigned' END AS kind,
           coalesce(bl.estate_id, mb.estate_id, a.estate_id) AS estate_id, bl.building_id, bl.name AS building_name
    FROM billing.meter_bindings mb
    LEFT JOIN billing.rooms r ON r.room_id = mb.room_id
    LEFT JOIN billing.floors f ON f.floor_id = r.floor_id
    LEFT JOIN billing.buildings bl ON bl.building_id = f.building_id
    LEFT JOIN billing.accounts a ON a.account_id = mb.account_id
    WHERE (CAST(:utility AS text) IS NULL OR mb.utility = :utility)
      AND (mb.valid_from IS NULL OR mb.valid_from < :u) AND (mb.valid_to IS NULL OR mb.valid_to > :s)
      AND (CAST(:e AS text) IS NULL OR coalesce(bl.estate_id, mb.estate_id, a.estate_id) = :e)
)
SELECT b.estate_id, b.kind, b.building_id, b.building_name, b.utility, count(DISTINCT u.meter_id) AS meters,
       sum(u.quantity) AS quantity, sum(u.cost) AS cost
FROM bound b
-- Bindings of a meter partition time, so each hour (by its start) belongs to exactly one of them.
JOIN billing.usage_hourly u ON u.meter_id = b.meter_id
     AND u.hour >= greatest(CAST(:s AS timestamptz), b.valid_from) AND u.hour < least(CAST(:u AS timestamptz), b.valid_to)
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 4, 3, 5
"""
SHARED_AREA_SQL = f"""
WITH pools AS (
    SELECT estate_id, 'shared:' || estate_id AS pool FROM billing.estates WHERE CAST(:e AS text) IS NULL OR estate_id = :e
), shares AS (
    -- A transaction with a pool entry and a household entry is a 公摊 allocation (or its 冲正).
    SELECT p.estate_id, {ACCOUNT_OF_PURSE.format(col="h.ledger_account")} AS account_id, -h.amount AS amount
    FROM pools p
    JOIN billing.ledger_entries s ON s.ledger_account = p.pool AND s.period_start >= :s AND s.period_start < :u
    JOIN billing.ledger_entries h ON h.txn_id = s.txn_id AND h.ledger_account LIKE 'household:%'
)
SELECT sh.estate_id, home.building_id, home.building_name, sum(sh.amount) AS amount
FROM shares sh
LEFT JOIN LATERAL (
    SELECT f.building_id, bl.name AS building_name FROM billing.leases l JOIN billing.rooms r USING (room_id)
    JOIN billing.floors f USING (floor_id) JOIN billing.buildings bl USING (building_id)
    WHERE l.account_id = sh.account_id ORDER BY l.starts_at DESC LIMIT 1
) home ON true
GROUP BY 1, 2, 3 ORDER BY 1, 3, 2
"""


async def consumption(
    engine: AsyncEngine,
    timezone: str,
    *,
    estate_id: str | None = None,
    start: str | None = None,
    end: str | None = None,
    utility: Utility | None = None,
) -> dict[str, Any]:
    tz = ZoneInfo(timezone)
    since, until = _window(start, end, tz)
    params = {"e": estate_id, "utility": utility.value if utility else None, "s": since, "u": until}
    async with _reading(engine) as conn:
        rows = [r._asdict() for r in await conn.execute(text(CONSUMPTION_SQL), params)]
        shared = [r._asdict() for r in await conn.execute(text(SHARED_AREA_SQL), params)]
        if not rows and not shared:
            await require_estate(conn, estate_id)
    for row in rows:
        row["unit"] = statements.UNITS[row["utility"]]
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(
            row["utility"],
            {
                "estate_id": estate_id,
                "kind": "total",
                "building_id": None,
                "building_name": None,
                "utility": row["utility"],
                "unit": row["unit"],
                "meters": 0,
                "quantity": Decimal(0),
                "cost": Decimal(0),
            },
        )
        for key in ("meters", "quantity", "cost"):
            total[key] += row[key]
    for row in shared:
        row["amount"] = _money(row["amount"])
    parts_zh = [
        f"{statements.UTILITY_ZH[u]} {t['quantity']} {t['unit']}，¥{_money(t['cost'])}"
        for u, t in sorted(totals.items())
    ]
    parts_en = [f"{u} {t['quantity']} {t['unit']}, ¥{_money(t['cost'])}" for u, t in sorted(totals.items())]
    shared_total = sum((r["amount"] for r in shared), ZERO)
    return {
        "estate_id": estate_id,
        "utility": utility,
        "timezone": str(tz),
        "start": since.astimezone(tz).isoformat(),
        "end": until.astimezone(tz).isoformat(),
        "rows": rows,
        "totals": [totals[u] for u in sorted(totals)],
        "shared_area": shared,
        "summary_zh": "用量：" + ("；".join(parts_zh) or "无") + f"；公摊 ¥{shared_total}",
        "summary_en": "Consumption: " + ("; ".join(parts_en) or "none") + f"; shared areas ¥{shared_total}",
    }


COLLECTION_SQL = """
WITH acc AS (
    SELECT account_id, estate_id FROM billing.accounts WHERE CAST(:e AS text) IS NULL OR estate_id = :e
), booked AS (
    SELECT acc.estate_id, acc.account_id, le.txn_id, le.kind, le.amount
    FROM acc CROSS JOIN unnest(CAST(:suffixes AS text[])) AS s(suffix)
    JOIN billing.ledger_entries le ON le.ledger_account = 'household:' || acc.account_id || s.suffix
         AND le.created_at >= :s AND le.created_at < :u
), sided AS (
    -- What the other side of each household entry is: a charge (revenue:*, shared:*), a payment (a
    -- channel account) or a subsidy. The kinds billing posts say it; any other kind (冲正 …) is
    -- looked up in its transaction.
    SELECT b.*, CASE
        WHEN b.kind IN ('consumption', 'fixed_fee', 'shared_area') THEN 'charge'
        WHEN b.kind IN ('topup', 'refund') THEN 'payment'
        WHEN b.kind = 'subsidy_credit' THEN 'subsidy'
        ELSE (SELECT CASE WHEN min(o.ledger_account) LIKE 'revenue:%' OR min(o.ledger_account) LIKE 'shared:%' THEN 'charge'
                          WHEN min(o.ledger_account) = ANY(:channels) THEN 'payment'
                          WHEN min(o.ledger_account) = :fund THEN 'subsidy' END
              FROM billing.ledger_entries o WHERE o.txn_id = b.txn_id AND o.ledger_account NOT LIKE 'household:%')
    END AS side
    FROM booked b
)
SELECT estate_id,
       coalesce(-sum(amount) FILTER (WHERE side = 'charge'), 0) AS billable,
       coalesce(sum(amount) FILTER (WHERE side = 'payment'), 0) AS collected,
       coalesce(sum(amount) FILTER (WHERE side = 'subsidy'), 0) AS subsidies,
       count(DISTINCT account_id) FILTER (WHERE side = 'charge') AS households_billed,
       count(DISTINCT account_id) FILTER (WHERE side = 'payment' AND amount > 0) AS households_paid
FROM sided GROUP BY estate_id
"""


def _rate(row: dict[str, Any]) -> dict[str, Any]:
    billable, collected = _money(row["billable"]), _money(row["collected"])
    rate = (collected / billable).quantize(Decimal("0.0001"), ROUND_HALF_UP) if billable > 0 else None
    return {
        **row,
        "billable": billable,
        "collected": collected,
        "subsidies": _money(row["subsidies"]),
        "collection_rate": rate,
        "collection_rate_percent": f"{(rate * 100).quantize(CENT)}%" if rate is not None else None,
    }


async def collection_rate(
    engine: AsyncEngine, timezone: str, *, month: str, estate_id: str | None = None
) -> dict[str, Any]:
    tz = ZoneInfo(timezone)
    period = statements.Period.of(month, tz)
    async with _reading(engine) as conn:
        await require_estate(conn, estate_id)
        names = {
            r.estate_id: r.name
            for r in await conn.execute(
                text("SELECT estate_id, name FROM billing.estates WHERE CAST(:e AS text) IS NULL OR estate_id = :e"),
                {"e": estate_id},
            )
        }
        found = {
            r.estate_id: r._asdict()
            for r in await conn.execute(
                text(COLLECTION_SQL),
                {
                    "e": estate_id,
                    "suffixes": PURSE_SUFFIXES,
                    "s": period.start,
                    "u": period.end,
                    "channels": sorted(CHANNEL_OF),
                    "fund": "subsidy:fund",
                },
            )
        }
    empty: dict[str, Any] = {
        "billable": ZERO,
        "collected": ZERO,
        "subsidies": ZERO,
        "households_billed": 0,
        "households_paid": 0,
    }
    keys = sorted(names) + ([None] if None in found else [])
    estates = [
        _rate({**empty, **found.get(e, {}), "estate_id": e, "estate_name": names.get(e) if e else None}) for e in keys
    ]
    total = _rate(
        {
            "estate_id": estate_id,
            "estate_name": names.get(estate_id) if estate_id else None,
            **{k: sum((row[k] for row in estates), v) for k, v in empty.items()},
        }
    )
    percent = total["collection_rate_percent"] or "—"
    return {
        "month": month,
        "timezone": str(tz),
        "start": period.start.astimezone(tz).isoformat(),
        "end": period.end.astimezone(tz).isoformat(),
        "estates": estates,
        "total": total,
        "summary_zh": f"{month} 收缴率 {percent}（实收 ¥{total['collected']} ÷ 应收 ¥{total['billable']}；"
        f"补贴 ¥{total['subsidies']}）",
        "summary_en": f"{month} collection rate {percent} (collected ¥{total['collected']} ÷ billable "
        f"¥{total['billable']}; subsidies ¥{total['subsidies']})",
    }
