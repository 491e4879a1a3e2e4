"""Calling a service's ASGI app in process, with its lifespan running as in production."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp


@asynccontextmanager
async def running(app: FastAPI, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app``'s lifespan and yield a client whose requests go straight to ``app``."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@contextmanager
def serving_in_thread(app: ASGIApp, *, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (uvicorn, in a thread) until the block ends; yields its URL.

    ``lifespan="on"`` runs the app's lifespan first, as a service in production does.
    """
    # Listening before uvicorn starts: connections wait in the backlog, no start-up race.
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only then; otherwise every answer (headers
    # and body written apart) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        ws="none",
        http="h11",
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "the local server did not stop"
