"""``python -m services.dispatcher``: run the dispatcher with settings from the environment."""

from __future__ import annotations

import uvicorn

from services.dispatcher.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.require_redis_url()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.dispatcher_host,
            port=settings.dispatcher_port,
            log_config=None,
        )
    )
    server.run()


if __name__ == "__main__":
    main()
