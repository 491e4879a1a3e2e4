"""``python -m services.scheduler``: run the scheduler until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from services.scheduler.service import SubscriberStopped, run
from shared.logs import configure_logging, get_logger
from shared.settings import Settings

log = get_logger("clarion.scheduler")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_serve(settings))
    except SubscriberStopped as exc:
        log.critical("scheduler.subscriber_stopped", error=str(exc))
        sys.exit(1)


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)


if __name__ == "__main__":
    main()
