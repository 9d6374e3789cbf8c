"""What a route may ask for: the service's one container, built at start by `app.py`, and its parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.occupancy import RoomOccupancies
from shuidian_billing.adapters.payments.bank import BankImports
from shuidian_billing.adapters.payments.cash import CashDesk
from shuidian_billing.adapters.payments.online import OnlinePayments
from shuidian_billing.adapters.payments.refunds import Refunds
from shuidian_billing.adapters.payments.reviews import ReviewQueue
from shuidian_billing.adapters.payments.settlement import LeaseSettlements
from shuidian_billing.adapters.periodic import PeriodRuns
from shuidian_billing.adapters.premises import Premises
from shuidian_kit.service import Runtime


@dataclass(frozen=True, slots=True)
class Channels:
    """The payment channels: online orders and callbacks, the cash desk, bank imports, reviews, refunds."""

    online: OnlinePayments
    cash: CashDesk
    bank: BankImports
    reviews: ReviewQueue
    refunds: Refunds


@dataclass(frozen=True, slots=True)
class Container:
    """Everything the service built at start; `app.state.container` is the app's only state."""

    runtime: Runtime
    billing: Billing
    premises: Premises
    occupancy: RoomOccupancies
    periods: PeriodRuns
    settlements: LeaseSettlements
    channels: Channels


def container(request: Request) -> Container:
    built: Container = request.app.state.container
    return built


def _runtime(request: Request) -> Runtime:
    return container(request).runtime


def _billing(request: Request) -> Billing:
    return container(request).billing


def _premises(request: Request) -> Premises:
    return container(request).premises


def _occupancy(request: Request) -> RoomOccupancies:
    return container(request).occupancy


def _periods(request: Request) -> PeriodRuns:
    return container(request).periods


def _settlements(request: Request) -> LeaseSettlements:
    return container(request).settlements


def _channels(request: Request) -> Channels:
    return container(request).channels


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
BillingDep = Annotated[Billing, Depends(_billing)]
PremisesDep = Annotated[Premises, Depends(_premises)]
OccupancyDep = Annotated[RoomOccupancies, Depends(_occupancy)]
PeriodsDep = Annotated[PeriodRuns, Depends(_periods)]
SettlementsDep = Annotated[LeaseSettlements, Depends(_settlements)]
ChannelsDep = Annotated[Channels, Depends(_channels)]
