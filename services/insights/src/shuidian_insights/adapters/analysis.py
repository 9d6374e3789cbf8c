"""Analysis runs against the archive's profiles: tenant reports, the what-if, line loss, habit clusters
and trends. Each reads set-based, hands plain values to the pure domain and stores what it must keep."""

from __future__ import annotations

import calendar
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_insights.adapters.archive import Archive
from shuidian_insights.adapters.households import Households
from shuidian_insights.adapters.tariffs import Tariffs
from shuidian_insights.domain import advice, clusters, line_loss
from shuidian_insights.domain.pricing import HOURS, MonthProfile, first_tou, rate_by_hour
from shuidian_insights.domain.usage import month_key, previous_months
from shuidian_insights.domain.whatif import Household, HouseholdBill, PriceClasses, WhatIf, summarise
from shuidian_insights.errors import Invalid, NotFound
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.contracts.insights import LineLossExceeded, LineLossGroupIn, WhatIfIn

ZERO = Decimal(0)
WINDOW_DAYS = 30
STREAM_ROWS = 2_000  # households per fetch of the what-if's cursor


class Analysis:
    def __init__(
        self,
        engine: AsyncEngine,
        archive: Archive,
        households: Households,
        tariffs: Tariffs,
        outbox: Outbox,
        source: str,
        tz: ZoneInfo,
    ) -> None:
        self._engine = engine
        self._archive = archive
        self._households = households
        self._tariffs = tariffs
        self._outbox = outbox
        self._source = source
        self._tz = tz

    # --- tenant report --------------------------------------------------------------------------

    async def _hours(self, meter_id: str, first: date, last: date) -> tuple[tuple[datetime, Decimal], ...]:
        """The meter's known hours in [first, last] as (local hour start, use)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT day, by_hour FROM insights.daily_profiles WHERE meter_id = :m AND day >= :f AND day <= :l"
                ),
                {"m": meter_id, "f": first, "l": last},
            )
            out = []
            for day, by_hour in rows:
                midnight = datetime.combine(day, datetime.min.time(), self._tz)
                out += [(midnight.replace(hour=h), Decimal(q)) for h, q in enumerate(by_hour)]
            return tuple(out)

    async def _peers(
        self, household: dict[str, Any], utility: str, month: str
    ) -> tuple[Decimal | None, list[advice.Peer]]:
        """The household's use in `month` and that of the estate's households of about its area and size."""
        area, size = household["area_m2"], household["household_size"] or 1
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT h.account_id, h.area_m2, h.household_size, p.total FROM insights.households h "
                    "JOIN insights.household_meters m ON m.account_id = h.account_id "
                    "JOIN insights.monthly_profiles p ON p.meter_id = m.meter_id AND p.month = :month "
                    "WHERE h.estate_id = :estate AND m.utility = :utility "
                    "AND h.area_m2 BETWEEN :area * 0.8 AND :area * 1.2 AND h.household_size BETWEEN :size - 1 AND :size + 1"
                ),
                {"estate": household["estate_id"], "utility": utility, "month": month, "area": area, "size": size},
            )
            peers = [advice.Peer(r.account_id, r.area_m2, r.household_size, r.total) for r in rows]
        own = next((p.quantity for p in peers if p.account_id == household["account_id"]), None)
        return own, peers

    async def tenant_report(self, account_id: str, today: date) -> dict[str, Any]:
        household = await self._households.get(account_id)
        if household is None:
            raise NotFound(f"no household {account_id}")
        meters = await self._households.meters_of(account_id)
        last = today - timedelta(days=1)
        first = today - timedelta(days=WINDOW_DAYS)
        size = household["household_size"] or 1
        last_month = previous_months(today, 1)[0]
        windows, previous, mtd = [], {}, {}
        peers: dict[str, tuple[Decimal, list[Decimal]]] = {}
        for utility, meter_id in meters.items():
            hours = await self._hours(meter_id, first - timedelta(days=WINDOW_DAYS), last)
            current = tuple(h for h in hours if h[0].date() >= first)
            if not current:
                continue
            before = [q for at, q in hours if at.date() < first]
            if len(before) >= WINDOW_DAYS * HOURS * 9 // 10:
                previous[utility] = sum(before, ZERO)
            mtd[utility] = sum((q for at, q in current if at.date() >= today.replace(day=1)), ZERO)
            tariff = await self._tariffs.current(utility)
            window = advice.Window(utility, current, tariff, size, WINDOW_DAYS)
            windows.append(window)
            if household["area_m2"] is not None:
                own, candidates = await self._peers(household, utility, last_month)
                if own is not None:
                    peers[utility] = (own, advice.similar(household["area_m2"], size, candidates, account_id))
        items = advice.report(
            windows,
            previous_totals=previous,
            peers=peers,
            peer_month=last_month,
            month_to_date=mtd,
            today=today,
            days_in_month=calendar.monthrange(today.year, today.month)[1],
        )
        return {
            "account_id": account_id,
            "estate_id": household["estate_id"],
            "computed_at": datetime.now(UTC),
            "window_start": first,
            "window_end": last,
            "items": items,
        }

    # --- what-if --------------------------------------------------------------------------------

    async def month_profiles(self, utility: str, months: Sequence[str], estate_id: str | None) -> list[Household]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT h.account_id, coalesce(h.household_size, 1) AS size, p.month, p.by_hour "
                    "FROM insights.households h JOIN insights.household_meters m ON m.account_id = h.account_id "
                    "JOIN insights.monthly_profiles p ON p.meter_id = m.meter_id "
                    "WHERE m.utility = :utility AND p.month = ANY(:months) "
                    "AND (CAST(:estate AS text) IS NULL OR h.estate_id = :estate) ORDER BY 1, 3"
                ),
                {"utility": utility, "months": list(months), "estate": estate_id},
            )
            by_account: dict[str, tuple[int, list[MonthProfile]]] = {}
            for account, size, month, by_hour in rows:
                by_account.setdefault(account, (size, []))[1].append(MonthProfile(month, tuple(by_hour)))
        return [Household(a, size, tuple(ms)) for a, (size, ms) in by_account.items()]

    async def class_bills(
        self, utility: str, months: Sequence[str], estate_id: str | None, classes: PriceClasses
    ) -> list[HouseholdBill]:
        """Every household's bills before and after over `months`.

        PostgreSQL sums each month's hours per price class (2–4 numbers instead of 24) and hands one row per
        household with its months as arrays; the rows stream through a server-side cursor and are priced while
        the next ones are read, so neither side waits for the whole set."""
        sums = ", ".join("(" + " + ".join(f"p.by_hour[{h + 1}]" for h in hours) + ")" for hours in classes.hours)
        bills: list[HouseholdBill] = []
        async with self._engine.connect() as conn:
            result = await conn.stream(
                text(
                    "SELECT h.account_id, coalesce(h.household_size, 1) AS size, array_agg(p.month ORDER BY p.month), "
                    f"array_agg(ARRAY[{sums}] ORDER BY p.month) "
                    "FROM insights.households h JOIN insights.household_meters m ON m.account_id = h.account_id "
                    "JOIN insights.monthly_profiles p ON p.meter_id = m.meter_id "
                    "WHERE m.utility = :utility AND p.month = ANY(:months) "
                    "AND (CAST(:estate AS text) IS NULL OR h.estate_id = :estate) GROUP BY 1, 2"
                ),
                {"utility": utility, "months": list(months), "estate": estate_id},
            )
            async for rows in result.partitions(STREAM_ROWS):
                for account, size, labels, by_class in rows:
                    profiles = tuple(MonthProfile(m, tuple(q)) for m, q in zip(labels, by_class, strict=True))
                    bills.append(classes.bill(Household(account, size, profiles)))
        return bills

    async def what_if(self, request: WhatIfIn, today: date) -> dict[str, Any]:
        started = time.perf_counter()
        current = await self._tariffs.current(request.utility)
        if current is None:
            raise Invalid(f"no {request.utility} tariff in force that the what-if can price per whole hour")
        months = previous_months(today, request.months)
        classes = PriceClasses.of(current, request.proposed)
        bills = await self.class_bills(request.utility, months, request.estate_id, classes)
        return what_if_out(request.utility, months, summarise(bills), started)

    # --- line loss ------------------------------------------------------------------------------

    async def put_group(self, group_id: str, group: LineLossGroupIn) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO insights.line_loss_groups VALUES (:g, :m, :s, :t, :c, :e) ON CONFLICT (group_id) "
                    "DO UPDATE SET master_meter_id = EXCLUDED.master_meter_id, sub_meter_ids = EXCLUDED.sub_meter_ids, "
                    "threshold_pct = EXCLUDED.threshold_pct, min_completeness_pct = EXCLUDED.min_completeness_pct, "
                    "estate_id = EXCLUDED.estate_id"
                ),
                {
                    "g": group_id,
                    "m": group.master_meter_id,
                    "s": list(group.sub_meter_ids),
                    "t": group.threshold_pct,
                    "c": group.min_completeness_pct,
                    "e": group.estate_id,
                },
            )

    async def judge_line_loss(self, day: date) -> int:
        """Judge every group for `day` from the day's frozen values; publish each newly exceeded day once."""
        registers = ["energy_active_import_total", "water_volume_total"]
        async with self._engine.begin() as conn:
            groups = (await conn.execute(text("SELECT * FROM insights.line_loss_groups"))).all()
            for group in groups:
                meters = [group.master_meter_id, *group.sub_meter_ids]
                rows = await conn.execute(
                    text(
                        "SELECT a.meter_id, greatest(b.value - a.value, 0) AS q FROM insights.frozen a "
                        "JOIN insights.frozen b ON b.meter_id = a.meter_id AND b.register = a.register AND b.day = :next "
                        "WHERE a.meter_id = ANY(:meters) AND a.day = :day AND a.register = ANY(:registers)"
                    ),
                    {"meters": meters, "day": day, "next": day + timedelta(days=1), "registers": registers},
                )
                used = {r.meter_id: r.q for r in rows}
                verdict = line_loss.judge(
                    used.get(group.master_meter_id),
                    {m: used.get(m) for m in group.sub_meter_ids},
                    threshold_pct=group.threshold_pct,
                    min_completeness_pct=group.min_completeness_pct,
                )
                was = await conn.scalar(
                    text("SELECT exceeded FROM insights.line_loss_days WHERE group_id = :g AND day = :d"),
                    {"g": group.group_id, "d": day},
                )
                await conn.execute(
                    text(
                        "INSERT INTO insights.line_loss_days VALUES (:g, :d, :mq, :sq, :lq, :lp, :c, :j, :x) "
                        "ON CONFLICT (group_id, day) DO UPDATE SET master_quantity = EXCLUDED.master_quantity, "
                        "sub_quantity = EXCLUDED.sub_quantity, loss_quantity = EXCLUDED.loss_quantity, "
                        "loss_pct = EXCLUDED.loss_pct, completeness_pct = EXCLUDED.completeness_pct, "
                        "judged = EXCLUDED.judged, exceeded = EXCLUDED.exceeded"
                    ),
                    {
                        "g": group.group_id,
                        "d": day,
                        "mq": verdict.master_quantity,
                        "sq": verdict.sub_quantity,
                        "lq": verdict.loss_quantity,
                        "lp": verdict.loss_pct,
                        "c": verdict.completeness_pct,
                        "j": verdict.judged,
                        "x": verdict.exceeded,
                    },
                )
                if verdict.exceeded and not was:
                    assert verdict.loss_pct is not None
                    assert verdict.master_quantity is not None
                    event = LineLossExceeded(
                        source=self._source,
                        group_id=group.group_id,
                        master_meter_id=group.master_meter_id,
                        day=day,
                        loss_pct=verdict.loss_pct,
                        threshold_pct=group.threshold_pct,
                        master_quantity=verdict.master_quantity,
                        sub_quantity=verdict.sub_quantity,
                        completeness_pct=verdict.completeness_pct,
                        estate_id=group.estate_id,
                    )
                    await self._outbox.add(conn, topics.line_loss(group.group_id), event)
            return len(groups)

    async def line_loss_days(self, group_id: str, first: date, last: date) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM insights.line_loss_days WHERE group_id = :g AND day >= :f AND day <= :l ORDER BY day"
                ),
                {"g": group_id, "f": first, "l": last},
            )
            return [dict(r._mapping) for r in rows]

    # --- habits ---------------------------------------------------------------------------------

    async def habits(self, utility: str, month: str, estate_id: str | None, *, seed: int = 0) -> dict[str, Any]:
        """Cluster the month's household shapes (stored, so a read is cheap and a rerun the same)."""
        households = await self.month_profiles(utility, [month], estate_id)
        points, accounts = [], []
        for household in households:
            shape = clusters.normalise([float(q) for q in household.months[0].by_hour])
            if shape is not None:
                points.append(shape)
                accounts.append(household.account_id)
        if len(points) < 2:
            raise NotFound(f"fewer than two households with {utility} use in {month}")
        result = clusters.choose_k(points, seed=seed)
        tariff = await self._tariffs.current(utility)
        tou = first_tou(tariff) if tariff else None
        out = habits_out(utility, month, estate_id, result, tou)
        labels = dict(zip(accounts, result.labels, strict=True))
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO insights.habit_runs (utility, estate_id, month, result, labels) "
                    "VALUES (:u, :e, :m, CAST(:r AS jsonb), CAST(:l AS jsonb)) ON CONFLICT (utility, estate_id, month) "
                    "DO UPDATE SET result = EXCLUDED.result, labels = EXCLUDED.labels, computed_at = now()"
                ),
                {
                    "u": utility,
                    "e": estate_id or "",
                    "m": month,
                    "r": json.dumps(out, default=str),
                    "l": json.dumps(labels),
                },
            )
        return out

    # --- trends ---------------------------------------------------------------------------------

    async def trends(self, utility: str, estate_id: str | None, building_id: str | None) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT p.month, sum(q) AS quantity FROM insights.monthly_profiles p "
                    "JOIN insights.household_meters m ON m.meter_id = p.meter_id "
                    "JOIN insights.households h ON h.account_id = m.account_id, unnest(p.by_hour) q "
                    "WHERE m.utility = :u AND (CAST(:e AS text) IS NULL OR h.estate_id = :e) "
                    "AND (CAST(:b AS text) IS NULL OR h.building_id = :b) GROUP BY 1 ORDER BY 1"
                ),
                {"u": utility, "e": estate_id, "b": building_id},
            )
            totals = {r.month: r.quantity for r in rows}
        return trend_rows(totals)


def _pct(now: Decimal, before: Decimal | None) -> Decimal | None:
    if not before:
        return None
    return ((now - before) * 100 / before).quantize(Decimal("0.1"))


def trend_rows(totals: dict[str, Decimal]) -> list[dict[str, Any]]:
    out = []
    for month, quantity in sorted(totals.items()):
        year, mon = int(month[:4]), int(month[5:])
        previous = f"{year - (mon == 1)}-{12 if mon == 1 else mon - 1:02d}"
        out.append(
            {
                "period": month,
                "quantity": quantity,
                "mom_pct": _pct(quantity, totals.get(previous)),
                "yoy_pct": _pct(quantity, totals.get(f"{year - 1}-{mon:02d}")),
            }
        )
    return out


def what_if_out(utility: str, months: Sequence[str], result: WhatIf, started: float) -> dict[str, Any]:
    biggest = sorted(result.bills, key=lambda b: b.change, reverse=True)[:10]
    return {
        "utility": utility,
        "months": list(months),
        "households": len(result.bills),
        "current_revenue": result.current_revenue,
        "proposed_revenue": result.proposed_revenue,
        "revenue_change": result.revenue_change,
        "revenue_change_pct": result.revenue_change_pct,
        "pay_more": result.count(1),
        "pay_less": result.count(-1),
        "unchanged": result.count(0),
        "change_percentiles": result.change_percentiles(),
        "histogram": [
            {"lower": str(lo.quantize(Decimal("0.01"))), "upper": str(hi.quantize(Decimal("0.01"))), "count": str(n)}
            for lo, hi, n in result.histogram()
        ],
        "biggest_increases": [
            {"account_id": b.account_id, "current": b.current, "proposed": b.proposed, "change": b.change}
            for b in biggest
        ],
        "seconds": round(time.perf_counter() - started, 3),
    }


def rate_shares(shape: Sequence[float], tou: Any) -> dict[str, str | None]:
    """A daily shape's share at the dearest (peak), the cheapest (valley) and the other (flat) rates."""
    if tou is None:
        return {"peak_share": None, "flat_share": None, "valley_share": None}
    labels = rate_by_hour(tou)
    prices = {rate.label: rate.unit_price for rate in tou.rates}
    top, bottom = max(prices.values()), min(prices.values())
    peak = sum(v for h, v in enumerate(shape) if prices[labels[h]] == top)
    valley = sum(v for h, v in enumerate(shape) if prices[labels[h]] == bottom and top != bottom)
    flat = sum(shape) - peak - valley
    return {
        k: str(Decimal(v).quantize(Decimal("0.001")))
        for k, v in (("peak_share", peak), ("flat_share", flat), ("valley_share", valley))
    }


def habits_out(
    utility: str, month: str, estate_id: str | None, result: clusters.Clustering, tou: Any
) -> dict[str, Any]:
    counts: dict[int, int] = defaultdict(int)
    for label in result.labels:
        counts[label] += 1
    total = len(result.labels)
    estate_shape = [sum(result.centroids[c][h] * n for c, n in counts.items()) / total for h in range(HOURS)]
    out_clusters = [
        {
            "cluster": index,
            "households": counts[index],
            "shape": [str(Decimal(v).quantize(Decimal("0.0001"))) for v in centroid],
            **rate_shares(centroid, tou),
        }
        for index, centroid in enumerate(result.centroids)
    ]
    return {
        "utility": utility,
        "estate_id": estate_id,
        "month": month,
        "k": result.k,
        "silhouette": str(Decimal(result.silhouette).quantize(Decimal("0.001"))),
        "criterion": "k in 2..8 with the highest mean silhouette of normalised daily shapes (sampled)",
        "clusters": out_clusters,
        **rate_shares(estate_shape, tou),
    }


def today_in(tz: ZoneInfo) -> date:
    return datetime.now(tz).date()


__all__ = ["Analysis", "month_key", "today_in"]
