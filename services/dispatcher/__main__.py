"""``python -m services.dispatcher``: run the dispatcher with settings from the environment.

With ``CLARION_DISPATCHER_WORKERS`` above 1, several worker processes share the port
(:func:`shared.serving.serve_workers`); each builds its app with :func:`worker_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shared.logs import configure_logging
from shared.serving import FatalHook, serve, serve_workers, worker_settings
from shared.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

WORKER_APP: Final = "services.dispatcher.__main__:worker_app"


def worker_app(on_fatal: FatalHook) -> FastAPI:
    """The app of one worker process, from the settings in its environment."""
    from services.dispatcher.app import create_app  # noqa: PLC0415  (in the workers only)

    return create_app(worker_settings(), on_fatal=on_fatal, freeze_after_start=True)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.require_redis_url()
    if settings.dispatcher_workers > 1:
        serve_workers(
            WORKER_APP,
            settings.dispatcher_host,
            settings.dispatcher_port,
            settings.dispatcher_workers,
        )
        return
    from services.dispatcher.app import create_app  # noqa: PLC0415  (a supervisor of workers does without)

    serve(
        lambda on_fatal: create_app(settings, on_fatal=on_fatal, freeze_after_start=True),
        settings.dispatcher_host,
        settings.dispatcher_port,
    )


if __name__ == "__main__":
    main()
