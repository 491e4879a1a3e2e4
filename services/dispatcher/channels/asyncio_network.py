"""An httpcore network backend on plain asyncio transports, for the drivers' HTTP client.

httpx's default backend goes through anyio: every read and write enters a cancel
scope, and before each request the pool asks every idle connection whether its
socket is readable (a fresh ``poll`` per connection, through a dict of attribute
lambdas). Measured in the fan-out benchmark, that was about half of an SMS send's CPU.

Here a connection is an :class:`asyncio.Protocol`: the event loop delivers what
arrives into a buffer, so "is an idle connection readable?" is a look at the buffer
and the end-of-stream flag, and a read or write only waits when it has to. It plugs
in through httpcore's public ``network_backend`` (:func:`direct_transport`); httpcore
still does HTTP/1.1, pooling and TLS verification, and raises the same httpcore
exceptions (``ConnectError``, ``ReadTimeout``...), which httpx maps as usual.

A closed idle connection is noticed once the loop has delivered the peer's FIN (the
buffer-based check cannot see a FIN still in the kernel), which the loop does as soon
as it runs; a FIN still in flight escapes the ``poll`` check as well.
"""

# ruff: noqa: ASYNC109 - httpcore's network interface takes its timeouts as parameters

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, Final, cast

import httpcore
import httpx

SocketOption = tuple[Any, ...]
"""A ``setsockopt`` call's arguments, as httpcore passes them."""

READ_BUFFER_LIMIT: Final = 256 * 1024
"""Bytes buffered ahead of httpcore's reads before the transport stops reading."""


class _Connection(asyncio.Protocol):
    """One TCP connection's state, fed by the event loop."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.at_eof = False
        self.lost = False
        self.error: Exception | None = None
        self._reader: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_BUFFER_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    @property
    def readable(self) -> bool:
        """A read would not wait: data is buffered, or the stream has ended."""
        return bool(self.buffer) or self.at_eof or self.lost

    async def read(self, max_bytes: int) -> bytes:
        while not self.buffer:
            if self.error is not None:
                raise httpcore.ReadError(str(self.error) or type(self.error).__name__)
            if self.at_eof or self.lost:
                return b""
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._reading_paused and len(self.buffer) <= READ_BUFFER_LIMIT // 2:
            self._reading_paused = False
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()
        return data

    async def drained(self) -> None:
        if self._drained is not None:
            await asyncio.shield(self._drained)

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_writer(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, connection: _Connection) -> None:
        self._transport = transport
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._connection.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no data within {timeout} s") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._connection.lost or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        try:
            async with asyncio.timeout(timeout):
                await self._connection.drained()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"could not write within {timeout} s") from exc
        if self._connection.error is not None:
            raise httpcore.WriteError(str(self._connection.error))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._connection,
                    ssl_context,
                    server_hostname=server_hostname,
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout(f"TLS handshake not done within {timeout} s") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:  # pragma: no cover - the loop closed the connection meanwhile
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._connection.transport = transport  # flow control now goes through TLS
        return AsyncioStream(transport, self._connection)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._connection.readable
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    _Connection, host, port, local_addr=local
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return _stream(transport, connection, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _stream(
    transport: asyncio.BaseTransport,
    connection: _Connection,
    socket_options: Iterable[SocketOption] | None,
) -> AsyncioStream:
    raw: socket.socket | None = transport.get_extra_info("socket")
    for option in socket_options or ():
        if raw is not None:
            raw.setsockopt(*option)
    return AsyncioStream(cast(asyncio.Transport, transport), connection)


def direct_transport(
    limits: httpx.Limits, verify: ssl.SSLContext | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (no proxy), its connection pool on :class:`AsyncioBackend`;
    TLS verified with ``verify``, or as httpx verifies by default.

    httpx does not take a network backend, so the pool it built is replaced by an
    equal one that uses ours (httpx has kept its pool as ``_pool`` since 0.18). Should a
    later httpx keep it elsewhere, the transport is returned as httpx built it.
    """
    ssl_context = verify or httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    if isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )
    return transport
