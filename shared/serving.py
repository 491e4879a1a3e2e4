"""Running a service's web app under uvicorn, and exiting non-zero when it must restart.

One process (:func:`serve`), or several worker processes sharing one listening socket
(:func:`serve_workers`, uvicorn's own supervisor).
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

import structlog
import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE
from uvicorn.importer import import_from_string
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from shared.logs import configure_logging, get_logger
from shared.settings import Settings
from shared.worker_metrics import MULTIPROCESS_DIR

FatalHook = Callable[[str], None]

YOUNG_COLLECTION_THRESHOLD: Final = 20_000
"""Allocations (less deallocations) between two collections of the youngest generation,
with :func:`freeze_startup_objects`; Python's default is 700."""

log = get_logger("clarion.serving")


def serve(
    make_app: Callable[[FatalHook], ASGIApp],
    host: str,
    port: int,
    *,
    freeze_startup: bool = False,
) -> None:
    """Serve the app ``make_app(on_fatal)`` builds until stopped.

    When the app calls ``on_fatal`` (its consumers stopped for good), the server
    shuts down and the process exits 1, so its supervisor (``clarion up``,
    Docker's restart policy) starts it again and the consumer groups are recreated.

    ``freeze_startup`` calls :func:`freeze_startup_objects` once the app is built.
    Uvicorn runs on uvloop and httptools (Clarion's dependencies; no uvloop on
    Windows), which it picks itself when they can be imported, else on asyncio and h11.
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
    if freeze_startup:
        freeze_startup_objects()
    server.run()
    if fatal:
        sys.exit(1)


def serve_workers(
    app_factory: str,
    host: str,
    port: int,
    workers: int,
    *,
    freeze_startup: bool = False,
) -> None:
    """Serve with ``workers`` processes that share one listening socket, until stopped.

    ``app_factory`` is an import string (``"package.module:function"``) of a function
    ``(on_fatal) -> app`` that reads its settings from the environment (see
    :func:`worker_settings`); each worker process imports and calls it, then, with
    ``freeze_startup``, calls :func:`freeze_startup_objects`. This process only binds
    the socket and supervises, with uvicorn's ``Multiprocess``:

    - a worker that exits or stops answering is replaced (uvicorn notices within its
      5 s health check). One whose app calls ``on_fatal`` (its consumers stopped for
      good) shuts down gracefully and exits 1, and its replacement recreates the
      consumer groups. SIGHUP replaces the workers one after another;
    - a worker that fails before serving (its app cannot be built, its lifespan fails:
      Redis unreachable) stops them all, and this process exits 3 (uvicorn's startup
      failure), for its own supervisor (``clarion up``, Docker) to start it again;
    - SIGTERM or SIGINT stops every worker gracefully (the dispatcher drains its
      consumers), and this process exits 0. A worker whose parent dies stops too.

    Prometheus metrics of the workers go to files in a temporary directory
    (``PROMETHEUS_MULTIPROC_DIR``, set before the workers start, removed at exit) and
    each worker's ``/metrics`` answers their sum (:mod:`shared.worker_metrics`).
    """
    metrics_dir = tempfile.mkdtemp(prefix="clarion-metrics-")
    previous_dir = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = metrics_dir  # inherited by the workers
    try:
        config = _WorkerConfig(
            functools.partial(_worker_app, app_factory, freeze_startup),
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # keep the structlog setup
            lifespan="on",
        )
        listener = config.bind_socket()
        supervisor = _Workers(config, sockets=[listener])
        try:
            supervisor.run()
        finally:
            listener.close()
    finally:
        if previous_dir is None:
            del os.environ[MULTIPROCESS_DIR]
        else:
            os.environ[MULTIPROCESS_DIR] = previous_dir
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


def worker_settings() -> Settings:
    """The settings of this worker process, from the environment.

    Each worker is a consumer of its own in every consumer group: the default
    consumer name has the process id in it, and a name set with
    ``CLARION_CONSUMER_NAME`` gets this worker's process id appended.
    """
    settings = Settings()
    if "consumer_name" in settings.model_fields_set:
        unique = f"{settings.consumer_name}-{os.getpid()}"
        return settings.model_copy(update={"consumer_name": unique})
    return settings


def freeze_startup_objects(young_threshold: int = YOUNG_COLLECTION_THRESHOLD) -> None:
    """Spare the garbage collector of a busy service what it cannot free, and collect less often.

    Every object alive now (modules, schemas, the app) moves to a generation the
    collector no longer looks through (``gc.freeze``): a full collection then walks
    what requests left behind, not a million objects that live as long as the process.
    The youngest generation is collected after ``young_threshold`` allocations
    instead of 700, in fewer and larger passes. Reference cycles are still collected.
    Measured on ingest under load (1-alert webhooks): the collector took 35-45% of
    its CPU with Python's defaults, 3-10% with this.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


# What follows runs in the worker processes, except _Workers (the parent's supervisor).

_fatal: list[str] = []
"""Why this worker process must be replaced (its consumers stopped for good), if it must."""


class _WorkerConfig(uvicorn.Config):
    """uvicorn's configuration, plus what a worker process sets up before its server runs.

    uvicorn calls ``configure_logging`` in each worker process it starts, before the
    server (and here also once in the parent, which has its logging already).
    """

    def configure_logging(self) -> None:
        super().configure_logging()
        if multiprocessing.parent_process() is not None:
            _prepare_worker_process()


def _prepare_worker_process() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())  # on each log line
    # uvicorn's server handles SIGTERM while it runs (a graceful shutdown), then
    # raises it again for the handler it found: this one, which sets the exit code.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_stop_when_gone, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()


def _exit_after_shutdown(signum: int, frame: FrameType | None) -> None:
    sys.exit(1 if _fatal else 0)


def _stop_when_gone(parent_sentinel: int) -> None:
    """Shut this worker down gracefully once its parent has exited (killed: no SIGTERM)."""
    multiprocessing.connection.wait([parent_sentinel])
    log.warning("serving.parent_gone", pid=os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def _restart_worker(reason: str) -> None:
    """``on_fatal`` in a worker: shut down gracefully, exit 1, and be replaced."""
    _fatal.append(reason)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_app(app_factory: str, freeze_startup: bool) -> ASGIApp:
    """Build this worker's app (uvicorn calls this in the worker, before the lifespan)."""
    try:
        make_app: Callable[[FatalHook], ASGIApp] = import_from_string(app_factory)
        app = make_app(_restart_worker)
    except Exception:  # the same in every worker, and in every replacement
        log.exception("serving.worker_app_failed", app_factory=app_factory)
        sys.exit(STARTUP_FAILURE)
    if freeze_startup:
        freeze_startup_objects()
    return app


class _Workers(Multiprocess):
    """uvicorn's supervisor, which also logs each worker it replaced (one that died, or
    all of them on SIGHUP) and forgets their live gauges (``mark_process_dead``)."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._known: list[Process] = []

    def keep_subprocess_alive(self) -> None:  # called every half second, after signals
        super().keep_subprocess_alive()
        for worker in self._known:
            if worker not in self.processes:
                _forget(worker)
        self._known = list(self.processes)


def _forget(worker: Process) -> None:
    log.warning("serving.worker_replaced", pid=worker.pid, exitcode=worker.exitcode)
    if worker.pid is not None:
        mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
