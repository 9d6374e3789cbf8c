"""The billing core: its pieces, each with one job, wired once (by `app.py`, or a test).

Stable entry points for other billing modules that move money:
  * `credits.top_up(account_id, amount, channel, reference, idempotency_key, *, utility=None)` —
    an idempotent credit from a payment channel (returns the payment; a replay returns it again).
  * a posting built by `domain/ledger.py`, written with `store.post_many(conn, [store.transaction_of(…)])`
    inside a transaction, followed by `levels.evaluate_levels(conn, {account_id})` — any other
    balanced posting (refunds …).
  * `levels.purse_of(conn, account_id, utility)` — the ledger account a household's money sits in.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.accounts import Accounts
from shuidian_billing.adapters.charging import Charger
from shuidian_billing.adapters.credits import Credits
from shuidian_billing.adapters.ledger_poster import LedgerPoster
from shuidian_billing.adapters.levels import BalanceLevels
from shuidian_billing.adapters.meter_events import MeterEvents
from shuidian_billing.adapters.price_corrections import PriceCorrections
from shuidian_billing.adapters.readings import ReadingPipeline
from shuidian_billing.adapters.tariffs import TariffAdmin
from shuidian_billing.settings import BillingSettings
from shuidian_kit.outbox import Outbox


@dataclass(frozen=True, slots=True)
class Billing:
    """Readings in, the ledger and balance levels, money admin, meter events, accounts and tariffs."""

    engine: AsyncEngine
    outbox: Outbox
    readings: ReadingPipeline
    poster: LedgerPoster
    levels: BalanceLevels
    credits: Credits
    meter_events: MeterEvents
    accounts: Accounts
    tariffs: TariffAdmin
    price_corrections: PriceCorrections

    @classmethod
    def build(cls, engine: AsyncEngine, outbox: Outbox, settings: BillingSettings, source: str) -> Billing:
        """Every piece over one engine and outbox; `source` names this replica in the events it sends."""
        levels = BalanceLevels(engine, outbox, settings, source)
        charger = Charger(outbox, settings, source)
        return cls(
            engine=engine,
            outbox=outbox,
            readings=ReadingPipeline(engine, outbox, settings, source, charger, levels),
            poster=LedgerPoster(engine, settings),
            levels=levels,
            credits=Credits(engine, outbox, levels),
            meter_events=MeterEvents(engine, outbox, charger, levels),
            accounts=Accounts(engine),
            tariffs=TariffAdmin(engine),
            price_corrections=PriceCorrections(engine, outbox, levels),
        )
