"""Composition root of the alarm service: builds every piece at start (`compose`), subscribes the evaluator to its
topics, starts the tick and notification loops, and serves the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from importlib.resources import files

import httpx
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_alarm.adapters import work_orders
from shuidian_alarm.adapters.alarms import AlarmService
from shuidian_alarm.adapters.container import Components
from shuidian_alarm.adapters.evaluator import Evaluator
from shuidian_alarm.adapters.notify.channels import (
    AliyunSms,
    AliyunSmsConfig,
    Channels,
    EmailChannel,
    MqttPushChannel,
    SmsChannel,
    SmtpConfig,
    WebhookChannel,
)
from shuidian_alarm.adapters.notify.notifier import Notifier
from shuidian_alarm.adapters.rulebook import RuleBook
from shuidian_alarm.adapters.work_orders import WorkOrders
from shuidian_alarm.api import router
from shuidian_alarm.domain.notify.delivery import RetryPolicy
from shuidian_alarm.settings import AlarmSettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_kit.service import Runtime, install_error_handlers, ops_router, started
from shuidian_kit.service_auth import require_service_tokens
from shuidian_shared import topics
from shuidian_shared.contracts.insights import LineLossExceeded
from shuidian_shared.contracts.payments import PaymentProblem
from shuidian_shared.messages import (
    BalanceEvent,
    CommandRequested,
    CommandResult,
    CommandUpdate,
    DeadLetterParked,
    DeviceState,
    GatewayStatus,
    PollStats,
    ReadingBatch,
    ReadingHeld,
    RoomOccupancy,
    TenantContact,
    utcnow,
)

SERVICE = "alarm"


def build_channels(settings: AlarmSettings, http: httpx.AsyncClient, mqtt: MqttLink) -> Channels:
    sms = None
    if settings.sms_access_key_id:
        sms = AliyunSms(
            http,
            AliyunSmsConfig(
                endpoint=settings.sms_endpoint,
                access_key_id=settings.sms_access_key_id,
                access_key_secret=settings.sms_access_key_secret.get_secret_value(),
                sign_name=settings.sms_sign_name,
                template_code=settings.sms_template_code,
                region=settings.sms_region,
            ),
        )
    smtp = SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_sender,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value(),
        starttls=settings.smtp_starttls,
        timeout=settings.notify_timeout_seconds,
    )
    return Channels(
        {
            "webhook": WebhookChannel(http, settings.webhook_secret.get_secret_value(), settings.webhook_policy),
            "email": EmailChannel(smtp),
            "sms": SmsChannel(sms),
            "mqtt": MqttPushChannel(mqtt, mqtt.client_id, settings.notify_timeout_seconds),
        }
    )


def compose(
    settings: AlarmSettings,
    engine: AsyncEngine,
    outbox: Outbox,
    mqtt: MqttLink,
    http: httpx.AsyncClient,
    *,
    clock: Callable[[], datetime] = utcnow,
    runtime: Runtime | None = None,
) -> Components:
    """The composition root proper: the app's lifespan, the tests and the benchmark all build the service here
    (the lifespan passes its `runtime`, which the operations routes read)."""
    notifier = Notifier(
        engine,
        build_channels(settings, http, mqtt),
        timezone=settings.timezone,
        retry=RetryPolicy(
            max_attempts=settings.notify_max_attempts,
            base=timedelta(seconds=settings.notify_backoff_seconds),
            cap=timedelta(seconds=settings.notify_backoff_max_seconds),
        ),
        concurrency=settings.notify_concurrency,
        poll_interval=settings.notify_poll_seconds,
        clock=clock,
    )
    alarms = AlarmService(
        engine,
        outbox,
        mqtt.client_id,
        hooks=(work_orders.on_alarm, notifier.on_alarm),
        escalate_after=timedelta(seconds=settings.escalate_after_seconds),
        max_escalations=settings.max_escalations,
    )
    book = RuleBook(engine)
    evaluator = Evaluator(
        engine,
        outbox,
        alarms,
        book,
        clock=clock,
        tick_interval=timedelta(seconds=settings.tick_seconds),
        targets_ttl=timedelta(seconds=settings.targets_cache_seconds),
    )
    return Components(alarms, book, evaluator, notifier, WorkOrders(engine), runtime)


def _runtime(request: Request) -> Runtime:
    components: Components = request.app.state.components
    return started(components.runtime)


def create_app(settings: AlarmSettings | None = None) -> FastAPI:
    settings = settings or AlarmSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_alarm") / "migrations")
        async with (
            Runtime.open(settings, service=SERVICE, schema="alarm", migrations=migrations) as runtime,
            httpx.AsyncClient(timeout=settings.notify_timeout_seconds) as http,
        ):
            c = compose(settings, runtime.engine, runtime.outbox, runtime.mqtt, http, runtime=runtime)
            await c.rulebook.load()
            evaluator = c.evaluator
            subscribe = runtime.mqtt.subscribe
            subscribe(topics.shared(SERVICE, topics.ALL_READINGS), ReadingBatch, evaluator.on_readings)
            subscribe(topics.shared(SERVICE, topics.ALL_METER_STATES), DeviceState, evaluator.on_device_state)
            subscribe(topics.shared(SERVICE, topics.ALL_GATEWAY_STATUS), GatewayStatus, evaluator.on_gateway_status)
            subscribe(topics.shared(SERVICE, topics.ALL_BALANCES), BalanceEvent, evaluator.on_balance)
            subscribe(topics.shared(SERVICE, topics.ALL_POLL_STATS), PollStats, evaluator.on_poll_stats)
            # Not shared: a broker sends retained messages to plain subscriptions only, and every replica taking
            # every occupancy in is safe (occupancy.record drops what the room already holds).
            subscribe(topics.ALL_ROOM_OCCUPANCY, RoomOccupancy, evaluator.on_room_occupancy)
            # Not shared either, for the same reasons: each tenant's contact is retained, and a replica taking a
            # contact alarm already holds changes nothing (newest `changed_at` wins).
            subscribe(topics.ALL_TENANT_CONTACTS, TenantContact, c.notifier.preferences.on_contact)
            subscribe(topics.shared(SERVICE, topics.ALL_COMMAND_RESULTS), CommandResult, evaluator.on_command_result)
            subscribe(topics.shared(SERVICE, topics.ALL_DEAD_LETTERS), DeadLetterParked, evaluator.on_dead_letter)
            subscribe(topics.shared(SERVICE, topics.ALL_COMMAND_UPDATES), CommandUpdate, evaluator.on_command_update)
            subscribe(
                topics.shared(SERVICE, topics.ALL_METER_COMMANDS), CommandRequested, evaluator.on_command_requested
            )
            subscribe(topics.shared(SERVICE, topics.ALL_LINE_LOSS), LineLossExceeded, evaluator.on_line_loss)
            subscribe(topics.shared(SERVICE, topics.ALL_PAYMENT_PROBLEMS), PaymentProblem, evaluator.on_payment_problem)
            subscribe(topics.shared(SERVICE, topics.ALL_READINGS_HELD), ReadingHeld, evaluator.on_reading_held)
            runtime.supervisor.add("tick", evaluator.tick_loop)
            runtime.supervisor.add("notifications", c.notifier.run)
            app.state.components = c  # the app's one state: the routers (api.deps) and the kit's operations routes
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian alarm",
        summary="告警规则、告警生命周期、通知与维修工单 · Alarm rules, lifecycle, notifications and work orders",
        version="0.2.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)  # AlarmError is a ShuidianError: the kit answers it
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)

    app.include_router(ops_router(_runtime))
    app.include_router(router)
    return app
