"""Redis going away under a running ingest: never a 202 for what was not stored.

The outage is a loopback TCP proxy in front of the test Valkey that the test
cuts and restores. Stopping a real server would free its port for any other
server started meanwhile, and the client would quietly reconnect there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, INCIDENTS_BY_TIME
from tests.conftest import load_fixture
from tests.support.asgi import running

pytestmark = pytest.mark.integration

URL = "/v1/alerts/alertmanager"


class CuttableProxy:
    """Forwards loopback TCP to Redis until cut; while cut, every connection is dropped."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = parts
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.up = True

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        netloc = self._target.netloc.rpartition("@")[0]
        netloc = f"{netloc}@127.0.0.1:{port}" if netloc else f"127.0.0.1:{port}"
        return urlunsplit(self._target._replace(netloc=netloc))

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self.up = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if not self.up:
                return
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_redis_down_means_503_never_202_and_recovery_accepts_again(
    redis: Redis, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    async with CuttableProxy(redis_url) as proxy:
        app = create_app(make_settings(redis_url=proxy.url))
        async with running(app, "http://ingest.test") as client:
            assert (await client.get("/readyz")).status_code == 200

            proxy.cut()
            ready = await client.get("/readyz")
            refused = await client.post(
                URL, json=load_fixture("alertmanager_webhook_v4_firing.json")
            )
            events_while_down = await redis.xlen(INCIDENT_EVENTS)
            incidents_while_down = await redis.zcard(INCIDENTS_BY_TIME)

            proxy.restore()
            accepted = await client.post(
                URL, json=load_fixture("alertmanager_webhook_v4_firing.json")
            )

    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "unavailable"
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "unavailable"
    assert refused.headers["retry-after"] == "5"
    assert (events_while_down, incidents_while_down) == (0, 0)
    assert accepted.status_code == 202
    assert accepted.json()["events"] == ["incident.opened"]
