"""``python -m services.ingest``: serve the ingest API with uvicorn."""

from __future__ import annotations

import contextlib

import uvicorn

from services.ingest.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_config=None,  # keep the structlog setup
        lifespan="on",
    )
    # uvicorn shuts down gracefully, then re-raises Ctrl-C: nothing left to report.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
