"""``python -m services.ingest``: serve the ingest API with uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from services.ingest.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.require_redis_url()
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, on_fatal=on_fatal),
            host=settings.ingest_host,
            port=settings.ingest_port,
            log_config=None,  # keep the structlog setup
            lifespan="on",
        )
    )
    server.run()
    if fatal:
        sys.exit(1)  # a supervisor restarts ingest, which recreates its consumer group


if __name__ == "__main__":
    main()
