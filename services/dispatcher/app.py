"""The dispatcher process: consumers on the broker, plus the status page and ops API.

``create_app`` is the composition root: its lifespan builds the Redis client,
the consumer groups, the broker, the channels and the Dispatcher, and passes
them in; nothing is global.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from faststream.redis import RedisBroker

from services.dispatcher.channels import Channel
from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.registry import default_channels
from services.dispatcher.dead_letter_routes import dead_letter_routes
from services.dispatcher.dead_letters import Replayer
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_routes import deliveries_router, metrics_router
from services.dispatcher.delivery_state import DeliveryStates
from services.dispatcher.delivery_worker import DeliveryWorker
from services.dispatcher.dispatch_record import DispatchRecords
from services.dispatcher.handlers import subscribe
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.ops_pages import ops_pages
from services.dispatcher.pipeline import Dispatcher
from services.dispatcher.rate_limits import RateLimits, parse_rate_limits
from services.dispatcher.retry_policy import RetryPolicy
from services.dispatcher.routes import ops, public
from services.dispatcher.state import DispatcherState
from services.dispatcher.status_page_store import StatusPageStore
from services.dispatcher.status_routes import status_pages
from services.dispatcher.subscription_routes import subscription_routes
from shared.clock import Clock, SystemClock
from shared.consumer import GuardedConsumer
from shared.contracts import ApprovalGranted, ApprovalRequested
from shared.http_errors import install_error_handlers
from shared.logs import get_logger
from shared.plan import Plan, load_plan
from shared.redis_client import broker_connection, connect, ensure_consumer_groups, stop_broker
from shared.retention import RetentionTask
from shared.secret_values import configured_secrets
from shared.serving import freeze_startup_objects
from shared.settings import Settings
from shared.streams import (
    APPROVALS,
    DELIVERY_CHANNELS,
    DELIVERY_LOG,
    INCIDENT_EVENTS,
    OUTBOX,
    RESOLUTIONS_DUE,
    UPDATES_DUE,
    delivery_stream,
)
from shared.watchdog import report_stopped_subscribers

log = get_logger("clarion.dispatcher")

GRACEFUL_STOP_SECONDS = 8.0
"""How long a stopping dispatcher lets sends in flight finish (inside Docker's 10 s)."""


class BrokerApprovals:
    """Publishes approval requests and grants on the approvals stream."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        await self._broker.publish(event, stream=APPROVALS)


def retention_policies(settings: Settings) -> dict[str, timedelta]:
    """How long each stream keeps entries every consumer group has read (dead letters: for
    ever, until replayed by a human)."""
    streams = [INCIDENT_EVENTS, UPDATES_DUE, RESOLUTIONS_DUE, APPROVALS, OUTBOX]
    streams += [delivery_stream(channel) for channel in DELIVERY_CHANNELS]
    policies = dict.fromkeys(streams, settings.stream_retention)
    policies[DELIVERY_LOG] = settings.delivery_log_retention
    return policies


async def _stop_consuming(
    broker: RedisBroker, batched: Sequence[GuardedConsumer[Any]], worker: DeliveryWorker
) -> None:
    """Stop reading, then let the work in flight (sends, fan-outs) finish within the
    grace period; jobs still waiting for a send slot are queued again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GRACEFUL_STOP_SECONDS
    for consumer in batched:
        consumer.close()  # entries read but not started stay pending, for a reclaim
    worker.stop_sending()
    await stop_broker(broker)
    left = max(deadline - loop.time(), 0.5)
    await asyncio.gather(*(consumer.drain(left) for consumer in batched))


def close_at_exit(stack: AsyncExitStack, drivers: Mapping[str, Channel]) -> None:
    """The drivers that keep sessions (SMTP) close them when ``stack`` closes."""
    for driver in drivers.values():
        closing = getattr(driver, "aclose", None)
        if closing is not None:
            stack.push_async_callback(closing)


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    on_fatal: Callable[[str], None] | None = None,
    plan: Plan | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    channels: Callable[[DriverContext], Mapping[str, Channel]] = default_channels,
    freeze_after_start: bool = False,
) -> FastAPI:
    """The dispatcher app. ``on_fatal`` is called when consuming has stopped for good
    (a vanished consumer group): the process should then exit and be restarted.
    ``environ`` is where the plan's ``*_env`` credentials are read (``os.environ``).
    ``freeze_after_start`` (a service process, not tests) hands what start-up built to
    :func:`freeze_startup_objects`: a full garbage collection then walks only what
    messages left behind (one took 50-70 ms with the app's own objects, a pause every
    message in flight waited out)."""
    the_clock: Clock = clock or SystemClock()
    the_plan = plan or load_plan(settings.plan)  # an invalid plan fails here, at once
    rate_limits = parse_rate_limits(settings.rate_limits)  # and so does a bad rate limit

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.require_redis_url()
        redis = connect(url)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(redis.aclose)  # closed last
            await ensure_consumer_groups(redis)
            broker = RedisBroker(
                url,
                **broker_connection(),
                logger=get_logger("clarion.dispatcher.broker"),
                graceful_timeout=GRACEFUL_STOP_SECONDS,  # sends in flight finish on SIGTERM
            )
            approvals = BrokerApprovals(broker)
            http = http_client(settings)
            stack.push_async_callback(http.aclose)
            context = DriverContext(
                settings=settings,
                plan=the_plan,
                http=http,
                redis=redis,
                clock=the_clock,
                environ=os.environ if environ is None else environ,
            )
            delivery_log = DeliveryLog(redis, DispatcherMetrics())
            retention = int(settings.idempotency_retention.total_seconds())
            states = DeliveryStates(redis, settings.idempotency_lease_ms, retention)
            drivers = channels(context)
            close_at_exit(stack, drivers)
            worker = DeliveryWorker(
                redis,
                the_clock,
                drivers,
                owner=settings.consumer_name,
                states=states,
                records=DispatchRecords(redis, retention),
                limits=RateLimits(redis, rate_limits, states.calls),
                policy=RetryPolicy.of(settings),
                delivery_log=delivery_log,
                sends_per_channel=settings.channel_concurrency,
            )
            stack.push_async_callback(worker.aclose)  # after the drain, before Redis closes
            dispatcher = Dispatcher(
                redis,
                settings,
                the_clock,
                plan=the_plan,
                approvals=approvals,
                delivery_log=delivery_log,
            )
            dispatcher.warm_up()  # before the consumers start
            batched = subscribe(broker, redis, settings, dispatcher, worker)
            app.state.dispatcher = DispatcherState(
                settings=settings,
                clock=the_clock,
                redis=redis,
                delivery_log=delivery_log,
                status_pages=StatusPageStore(redis),
                broker=broker,
                plan=the_plan,
                approvals=approvals,
                replayer=Replayer(
                    redis, the_clock, states, delivery_log, settings.delivery_max_attempts
                ),
                secrets=configured_secrets(settings, the_plan, context.environ),
            )
            trimmer = RetentionTask(
                redis,
                retention_policies(settings),
                clock=the_clock,  # the delivery log's ids are this clock's milliseconds
                interval=settings.retention_interval,
                derived={DELIVERY_LOG: delivery_log},
            )
            await broker.start()
            trimmer.start()
            stack.push_async_callback(trimmer.stop)
            stopping = asyncio.Event()
            watchdog = asyncio.create_task(
                report_stopped_subscribers(broker, stopping, on_fatal, "dispatcher")
            )
            if not settings.ops_token or not settings.ops_token.get_secret_value():
                log.warning(
                    "dispatcher.ops_loopback_only",
                    detail="CLARION_OPS_TOKEN is not set: /v1 and /ops answer this host only",
                )
            log.info(
                "dispatcher.started",
                consumer=settings.consumer_name,
                smtp=settings.smtp_host is not None,
                audiences=len(the_plan.audiences),
                routes=len(the_plan.routes),
            )
            if freeze_after_start:
                freeze_startup_objects()
            try:
                yield
            finally:
                stopping.set()
                await watchdog
                await _stop_consuming(broker, batched, worker)
                log.info("dispatcher.stopped", consumer=settings.consumer_name)

    app = FastAPI(title="Clarion dispatcher", lifespan=lifespan)
    install_error_handlers(app)
    routers = (public, status_pages, subscription_routes, ops_pages, ops)
    for router in (*routers, dead_letter_routes, deliveries_router, metrics_router):
        app.include_router(router)
    return app
