"""The dispatcher process: consumers on the broker, plus the status page and ops API.

``create_app`` is the composition root: its lifespan builds the Redis client,
the consumer groups, the broker, the channels and the Dispatcher, and passes
them in; nothing is global.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faststream.redis import RedisBroker

from services.dispatcher.channels.registry import default_channels
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.handlers import subscribe
from services.dispatcher.pipeline import Dispatcher
from services.dispatcher.routes import ops, public
from services.dispatcher.state import DispatcherState
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import Clock, SystemClock
from shared.contracts import ApprovalGranted, ApprovalRequested
from shared.http_errors import install_error_handlers
from shared.logs import get_logger
from shared.plan import Plan, load_plan
from shared.redis_client import RETRY_ON, broker_retry, connect, ensure_consumer_groups
from shared.settings import Settings
from shared.streams import APPROVALS
from shared.watchdog import report_stopped_subscribers

log = get_logger("clarion.dispatcher")


class BrokerApprovals:
    """Publishes approval requests and grants on the approvals stream."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        await self._broker.publish(event, stream=APPROVALS)


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    on_fatal: Callable[[str], None] | None = None,
    plan: Plan | None = None,
) -> FastAPI:
    """The dispatcher app. ``on_fatal`` is called when consuming has stopped for good
    (a vanished consumer group): the process should then exit and be restarted."""
    the_clock: Clock = clock or SystemClock()
    the_plan = plan or load_plan(settings.plan)  # an invalid plan fails here, at once

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.require_redis_url()
        redis = connect(url)
        try:
            await ensure_consumer_groups(redis)
            broker = RedisBroker(
                url,
                retry=broker_retry(),
                retry_on_error=RETRY_ON,
                logger=get_logger("clarion.dispatcher.broker"),
            )
            approvals = BrokerApprovals(broker)
            dispatcher = Dispatcher(
                redis,
                settings,
                the_clock,
                default_channels(settings, redis, the_clock),
                plan=the_plan,
                approvals=approvals,
            )
            subscribe(broker, redis, settings, dispatcher)
            app.state.dispatcher = DispatcherState(
                settings=settings,
                clock=the_clock,
                redis=redis,
                delivery_log=DeliveryLog(redis),
                status_pages=StatusPageStore(redis),
                broker=broker,
                plan=the_plan,
                approvals=approvals,
            )
            await broker.start()
            stopping = asyncio.Event()
            watchdog = asyncio.create_task(
                report_stopped_subscribers(broker, stopping, on_fatal, "dispatcher")
            )
            log.info(
                "dispatcher.started",
                consumer=settings.consumer_name,
                smtp=settings.smtp_host is not None,
                audiences=len(the_plan.audiences),
                routes=len(the_plan.routes),
            )
            try:
                yield
            finally:
                stopping.set()
                await watchdog
                await broker.stop()
                log.info("dispatcher.stopped", consumer=settings.consumer_name)
        finally:
            await redis.aclose()

    app = FastAPI(title="Clarion dispatcher", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(ops)
    return app
