"""Running a service's web app under uvicorn, and exiting non-zero when it must restart."""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

FatalHook = Callable[[str], None]


def serve(make_app: Callable[[FatalHook], ASGIApp], host: str, port: int) -> None:
    """Serve the app ``make_app(on_fatal)`` builds until stopped.

    When the app calls ``on_fatal`` (its consumers stopped for good), the server
    shuts down and the process exits 1, so its supervisor (``clarion up``,
    Docker's restart policy) starts it again and the consumer groups are recreated.
    """
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            make_app(on_fatal),
            host=host,
            port=port,
            log_config=None,  # keep the structlog setup
            lifespan="on",
        )
    )
    server.run()
    if fatal:
        sys.exit(1)
