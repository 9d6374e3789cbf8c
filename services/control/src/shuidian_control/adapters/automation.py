"""Policy-driven automation: balance events, deferred trips, keep-power changes, operator requests, reconcile.

The pure core (`domain`: decisions, operations, windows) decides; this module loads the state it decides over,
applies the decision in the same transaction (shadow intent, command, deferral) and keeps the core's contract:
- the shadow's desired state (and version) changes only when a command for a new intent is issued;
- per account, balance events at or below the highest sequence seen are ignored;
- a trip falling in a protected window becomes a persisted deferral, re-evaluated when due (or when policy
  changes); any later decision for the meter other than another deferral drops it;
- an electricity meter's own keep-power mode follows its 保电 flags (KEEP_POWER_ON / KEEP_POWER_OFF, desired vs
  reported in the shadow), switched before the supply decision so that a trip after a lift waits for the
  switch-off to be confirmed (the ledger holds it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_control.adapters import shadows
from shuidian_control.adapters.commands import CommandLedger, NewCommand
from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.domain import decisions, lifecycle
from shuidian_control.domain.calendar import HolidayCalendar
from shuidian_control.domain.decisions import Decision, Defer, Issue, LastCommand, LastModeCommand, Skip
from shuidian_control.domain.operations import MeterOutcome, NotIssued, OperatorRequest, Outcome, decide_request
from shuidian_control.domain.policies import MeterContext, MeterSupply
from shuidian_control.domain.windows import is_protected
from shuidian_control.errors import Conflict
from shuidian_control.settings import ControlSettings
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceLevel,
    CommandKind,
    CommandOrigin,
    DeviceState,
    GatewayStatus,
    RelayState,
    Utility,
)

log = logging.getLogger(__name__)

DECISIONS = Counter("control_decisions_total", "automation decisions", ["trigger", "outcome"])
STALE_BALANCE_EVENTS = Counter("control_balance_events_stale_total", "balance events older than one already applied")
DEFERRED = Counter("control_trips_deferred_total", "trips deferred by a protected window", ["rule"])


class Automation:
    def __init__(
        self,
        engine: AsyncEngine,
        ledger: CommandLedger,
        store: PolicyStore,
        settings: ControlSettings,
        calendar: HolidayCalendar,
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self._store = store
        self._calendar = calendar
        self._reissue = timedelta(seconds=settings.reconcile_interval_seconds)

    def notify(self) -> None:
        """Wake the outbox after a commit made outside this class (schedules)."""
        self._ledger.notify()

    # --- balance events ------------------------------------------------------------------------------------------

    async def on_balance(self, event: BalanceEvent, topic: str) -> None:
        """Act on a balance event for each of its meters that has not seen it (or a newer one).

        Billing announces a purse's last event again now and then, so a lost event still arrives:
        what each meter has applied is remembered per meter, not per account, because one account's
        separate water and electricity purses raise events about different meters.
        """
        meter_ids = sorted({m.meter_id for m in event.meters})
        async with self._engine.begin() as conn:
            # The account's level for deferrals and 保电 changes: the newest event wins.
            await conn.execute(
                text(
                    "INSERT INTO control.account_balance_levels (account_id, last_sequence, level) "
                    "VALUES (:a, :s, :l) ON CONFLICT (account_id) DO UPDATE "
                    "SET last_sequence = EXCLUDED.last_sequence, level = EXCLUDED.level "
                    "WHERE control.account_balance_levels.last_sequence < EXCLUDED.last_sequence"
                ),
                {"a": event.account_id, "s": event.sequence, "l": event.level.value},
            )
            applied = (
                await conn.execute(
                    text("SELECT count(*) FROM control.shadows WHERE meter_id = ANY(:m) AND balance_sequence >= :s"),
                    {"m": meter_ids, "s": event.sequence},
                )
            ).scalar_one()
            if applied == len(meter_ids):  # nothing new for any meter: the common case of a re-announcement
                STALE_BALANCE_EVENTS.inc()
                log.debug("ignored stale balance event %s #%d", event.account_id, event.sequence)
                return
            locked = {
                m.meter_id: await shadows.lock(conn, m.meter_id, utility=m.utility, account_id=event.account_id)
                for m in sorted(event.meters, key=lambda m: m.meter_id)
            }
            # Under the locks: which meters this event is new to (serialises replicas and re-announcements).
            fresh = set(
                (
                    await conn.execute(
                        text(
                            "UPDATE control.shadows SET balance_sequence = :s "
                            "WHERE meter_id = ANY(:m) AND balance_sequence < :s RETURNING meter_id"
                        ),
                        {"m": meter_ids, "s": event.sequence},
                    )
                ).scalars()
            )
            if not fresh:
                STALE_BALANCE_EVENTS.inc()
                log.info("ignored stale balance event %s #%d", event.account_id, event.sequence)
                return
            rows = {meter_id: row for meter_id, row in locked.items() if meter_id in fresh}
            change = decisions.BalanceChange.of(event)
            contexts = await self._store.contexts(conn, rows)
            for meter_id, row in rows.items():
                ctx = contexts[meter_id]
                # A meter billing names for the first time may belong to a household under 保电.
                keep = decisions.keep_power_in_force(ctx.supply, ctx.policy)
                await self._sync_keep_power(conn, row, keep, CommandOrigin.RECONCILE)
                decision = decisions.decide_balance(
                    change,
                    last_sequence=None,  # already filtered above, atomically
                    shadow=row.shadow,
                    supply=ctx.supply,
                    policy=ctx.policy,
                    calendar=self._calendar,
                    now=self._ledger.clock(),
                )
                await self._apply(
                    conn, row, ctx, decision, "balance", CommandOrigin.BILLING, account_id=event.account_id
                )
        self._ledger.notify()

    async def _apply(
        self,
        conn: AsyncConnection,
        row: shadows.ShadowRow,
        ctx: MeterContext,
        decision: Decision,
        trigger: str,
        origin: CommandOrigin,
        *,
        account_id: str | None = None,
        actor: str = "system",
        touches_deferral: bool = True,
    ) -> uuid.UUID | None:
        """Carry out a decision for one locked meter."""
        DECISIONS.labels(trigger, type(decision).__name__.lower()).inc()
        if isinstance(decision, Defer):
            await conn.execute(
                text(
                    "INSERT INTO control.deferrals (meter_id, account_id, due_at, reason) VALUES (:m, :a, :d, :r) "
                    "ON CONFLICT (meter_id) DO UPDATE SET account_id = EXCLUDED.account_id, due_at = EXCLUDED.due_at, "
                    "reason = EXCLUDED.reason, updated_at = now()"
                ),
                {"m": row.meter_id, "a": account_id or row.account_id, "d": decision.until, "r": decision.reason},
            )
            protection = is_protected(self._ledger.clock(), ctx.policy.windows, self._calendar, ctx.policy.tz)
            DEFERRED.labels(protection.rule.value if protection else "unknown").inc()
            log.info("meter %s: %s", row.meter_id, decision.reason)
            return None
        if touches_deferral:
            await conn.execute(text("DELETE FROM control.deferrals WHERE meter_id = :m"), {"m": row.meter_id})
        if isinstance(decision, Skip):
            log.debug("meter %s: %s", row.meter_id, decision.reason)
            return None
        version = row.version
        if decision.supply is not row.desired:
            version = await shadows.set_desired(conn, row.meter_id, decision.supply)
        return await self._ledger.issue(
            conn,
            NewCommand(
                meter_id=row.meter_id,
                kind=decision.kind,
                origin=origin,
                reason=decision.reason,
                actor=actor,
                account_id=account_id or row.account_id,
            ),
            shadow_version=version,
        )

    # --- deferrals and keep-power --------------------------------------------------------------------------------

    async def run_due_deferrals(self, batch: int = 200) -> int:
        """Re-evaluate deferred trips whose window ended: trip if the account is still exhausted."""
        now = self._ledger.clock()
        async with self._engine.begin() as conn:
            due = (
                await conn.execute(
                    text(
                        "SELECT d.meter_id, d.account_id, coalesce(l.level, 'ok') AS level FROM control.deferrals d "
                        "LEFT JOIN control.account_balance_levels l ON l.account_id = d.account_id "
                        "WHERE d.due_at <= :now ORDER BY d.meter_id LIMIT :n FOR UPDATE OF d SKIP LOCKED"
                    ),
                    {"now": now, "n": batch},
                )
            ).all()
            if not due:
                return 0
            rows = await shadows.lock_all(conn, (d.meter_id for d in due))
            contexts = await self._store.contexts(conn, rows)
            for d in due:
                ctx = contexts[d.meter_id]
                decision = decisions.on_deferral_due(
                    BalanceLevel(d.level),
                    shadow=rows[d.meter_id].shadow,
                    supply=ctx.supply,
                    policy=ctx.policy,
                    calendar=self._calendar,
                    now=now,
                )
                await self._apply(conn, rows[d.meter_id], ctx, decision, "deferral", CommandOrigin.BILLING)
        self._ledger.notify()
        return len(due)

    async def policy_changed(self, conn: AsyncConnection) -> None:
        """Windows or holds changed: every deferral is re-evaluated on the next tick, under the new policy."""
        await conn.execute(text("UPDATE control.deferrals SET due_at = :now"), {"now": self._ledger.clock()})

    async def keep_power_changed(self, conn: AsyncConnection, meter_ids: Iterable[str], actor: str) -> None:
        """保电 set: supply cut off comes back; lifted: an exhausted account is tripped under the usual windows."""
        rows = await shadows.lock_all(conn, meter_ids)
        if not rows:
            return
        contexts = await self._store.contexts(conn, rows)
        levels: dict[str, str] = {
            r.account_id: r.level
            for r in await conn.execute(
                text("SELECT account_id, level FROM control.account_balance_levels WHERE account_id = ANY(:a)"),
                {"a": sorted({r.account_id for r in rows.values() if r.account_id})},
            )
        }
        for meter_id, row in rows.items():
            ctx = contexts[meter_id]
            keep = decisions.keep_power_in_force(ctx.supply, ctx.policy)
            await self._sync_keep_power(conn, row, keep, CommandOrigin.OPERATOR, actor)
            decision = decisions.on_keep_power_changed(
                BalanceLevel(levels.get(row.account_id or "", "ok")),
                shadow=row.shadow,
                supply=ctx.supply,
                policy=ctx.policy,
                calendar=self._calendar,
                now=self._ledger.clock(),
            )
            # A trip after 保电 is lifted is the balance automation's (windows apply, also when reconcile re-sends
            # it); a restoration because 保电 was set is the operator's act.
            trips = isinstance(decision, Issue) and decision.supply is RelayState.OPEN
            origin = CommandOrigin.BILLING if trips else CommandOrigin.OPERATOR
            await self._apply(conn, row, ctx, decision, "keep_power", origin, actor=actor)

    async def sync_keep_power_modes(self, conn: AsyncConnection, meter_ids: Iterable[str], actor: str) -> int:
        """Bring the meters' own keep-power modes in line with their 保电 flags (e.g. after a building moved
        estates); returns the commands issued. Supply is left alone."""
        rows = await shadows.lock_all(conn, meter_ids)
        contexts = await self._store.contexts(conn, rows)
        issued = 0
        for meter_id in rows:
            keep = decisions.keep_power_in_force(contexts[meter_id].supply, contexts[meter_id].policy)
            issued += await self._sync_keep_power(conn, rows[meter_id], keep, CommandOrigin.OPERATOR, actor) is not None
        return issued

    async def _sync_keep_power(
        self,
        conn: AsyncConnection,
        row: shadows.ShadowRow,
        keep: str | None,
        origin: CommandOrigin,
        actor: str = "system",
    ) -> uuid.UUID | None:
        """Issue KEEP_POWER_ON / KEEP_POWER_OFF when the meter's desired mode differs from `keep` (the 保电 flag in
        force, described, or None). The desired mode is recorded with the command."""
        kind = decisions.keep_power_command(row.utility, keep is not None, row.desired_keep_power)
        if kind is None:
            return None
        on = kind is CommandKind.KEEP_POWER_ON
        await shadows.set_desired_keep_power(conn, row.meter_id, on)
        reason = f"{keep}: meter keep-power mode on" if on else "keep-power lifted: meter keep-power mode off"
        return await self._ledger.issue(
            conn,
            NewCommand(
                meter_id=row.meter_id,
                kind=kind,
                origin=origin,
                reason=reason,
                actor=actor,
                account_id=row.account_id,
            ),
        )

    # --- operator requests, single or batch ----------------------------------------------------------------------

    async def operate(
        self, meter_ids: list[str], request: OperatorRequest, *, preview: bool = False
    ) -> tuple[uuid.UUID, list[MeterOutcome]]:
        """Apply a request to each meter (or only say what would happen); returns the batch id and the outcomes."""
        if preview:
            async with self._engine.connect() as conn:
                result = await self.operate_in(conn, meter_ids, request, preview=True)
                await conn.rollback()  # a preview writes nothing (not even the shadows it looked at)
            return result
        async with self._engine.begin() as conn:
            result = await self.operate_in(conn, meter_ids, request)
        self._ledger.notify()
        return result

    async def operate_in(
        self, conn: AsyncConnection, meter_ids: list[str], request: OperatorRequest, *, preview: bool = False
    ) -> tuple[uuid.UUID, list[MeterOutcome]]:
        batch_id = uuid.uuid4()
        ids = sorted(set(meter_ids))
        rows = await shadows.lock_all(conn, ids, assumed=lifecycle.utility_of(request.kind))
        contexts = await self._store.contexts(conn, ids)
        outcomes = []
        for meter_id in ids:
            ctx = contexts[meter_id]
            outcome = await self._operate_one(conn, rows[meter_id], ctx, request, batch_id if len(ids) > 1 else None,
                                              preview)  # fmt: skip
            outcomes.append(outcome)
            DECISIONS.labels("operator", outcome.outcome.value).inc()
        return batch_id, outcomes

    async def _operate_one(
        self,
        conn: AsyncConnection,
        row: shadows.ShadowRow,
        ctx: MeterContext,
        request: OperatorRequest,
        batch_id: uuid.UUID | None,
        preview: bool,
    ) -> MeterOutcome:
        now = self._ledger.clock()
        if request.command_id is not None:
            existing = await self._ledger.find(conn, request.command_id)
            if existing is not None:
                if (existing.meter_id, existing.kind) != (row.meter_id, request.kind.value):
                    raise Conflict(
                        "指令编号已被占用 · command id reused for a different command", code="idempotency_conflict"
                    )
                return MeterOutcome(row.meter_id, Outcome.ISSUE, "already issued (same command id)", request.kind,
                                    request.command_id)  # fmt: skip
        decision = decide_request(
            request, shadow=row.shadow, supply=ctx.supply, policy=ctx.policy, calendar=self._calendar, now=now
        )
        if isinstance(decision, NotIssued):
            return MeterOutcome(row.meter_id, decision.outcome, decision.detail, decision.kind)
        if preview:
            return MeterOutcome(row.meter_id, Outcome.ISSUE, decision.reason, decision.kind)
        target = lifecycle.supply_after(request.kind)
        new = NewCommand(
            meter_id=row.meter_id,
            kind=decision.kind,
            origin=request.origin,
            reason=decision.reason,
            actor=request.actor,
            account_id=row.account_id,
            parameters=request.parameters,
            ttl=request.ttl,
            command_id=request.command_id,
            batch_id=batch_id,
        )
        if target is RelayState.OPEN and request.lift_keep_power and ctx.supply.keep_power and row.account_id:
            await self._store.clear_keep_power(conn, "household", row.account_id, request.reason, request.actor)
            # The meter's own keep-power mode goes off first (unless the estate's 保电 still covers it); the trip
            # below is held until the meter confirms it.
            estate_keep = decisions.keep_power_in_force(MeterSupply(row.utility), ctx.policy)
            await self._sync_keep_power(conn, row, estate_keep, request.origin, request.actor)
        mode = lifecycle.keep_power_after(request.kind)
        if mode is not None:
            # The operator's own mode command is the intent until the next 保电 change (reconcile keeps it).
            await shadows.set_desired_keep_power(conn, row.meter_id, mode)
        version = row.version
        if target is not None:
            version = await shadows.set_desired(conn, row.meter_id, target)
            await conn.execute(text("DELETE FROM control.deferrals WHERE meter_id = :m"), {"m": row.meter_id})
        command_id = await self._ledger.issue(conn, new, shadow_version=version if target else None)
        return MeterOutcome(row.meter_id, Outcome.ISSUE, decision.reason, decision.kind, command_id)

    # --- reported state and reconcile ----------------------------------------------------------------------------

    async def on_device_state(self, state: DeviceState, topic: str) -> None:
        """Record what the meter reports; reconcile when it diverges from the intent (or came back online).

        Idempotent: every replica gets the retained states on connect, and a report no newer than the stored
        one changes nothing."""
        supply = lifecycle.supply_of(state.relay, state.valve)
        async with self._engine.begin() as conn:
            applied = await shadows.report(
                conn,
                state.meter_id,
                supply,
                state.occurred_at,
                online=state.online,
                gateway_id=state.gateway_id,
                utility=Utility.WATER if state.valve is not None else None,
                keep_power=state.keep_power,
            )
            # A meter now reporting its keep-power mode off gets the trips held for that.
            released = (
                await self._ledger.release_held(conn, state.meter_id) if applied and state.keep_power is False else 0
            )
        if released:
            self._ledger.notify()
        if applied and state.online:
            await self.reconcile([state.meter_id], trigger="device_state")

    async def on_gateway_status(self, status: GatewayStatus, topic: str) -> None:
        """A gateway came back: its meters that diverge from their intent get it again."""
        if not status.online:
            return
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT meter_id FROM control.shadows WHERE gateway_id = :g AND ((desired_supply IS NOT NULL "
                    "AND desired_supply IS DISTINCT FROM reported_supply) OR (desired_keep_power IS NOT NULL "
                    "AND desired_keep_power IS DISTINCT FROM reported_keep_power))"
                ),
                {"g": status.gateway_id},
            )
            meter_ids = [r.meter_id for r in rows]
        await self.reconcile(meter_ids, trigger="gateway_online")

    async def reconcile_sweep(self, limit: int = 1000) -> int:
        """Every meter online whose report (supply or keep-power mode) differs from its intent."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT meter_id FROM control.shadows WHERE ((desired_supply IS NOT NULL "
                    "AND reported_supply IS NOT NULL AND desired_supply <> reported_supply) "
                    "OR (desired_keep_power IS NOT NULL AND reported_keep_power IS NOT NULL "
                    "AND desired_keep_power <> reported_keep_power)) "
                    "AND online IS NOT FALSE ORDER BY updated_at LIMIT :n"
                ),
                {"n": limit},
            )
            meter_ids = [r.meter_id for r in rows]
        return await self.reconcile(meter_ids, trigger="sweep")

    async def reconcile(self, meter_ids: list[str], *, trigger: str) -> int:
        """Re-issue the desired state (supply, keep-power mode) where the meter reports otherwise; returns the
        commands issued."""
        issued = 0
        for meter_id in meter_ids:
            async with self._engine.begin() as conn:
                row = await shadows.lock(conn, meter_id)
                issued += await self._reconcile_keep_power(conn, row, trigger)
                if row.desired is None or row.desired is row.reported:
                    continue
                last = await self._ledger.last_supply_command(conn, meter_id)
                if last is not None and _waits_for_tenant(last, row):
                    continue
                ctx = (await self._store.contexts(conn, [meter_id]))[meter_id]
                decision = decisions.reconcile(
                    row.shadow,
                    self._ledger.clock(),
                    _last_command(last),
                    supply=ctx.supply,
                    policy=ctx.policy,
                    calendar=self._calendar,
                    min_interval=self._reissue,
                )
                if isinstance(decision, Defer):
                    DECISIONS.labels(trigger, "defer").inc()
                    continue  # the next sweep looks again; a reconcile never becomes a persisted deferral
                command = await self._apply(
                    conn, row, ctx, decision, trigger, CommandOrigin.RECONCILE, touches_deferral=False
                )
                issued += command is not None
        if issued:
            self._ledger.notify()
        return issued

    async def _reconcile_keep_power(self, conn: AsyncConnection, row: shadows.ShadowRow, trigger: str) -> int:
        if row.desired_keep_power is None or row.desired_keep_power is row.reported_keep_power:
            return 0
        last = await self._ledger.last_mode_command(conn, row.meter_id)
        decision = decisions.reconcile_keep_power(
            row.desired_keep_power,
            row.reported_keep_power,
            self._ledger.clock(),
            None if last is None else _last_mode_command(last),
            min_interval=self._reissue,
        )
        DECISIONS.labels(f"{trigger}_keep_power", type(decision).__name__.lower()).inc()
        if not isinstance(decision, Issue):
            return 0
        new = NewCommand(
            row.meter_id, decision.kind, CommandOrigin.RECONCILE, decision.reason, account_id=row.account_id
        )
        await self._ledger.issue(conn, new)
        return 1

    async def shadow(self, meter_id: str) -> dict[str, Any] | None:
        """A meter's shadow for display: supply terms, plus relay or valve terms by utility."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM control.shadows WHERE meter_id = :m"), {"m": meter_id})
            ).first()
        if row is None:
            return None
        view = row._asdict()
        water = view["utility"] == Utility.WATER.value
        for side in ("desired", "reported"):
            supply = RelayState(view[f"{side}_supply"]) if view[f"{side}_supply"] else None
            valve = lifecycle.valve_of(supply) if water else None
            view[f"{side}_relay"] = None if water or supply is None else supply.value
            view[f"{side}_valve"] = valve.value if valve else None
        return view

    async def deferrals(self, meter_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Trips waiting for a protected window to end, soonest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM control.deferrals WHERE CAST(:m AS text) IS NULL OR meter_id = :m "
                    "ORDER BY due_at NULLS LAST, meter_id LIMIT :n"
                ),
                {"m": meter_id, "n": limit},
            )
            return [r._asdict() for r in rows]


def _last_command(row: Any) -> LastCommand | None:
    if row is None:
        return None
    return LastCommand(
        target=RelayState(row.supply),
        version=row.shadow_version or 0,
        issued_at=row.created_at,
        expires_at=row.expires_at,
        finished=row.state in {s.value for s in lifecycle.TERMINAL_STATES},
        origin=CommandOrigin(row.origin),
    )


def _last_mode_command(row: Any) -> LastModeCommand:
    return LastModeCommand(
        keep_power=lifecycle.keep_power_after(CommandKind(row.kind)) is True,
        issued_at=row.created_at,
        expires_at=row.expires_at,
        finished=row.state in {s.value for s in lifecycle.TERMINAL_STATES},
    )


def _waits_for_tenant(last: Any, row: shadows.ShadowRow) -> bool:
    """A confirmed close-allowed leaves the relay open until the tenant closes it by hand: nothing to re-send."""
    return (
        last.kind == CommandKind.CLOSE_ALLOWED.value
        and last.state == "confirmed"
        and last.shadow_version == row.version
        and row.reported is RelayState.OPEN
    )
