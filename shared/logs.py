"""structlog, configured once for every Clarion process.

JSON lines when stderr is not a terminal, coloured console output when it is.
``incident_id``, ``channel`` and ``delivery_id`` travel through contextvars;
a processor redacts secrets, email addresses and phone numbers in every event.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from shared.redaction import REDACTED, is_secret_key, redact_value

# Identifiers the masker would mistake for phone numbers or addresses (Redis entry
# ids are digits, Message-IDs look like email addresses, consumer names hold pids).
_LOG_KEYS_KEPT_AS_IS = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "incident_id",
        "event_id",
        "delivery_id",
        "entry_id",
        "message_id",
        "provider_message_id",
        "consumer",
        "client",  # an IP address, which the phone-number masker would mangle
        "incident_ids",
    }
)


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The last line of defence: nothing secret or personal reaches a log line."""
    for key, value in list(event_dict.items()):
        if key in _LOG_KEYS_KEPT_AS_IS:
            continue
        event_dict[key] = REDACTED if is_secret_key(key) else redact_value(value)
    return event_dict


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Set up structlog and route stdlib logging (uvicorn, FastStream) through it."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared_processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # a dropped level costs no redaction or rendering
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request's full URL at INFO, and a chat webhook's URL is its secret.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind ``incident_id``/``channel``/``delivery_id`` for the duration of a block."""
    with structlog.contextvars.bound_contextvars(**values):
        yield
