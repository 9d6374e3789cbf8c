"""Concurrent transactions on real PostgreSQL: rows shared between alarm transactions are locked in one key order,
so two replicas raising the first alarms of the same two new tenants in opposite order serialise instead of
deadlocking (PostgreSQL would abort one of them with `deadlock detected`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shuidian_alarm.adapters.container import Components
from shuidian_alarm.app import compose
from shuidian_alarm.domain.alarms import AlarmRecord
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.targets import Target
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack import infra
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import RESIDUAL_CURRENT, AlarmSeverity, Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
ROUNDS = 12


class Rendezvous:
    """An alarm hook that holds each transaction, after the hooks of its first alarm, until the other transaction
    got as far (or `patience` ran out): both have then written rows for their first tenant before either goes on
    to its second, the interleaving that deadlocks when the two take their tenants in opposite order."""

    def __init__(self, patience: float = 0.3) -> None:
        self._patience = patience
        self._seen: set[int] = set()
        self._both = asyncio.Event()

    def reset(self) -> None:
        self._seen, self._both = set(), asyncio.Event()

    async def hook(self, conn: AsyncConnection, alarm: AlarmRecord, event: str) -> None:
        if event != "raised" or id(conn) in self._seen:
            return
        self._seen.add(id(conn))
        if len(self._seen) == 2:
            self._both.set()
        # With the rows in key order the other transaction waits on this one's lock and never arrives here.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._both.wait(), self._patience)


class PausingOutbox(Outbox):
    """An outbox that, once armed, holds its transaction after the first alarm event it queues: the transaction
    then holds that alarm's row while another one runs."""

    def __init__(self, engine: AsyncEngine, mqtt: MqttLink) -> None:
        super().__init__(engine, mqtt, "alarm")
        self.armed = False
        self.paused = asyncio.Event()

    async def add(self, conn: AsyncConnection, topic: str, message: BaseModel, *, retain: bool = False) -> None:
        await super().add(conn, topic, message, retain=retain)
        if self.armed:
            self.armed = False
            self.paused.set()
            await asyncio.sleep(0.5)  # time for the other transaction to lock what it can and wait for the rest


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engines(pg_server_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines on a database of this module's own (escalation looks at every alarm): two replicas."""
    name = f"shuidian_test_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    first = await migrated_engine(url, "shuidian_alarm", "alarm")
    second = create_async_engine(first.url.render_as_string(hide_password=False))
    yield first, second
    await second.dispose()
    await first.dispose()
    await infra.drop_database(pg_server_url, name)


Replicas = tuple[Components, Components, Rendezvous, PausingOutbox]


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(engines: tuple[AsyncEngine, AsyncEngine]) -> AsyncIterator[Replicas]:
    mqtt = MqttLink("mqtt://127.0.0.1:1", service="alarm", instance="test")  # never connected: the outbox only queues
    meeting = Rendezvous()
    pausing = PausingOutbox(engines[0], mqtt)
    async with httpx.AsyncClient() as http:
        settings = AlarmSettings(environment="test")
        one = compose(settings, engines[0], pausing, mqtt, http)
        two = compose(settings, engines[1], Outbox(engines[1], mqtt, "alarm"), mqtt, http)
        for replica in (one, two):
            replica.alarms.add_hook(meeting.hook)  # after the notifier's hook, which writes the tenant's defaults
        yield one, two, meeting, pausing


def uid() -> str:
    return uuid.uuid4().hex[:8]


def leaking(meter: str, at: datetime) -> Reading:
    return Reading.create(meter, Utility.ELECTRICITY, at, registers={RESIDUAL_CURRENT: Decimal(45)})


async def test_alarm_replicas_raising_first_alarms_of_two_new_tenants_in_opposite_order_do_not_deadlock(
    replicas: Replicas, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    one, two, meeting, _ = replicas
    failures: list[BaseException] = []
    for _ in range(ROUNDS):
        run = uid()
        tenant_x, tenant_y = f"T-{run}-x", f"T-{run}-y"
        # Gateway 1 reads tenant x's meter first, gateway 2 tenant y's: each batch raises electric leakage (a
        # tenant-facing type) for both tenants, whose first alarm writes their default settings and subscription.
        # The meter ids sort the same way as the readings, so sorting by meter alone would not help.
        m1, m2, m3, m4 = (f"E-{run}-{n}" for n in "abcd")
        await one.evaluator.put_targets(
            [
                Target(meter_id=m1, gateway_id=f"G-{run}-1", room="101", tenant_id=tenant_x),
                Target(meter_id=m2, gateway_id=f"G-{run}-1", room="102", tenant_id=tenant_y),
                Target(meter_id=m3, gateway_id=f"G-{run}-2", room="102", tenant_id=tenant_y),
                Target(meter_id=m4, gateway_id=f"G-{run}-2", room="101", tenant_id=tenant_x),
            ]
        )
        now = datetime.now(UTC)
        first, second = now - timedelta(minutes=2), now - timedelta(minutes=1)
        meeting.reset()
        outcomes = await asyncio.gather(
            one.evaluator.on_readings(
                ReadingBatch(source="c", gateway_id=f"G-{run}-1", readings=(leaking(m1, first), leaking(m2, second))),
                "",
            ),
            two.evaluator.on_readings(
                ReadingBatch(source="c", gateway_id=f"G-{run}-2", readings=(leaking(m3, first), leaking(m4, second))),
                "",
            ),
            return_exceptions=True,
        )
        failures += [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            break
        async with engines[0].connect() as conn:
            alarms = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM alarm.alarms WHERE source_id = ANY(:m) "
                        "AND alarm_type = 'electric_leakage' AND state = 'active'"
                    ),
                    {"m": [m1, m2, m3, m4]},
                )
            ).scalar_one()
            settings = (
                await conn.execute(
                    text(
                        "SELECT s.tenant_id, s.version, count(b.*) FROM alarm.tenant_settings s "
                        "LEFT JOIN alarm.subscriptions b ON b.tenant_id = s.tenant_id AND b.managed_by IS NOT NULL "
                        "WHERE s.tenant_id = ANY(:t) GROUP BY 1, 2 ORDER BY 1"
                    ),
                    {"t": [tenant_x, tenant_y]},
                )
            ).all()
            queued = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM alarm.notifications n JOIN alarm.alarms a USING (alarm_id) "
                        "WHERE a.source_id = ANY(:m) AND n.channel = 'mqtt'"
                    ),
                    {"m": [m1, m2, m3, m4]},
                )
            ).scalar_one()
        assert alarms == 4
        assert [tuple(row) for row in settings] == [(tenant_x, 0, 1), (tenant_y, 0, 1)]
        assert queued == 4  # each tenant's app hears about both of its meters
    assert not failures, f"a transaction failed: {failures[0]!r}"


async def test_alarm_escalation_and_a_retrigger_of_the_same_alarms_in_opposite_order_do_not_deadlock(
    replicas: Replicas, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    """One replica re-triggers two open alarms, the second meter's first (the order its readings came in), while the
    other escalates both: the escalation locks the alarms in the order `apply` takes them, so one waits."""
    one, two, _, pausing = replicas
    failures: list[BaseException] = []
    for round_ in range(6):
        run = uid()
        first, second = f"E-{run}-a", f"E-{run}-b"
        # Stored in one order (which a plain UPDATE scan visits them in), re-triggered in the other; every other
        # round the stored order is against the key order, so neither side may lock in an order of its own.
        stored = (first, second) if round_ % 2 == 0 else (second, first)

        def raised(meter: str) -> Raise:
            return Raise(meter, "over_voltage", AlarmSeverity.WARNING, "过电压", "Over-voltage")

        for meter in stored:
            await two.alarms.apply([raised(meter)])
        pausing.armed, pausing.paused = True, asyncio.Event()
        retrigger = asyncio.create_task(one.alarms.apply([raised(m) for m in reversed(stored)]))
        await pausing.paused.wait()
        escalation = asyncio.create_task(two.alarms.escalate(datetime.now(UTC) + timedelta(hours=1)))
        outcomes = await asyncio.gather(retrigger, escalation, return_exceptions=True)
        failures += [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            break
        async with engines[0].connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT source_id, occurrences, escalation_level, severity FROM alarm.alarms "
                        "WHERE source_id = ANY(:m) ORDER BY source_id"
                    ),
                    {"m": [first, second]},
                )
            ).all()
        assert [tuple(r) for r in rows] == [(first, 2, 1, "major"), (second, 2, 1, "major")]
    assert not failures, f"a transaction failed: {failures[0]!r}"
