"""``python -m services.scheduler``: run the scheduler, with its health and metrics endpoints.

Serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``CLARION_SCHEDULER_HOST`` and
``CLARION_SCHEDULER_PORT`` until SIGTERM or SIGINT. Exits non-zero when a
subscriber stops on its own, so that its supervisor starts it again.
"""

from __future__ import annotations

from services.scheduler.health import create_app
from shared.logs import configure_logging
from shared.serving import serve
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.require_redis_url()
    serve(
        lambda on_fatal: create_app(settings, on_fatal=on_fatal),
        settings.scheduler_host,
        settings.scheduler_port,
        freeze_startup=True,  # full collections of the modules' objects paused the ticks
    )


if __name__ == "__main__":
    main()
