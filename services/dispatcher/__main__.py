"""``python -m services.dispatcher``: run the dispatcher with settings from the environment."""

from __future__ import annotations

import sys

import uvicorn

from services.dispatcher.app import create_app
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
            host=settings.dispatcher_host,
            port=settings.dispatcher_port,
            log_config=None,
        )
    )
    server.run()
    if fatal:
        sys.exit(1)  # a supervisor restarts the dispatcher, which recreates its groups


if __name__ == "__main__":
    main()
