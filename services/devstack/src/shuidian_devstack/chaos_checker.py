"""The chaos suite's independent checker: balances, readings and relays recomputed from first principles.

Nothing here uses billing's code. The money oracle is the simulator's ground truth and what the suite
itself paid:

* A meter's true register at real instant t is its initial register plus every interval the simulator
  integrated up to t (`/truth/meters/{id}`: each interval ends where the meter was asked for a value),
  truncated to hundredths as the meter shows it. The collector's first poll is the first time anything
  asks the simulator for the meter (`first_advanced_at` in its truth; nothing else asks before it), so
  billing opens at the register shown then. Truth records only intervals in which something was
  registered: a first poll before anything flowed shows the initial register, not the first interval's.
* The consumption billing must have priced is the true register at the collector's last reading
  (`collector.device_state.last_reading_at`), or billing's own watermark where that is a register the meter really
  showed at or after that reading, minus that opening register, at the flat price the suite
  configured; an account's available credit is what the suite paid (each accepted idempotency key
  once) minus that. Drift is billing's `available` minus this, per account.
* Invariant 2: every ledger account's cached balance equals the sum of its entries (SQL on the tables).
* Lost readings: a meter whose billed watermark is older than the collector's last reading.
* False readings: a billed register that the meter never showed near the reading's sample time.
* Relays: the electricity relay, from the simulator's relay history at the moment the collector was
  stopped, against the true balance over the window before it: at or below zero throughout → must be
  cut; above the restore hysteresis throughout → must be supplied; anything else is undetermined.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

import asyncpg
import httpx

CENT = Decimal("0.01")
REGISTER_MODULUS = Decimal("1000000")
REGISTERS = {"electricity": "energy_active_import_total", "water": "water_volume_total"}
TRUTHFUL_WINDOW_S = 2.0


@dataclass(frozen=True)
class MeterFacts:
    meter_id: str
    account_id: str
    utility: str
    initial_register: Decimal


@dataclass(frozen=True)
class Payment:
    account_id: str
    amount: Decimal
    confirmed_at: float  # real epoch seconds the suite saw it accepted


@dataclass
class TrueRegister:
    """A meter's register over real time, from the simulator's truth intervals."""

    initial: Decimal
    times: list[float] = field(default_factory=list)
    values: list[Decimal] = field(default_factory=list)
    first_read_at: float | None = None  # when the meter was first asked (the collector's first poll)

    @classmethod
    def from_truth(cls, initial: Decimal, truth: dict[str, Any]) -> TrueRegister:
        first = truth.get("first_advanced_at")
        series = cls(initial, first_read_at=None if first is None else float(first))
        total = Decimal(0)
        for interval in sorted(truth["intervals"], key=lambda i: float(i["to"])):
            total += Decimal(interval["registered"])
            series.times.append(float(interval["to"]))
            series.values.append(shown(initial + total))
        return series

    @property
    def opening(self) -> Decimal:
        """The register the collector's first poll saw. Truth records only intervals in which something was
        registered, so a first poll before anything flowed ends no interval: it saw the initial register."""
        if self.first_read_at is not None:
            return self.at(self.first_read_at)
        return self.values[0] if self.values else shown(self.initial)

    def at(self, t: float) -> Decimal:
        """The register shown at real instant `t`."""
        i = bisect.bisect_right(self.times, t)
        return self.values[i - 1] if i else shown(self.initial)

    def near(self, t: float, window: float) -> set[Decimal]:
        """Every register shown in [t − window, t]."""
        lo, hi = bisect.bisect_left(self.times, t - window), bisect.bisect_right(self.times, t)
        return {self.at(t), *self.values[lo:hi]}

    def changes_between(self, start: float, end: float) -> list[float]:
        lo, hi = bisect.bisect_left(self.times, start), bisect.bisect_right(self.times, end)
        return self.times[lo:hi]


def shown(value: Decimal) -> Decimal:
    return (value % REGISTER_MODULUS).quantize(CENT, rounding=ROUND_DOWN)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True)
class Observed:
    """What the checker read at the end: billing's and the collector's tables, the simulator's truth."""

    watermarks: dict[str, tuple[Decimal, float]]  # meter → billed register and its sample time (epoch s)
    collector_last: dict[str, float | None]  # meter → the collector's last reading (epoch s)
    ledger_mismatches: list[dict[str, str]]  # ledger accounts whose cached balance is not the sum of entries
    held: int
    truths: dict[str, dict[str, Any]]  # meter → /truth/meters/{id}
    available: dict[str, Decimal]  # account → billing's available credit
    # (gateway, epoch) → the last batch billed; None if billing keeps no record of its reading streams
    streams: dict[tuple[str, str], int] | None = None
    gaps: list[tuple[str, str, int, int, str]] = field(default_factory=list)  # gateway, epoch, from, to, state


async def observe(
    database_url: str, simulator_url: str, billing_url: str, billing_auth: httpx.Auth | None, meters: list[MeterFacts]
) -> Observed:
    utility_of = {m.meter_id: m.utility for m in meters}
    conn = await asyncpg.connect(database_url)
    try:
        watermarks = {
            r["meter_id"]: (Decimal(r["value"]), r["sampled_at"].timestamp())
            for r in await conn.fetch("SELECT meter_id, register, value, sampled_at FROM billing.watermarks")
            if r["meter_id"] in utility_of and r["register"] == REGISTERS[utility_of[r["meter_id"]]]
        }
        collector_last = {
            r["meter_id"]: _epoch(r["last_reading_at"])
            for r in await conn.fetch("SELECT meter_id, last_reading_at FROM collector.device_state")
        }
        ledger_mismatches = [
            {"ledger_account": r["ledger_account"], "balance": str(r["balance"]), "entries": str(r["entries"])}
            for r in await conn.fetch(
                "SELECT coalesce(b.ledger_account, e.ledger_account) AS ledger_account, coalesce(b.balance, 0) AS balance,"
                " coalesce(e.total, 0) AS entries FROM billing.balances b FULL JOIN ("
                "  SELECT ledger_account, sum(amount) AS total FROM billing.ledger_entries GROUP BY ledger_account"
                ") e ON e.ledger_account = b.ledger_account"
                " WHERE coalesce(b.balance, 0) <> coalesce(e.total, 0)"
            )
        ]
        held = int(await conn.fetchval("SELECT count(*) FROM billing.held_readings"))
        streams: dict[tuple[str, str], int] | None = None
        gaps: list[tuple[str, str, int, int, str]] = []
        if await conn.fetchval("SELECT to_regclass('billing.reading_streams') IS NOT NULL"):
            streams = {
                (r["gateway_id"], r["epoch"]): r["last_sequence"]
                for r in await conn.fetch("SELECT gateway_id, epoch, last_sequence FROM billing.reading_streams")
            }
            gaps = [
                (r["gateway_id"], r["epoch"], r["from_sequence"], r["to_sequence"], r["state"])
                for r in await conn.fetch(
                    "SELECT gateway_id, epoch, from_sequence, to_sequence, state FROM billing.reading_gaps"
                )
            ]
    finally:
        await conn.close()
    async with httpx.AsyncClient(timeout=30.0) as client:
        truths = {m: (await client.get(f"{simulator_url}/truth/meters/{m}")).json() for m in utility_of}
        available = {}
        for account in sorted({m.account_id for m in meters}):
            response = await client.get(f"{billing_url}/v1/accounts/{account}", auth=billing_auth)
            response.raise_for_status()
            available[account] = Decimal(str(response.json()["available"]))
    return Observed(watermarks, collector_last, ledger_mismatches, held, truths, available, streams, gaps)


def unbilled_batches(seen: Observed, published: dict[tuple[str, str], dict[int, int]]) -> list[dict[str, Any]] | None:
    """Batches the collector handed to the broker (seen on the wire) that billing has not billed: above the
    last batch billed in their stream, or inside a gap billing recorded and never got replayed."""
    if seen.streams is None:
        return None
    unbilled = []
    for (gateway, epoch), batches in sorted(published.items()):
        last = seen.streams.get((gateway, epoch), 0)
        holes = [(a, b) for g, e, a, b, state in seen.gaps if (g, e) == (gateway, epoch) and state != "replayed"]
        for sequence, readings in sorted(batches.items()):
            if sequence > last or any(a <= sequence <= b for a, b in holes):
                unbilled.append({"gateway_id": gateway, "epoch": epoch, "sequence": sequence, "readings": readings})
    return unbilled


def judge(
    seen: Observed,
    *,
    published: dict[tuple[str, str], dict[int, int]],
    meters: list[MeterFacts],
    prices: dict[str, Decimal],
    payments: list[Payment],
    frozen_at: float,
    relay_window_s: float,
    hysteresis: Decimal,
) -> dict[str, Any]:
    """Every check's figures and the list of failures (empty when the platform was exact)."""
    accounts = sorted({m.account_id for m in meters})
    registers = {m.meter_id: TrueRegister.from_truth(m.initial_register, seen.truths[m.meter_id]) for m in meters}
    lost: list[dict[str, Any]] = []
    false_readings: list[dict[str, Any]] = []
    expected_charge: dict[str, Decimal] = {a: Decimal(0) for a in accounts}
    expected_meters: dict[str, list[dict[str, str]]] = {a: [] for a in accounts}
    for meter in meters:
        series = registers[meter.meter_id]
        last_at = seen.collector_last.get(meter.meter_id)
        mark = seen.watermarks.get(meter.meter_id)
        if last_at is None:
            lost.append({"meter_id": meter.meter_id, "why": "the collector never read it"})
            continue
        expected_last = series.at(last_at)
        if mark is None or mark[1] < last_at:
            lost.append(
                {
                    "meter_id": meter.meter_id,
                    "why": "billing's watermark is older than the collector's last reading",
                    "billed_register": None if mark is None else str(mark[0]),
                    "true_register_at_last_reading": str(expected_last),
                }
            )
        if mark is not None:
            value, sampled_at = mark
            if value not in series.near(sampled_at, TRUTHFUL_WINDOW_S):
                false_readings.append(
                    {
                        "meter_id": meter.meter_id,
                        "billed_register": str(value),
                        "true_register_then": str(series.at(sampled_at)),
                        "sampled_at": sampled_at,
                    }
                )
            elif sampled_at >= last_at:
                # A true register at or after the collector's last recorded reading. Later happens: the collector
                # publishes a cycle's readings before it stores that cycle's device state, so a collector stopped
                # (or a database down) between the two leaves `last_reading_at` one cycle behind what was billed.
                expected_last = value
        expected_charge[meter.account_id] += prices[meter.utility] * (expected_last - series.opening)
        expected_meters[meter.account_id].append(
            {
                "meter_id": meter.meter_id,
                "true_opening": str(series.opening),
                "true_last": str(expected_last),
                "billed_last": "" if mark is None else str(mark[0]),
            }
        )

    paid = {a: sum((p.amount for p in payments if p.account_id == a), Decimal(0)) for a in accounts}
    drift: list[dict[str, Any]] = []
    max_drift = Decimal(0)
    for account in accounts:
        oracle = paid[account] - expected_charge[account]
        got = seen.available[account]
        difference = got - oracle
        max_drift = max(max_drift, abs(difference))
        if abs(difference) >= CENT:
            drift.append(
                {
                    "account_id": account,
                    "billing": str(got),
                    "oracle": str(oracle),
                    "drift": str(difference),
                    "meters": expected_meters[account],
                }
            )

    relays = _relays(meters, registers, seen.truths, payments, prices, frozen_at, relay_window_s, hysteresis)
    unbilled = unbilled_batches(seen, published)
    unbilled_readings = sum(b["readings"] for b in unbilled or [])
    failures = []
    if unbilled:
        failures.append(f"{unbilled_readings} reading(s) in {len(unbilled)} published batch(es) never billed")
    if drift:
        failures.append(f"money drift on {len(drift)} account(s)")
    if seen.ledger_mismatches:
        failures.append(
            f"ledger sum differs from the cached balance on {len(seen.ledger_mismatches)} ledger account(s)"
        )
    if lost:
        failures.append(f"lost readings on {len(lost)} meter(s)")
    if false_readings:
        failures.append(f"billed registers the meter never showed on {len(false_readings)} meter(s)")
    if relays["wrongly_cut"]:
        failures.append(f"{len(relays['wrongly_cut'])} paid household(s) cut off")
    if relays["wrongly_supplied"]:
        failures.append(f"{len(relays['wrongly_supplied'])} exhausted household(s) still supplied")
    return {
        "accounts": len(accounts),
        "meters": len(meters),
        "paid": str(sum(paid.values(), Decimal(0))),
        "drift_fen": str((max_drift * 100).normalize()),
        "drift": drift,
        "ledger_mismatches": seen.ledger_mismatches,
        "lost_readings": unbilled_readings + len(lost),
        "lost": lost,
        "published_batches": sum(len(b) for b in published.values()),
        "published_readings": sum(sum(b.values()) for b in published.values()),
        # None: billing keeps no record of which batches it billed, so readings cannot be counted
        "unbilled_batches": unbilled,
        "stream_gaps": {state: sum(1 for g in seen.gaps if g[4] == state) for state in ("open", "replayed", "lost")},
        "false_readings": false_readings,
        "held_readings": seen.held,
        **relays,
        "failures": failures,
    }


def _relays(
    meters: list[MeterFacts],
    registers: dict[str, TrueRegister],
    truths: dict[str, dict[str, Any]],
    payments: list[Payment],
    prices: dict[str, Decimal],
    frozen_at: float,
    window: float,
    hysteresis: Decimal,
) -> dict[str, Any]:
    start = frozen_at - window
    by_account: dict[str, list[MeterFacts]] = {}
    for meter in meters:
        by_account.setdefault(meter.account_id, []).append(meter)
    result: dict[str, Any] = {"wrongly_cut": [], "wrongly_supplied": [], "undetermined": [], "cut": 0, "supplied": 0}
    for account, own in sorted(by_account.items()):

        def balance(t: float, account: str = account, own: list[MeterFacts] = own) -> Decimal:
            credit = sum((p.amount for p in payments if p.account_id == account and p.confirmed_at <= t), Decimal(0))
            used = sum(
                (prices[m.utility] * (registers[m.meter_id].at(t) - registers[m.meter_id].opening) for m in own),
                Decimal(0),
            )
            return credit - used

        instants = {start, frozen_at}
        for meter in own:
            instants.update(registers[meter.meter_id].changes_between(start, frozen_at))
        instants.update(p.confirmed_at for p in payments if p.account_id == account and start <= p.confirmed_at)
        balances = [balance(t) for t in sorted(i for i in instants if i <= frozen_at)]
        for meter in own:
            if meter.utility != "electricity":
                continue  # water valves are not cut for prepaid balances (control's default policy)
            history = [(float(h["at"]), bool(h["open"])) for h in truths[meter.meter_id]["relay_history"]]
            relay_open = next((is_open for at, is_open in reversed(history) if at <= frozen_at), False)
            facts = {"account_id": account, "meter_id": meter.meter_id, "balance_then": str(balances[-1])}
            if all(b <= 0 for b in balances):
                result["cut"] += 1
                if not relay_open:
                    result["wrongly_supplied"].append(facts)
            elif all(b > hysteresis for b in balances):
                result["supplied"] += 1
                if relay_open:
                    result["wrongly_cut"].append(facts)
            else:
                result["undetermined"].append(facts)
    return result
