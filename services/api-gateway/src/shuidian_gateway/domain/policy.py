"""Who may do what: one policy table from role to actions, and the principal a request acts as.

Staff routes name one action each; a user may call the route when the table grants the action to
their role, an integrator's API key when the key carries the action as a scope. Estate-scoped
principals (estate managers, scoped keys) also need the object's estate in their list. Tenants
never reach staff routes: they have the `/v1/me` API, scoped by their leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    SYSTEM_ADMIN = "system_admin"
    ESTATE_MANAGER = "estate_manager"
    CASHIER = "cashier"
    MAINTENANCE = "maintenance"
    FINANCE = "finance"
    TENANT = "tenant"
    INTEGRATOR = "integrator"  # an API key; its scopes are its actions


class Action(StrEnum):
    PREMISES_READ = "premises:read"  # estates, buildings, rooms, tenants, leases
    PREMISES_WRITE = "premises:write"
    ACCOUNTS_READ = "accounts:read"  # balances, ledgers, payments
    ACCOUNTS_WRITE = "accounts:write"
    TOPUPS_CREATE = "topups:create"  # cash counter and manual top-ups
    CORRECTIONS_CREATE = "corrections:create"
    TARIFFS_READ = "tariffs:read"
    TARIFFS_WRITE = "tariffs:write"
    PLANS_WRITE = "plans:write"  # tariff plans and customer classes (estate managers: their estates' plans)
    DEVICES_READ = "devices:read"  # meters, gateways, device state
    DEVICES_WRITE = "devices:write"  # registry and CSV commissioning
    COMMANDS_READ = "commands:read"
    COMMANDS_CLOSE = "commands:close"  # restore supply, read-backs, parameters
    COMMANDS_TRIP = "commands:trip"  # cut supply off
    ALARMS_READ = "alarms:read"
    ALARMS_WRITE = "alarms:write"  # acknowledge, work orders
    ALARMS_CONFIGURE = "alarms:configure"  # alarm rules and staff alarm subscriptions
    BILLING_RUN = "billing:run"  # post a month's fixed fees and 公摊
    PAYMENTS_RECONCILE = "payments:reconcile"  # bank statement imports and the payment review queue
    REPORTS_READ = "reports:read"
    WEBHOOKS_MANAGE = "webhooks:manage"
    USERS_MANAGE = "users:manage"  # users and API keys
    AUDIT_READ = "audit:read"


_READ_ALL = {a for a in Action if a.value.endswith(":read") and a is not Action.AUDIT_READ}

POLICY: dict[Role, frozenset[Action]] = {
    Role.SYSTEM_ADMIN: frozenset(Action),
    Role.ESTATE_MANAGER: frozenset(
        {
            *_READ_ALL,
            Action.PREMISES_WRITE,
            Action.ACCOUNTS_WRITE,
            Action.TOPUPS_CREATE,
            Action.DEVICES_WRITE,
            Action.COMMANDS_CLOSE,
            Action.COMMANDS_TRIP,
            Action.ALARMS_WRITE,
            Action.ALARMS_CONFIGURE,
            Action.BILLING_RUN,
            Action.PLANS_WRITE,
        }
    ),
    Role.CASHIER: frozenset(
        {Action.PREMISES_READ, Action.ACCOUNTS_READ, Action.TOPUPS_CREATE, Action.TARIFFS_READ, Action.COMMANDS_READ}
    ),
    Role.MAINTENANCE: frozenset(
        {
            Action.PREMISES_READ,
            Action.DEVICES_READ,
            Action.DEVICES_WRITE,
            Action.COMMANDS_READ,
            Action.COMMANDS_CLOSE,
            Action.ALARMS_READ,
            Action.ALARMS_WRITE,
        }
    ),
    Role.FINANCE: frozenset(
        {
            Action.PREMISES_READ,
            Action.ACCOUNTS_READ,
            Action.TOPUPS_CREATE,
            Action.CORRECTIONS_CREATE,
            Action.TARIFFS_READ,
            Action.TARIFFS_WRITE,
            Action.PLANS_WRITE,
            Action.REPORTS_READ,
            Action.COMMANDS_READ,
            Action.BILLING_RUN,
            Action.PAYMENTS_RECONCILE,
        }
    ),
    Role.TENANT: frozenset(),
    Role.INTEGRATOR: frozenset(),  # an API key's scopes decide
}
# An integrator may be granted anything but user management.
GRANTABLE_SCOPES = frozenset(Action) - {Action.USERS_MANAGE}
# System admins see every estate; everyone else sees the estates listed on them ("*": all).
ALL_ESTATES = "*"


@dataclass(frozen=True)
class Principal:
    """The identity a request acts as."""

    kind: str  # "user", "api_key" or "bootstrap"
    subject: str  # user id, API key prefix, or "bootstrap"
    role: Role
    estates: frozenset[str] = frozenset()  # "*" for every estate
    tenant_id: str | None = None
    scopes: frozenset[Action] = frozenset()

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.subject}"

    @property
    def all_estates(self) -> bool:
        return self.role is Role.SYSTEM_ADMIN or ALL_ESTATES in self.estates

    @property
    def actions(self) -> frozenset[Action]:
        return self.scopes if self.role is Role.INTEGRATOR else POLICY[self.role]

    def may(self, action: Action) -> bool:
        return action in self.actions

    def may_see_estate(self, estate_id: str | None) -> bool:
        if self.all_estates:
            return True
        return estate_id is not None and estate_id in self.estates


@dataclass(frozen=True)
class Scope:
    """What a tenant may see: the accounts, rooms and meters of their active leases."""

    tenant_id: str
    accounts: frozenset[str]
    rooms: frozenset[str]
    meters: frozenset[str]

    def owns(self, kind: str, object_id: str) -> bool:
        return object_id in {"account": self.accounts, "room": self.rooms, "meter": self.meters}[kind]
