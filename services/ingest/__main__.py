"""``python -m services.ingest``: serve the ingest API with uvicorn."""

from __future__ import annotations

from services.ingest.app import create_app
from shared.logs import configure_logging
from shared.serving import serve
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.require_redis_url()
    serve(
        lambda on_fatal: create_app(settings, on_fatal=on_fatal),
        settings.ingest_host,
        settings.ingest_port,
        freeze_startup=True,
    )


if __name__ == "__main__":
    main()
