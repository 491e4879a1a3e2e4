"""The drivers' HTTP client on plain asyncio transports, against real local servers:
keep-alive, a server that closes an idle connection, large bodies both ways, timeouts,
refused connections, resets, and TLS verified or refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpcore
import httpx
import pytest

from services.dispatcher.channels.asyncio_network import (
    READ_BUFFER_LIMIT,
    AsyncioBackend,
    _Connection,
    direct_transport,
)
from services.dispatcher.channels.context import http_client
from shared.settings import Settings
from tests.support.smtp import TlsIdentity
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    port: int
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and ``Content-Length`` body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def response(body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


@asynccontextmanager
async def serving(handler: Handler, *, tls: TlsIdentity | None = None) -> AsyncIterator[Server]:
    server_state = Server(port=0)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_state.connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            server_state.closed.set()

    context = tls.server_context() if tls else None
    server = await asyncio.start_server(connected, "127.0.0.1", 0, ssl=context)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its body's length."""
    while True:
        request = await read_request(reader)
        body = request.partition(b"\r\n\r\n")[2]
        writer.write(response(b"%d" % len(body)))
        await writer.drain()


def client(timeout: float = 5.0, verify: object = None) -> httpx.AsyncClient:
    transport = direct_transport(LIMITS, verify=verify)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def pool_of(http: httpx.AsyncClient) -> httpcore.AsyncConnectionPool:
    pool = http._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    return pool


async def test_the_drivers_client_runs_on_the_asyncio_backend(
    make_settings: Callable[..., Settings],
) -> None:
    async with http_client(make_settings()) as http:
        assert isinstance(pool_of(http)._network_backend, AsyncioBackend)


async def test_requests_on_one_connection_are_answered_in_turn() -> None:
    async with serving(echo_forever) as server, client() as http:
        url = f"http://127.0.0.1:{server.port}/"
        answers = [(await http.post(url, content=b"x" * n)).text for n in (0, 5, 70_000)]
    assert answers == ["0", "5", "70000"]
    assert server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(response(b"first"))  # keep-alive as far as the client knows
        await writer.drain()

    async with serving(one_answer_then_close) as server, client() as http:
        url = f"http://127.0.0.1:{server.port}/"
        assert (await http.get(url)).text == "first"
        await asyncio.wait_for(server.closed.wait(), 5)
        pool = pool_of(http)

        async def fin_seen() -> bool:  # the loop delivered the FIN to the idle connection
            return not pool.connections or pool.connections[0].has_expired()

        await eventually(fin_seen, within=5, interval=0.001, what="the FIN seen")
        assert (await http.get(url)).text == "first"
    assert server.connections == 2


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_large_answer_arrives_whole(scheme: str) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: more than the buffer reads ahead
    identity = TlsIdentity.create()

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(body))
        await writer.drain()

    tls = identity if scheme == "https" else None
    async with serving(large, tls=tls) as server, client(verify=identity.client_context()) as http:
        answer = await http.get(f"{scheme}://localhost:{server.port}/")
    assert answer.content == body


async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up

    async with serving(silent) as server, client(timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.1:{server.port}/")


async def test_a_server_that_never_reads_is_a_write_timeout() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def not_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        await release.wait()

    async with serving(not_reading) as server, client(timeout=0.3) as http:
        with pytest.raises(httpx.WriteTimeout):
            await http.post(f"http://127.0.0.1:{server.port}/", content=b"x" * 64_000_000)
        release.set()
    assert started.is_set()


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with serving(echo_forever) as server:
        port = server.port
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_connection_cut_mid_answer_is_an_error_not_a_short_body() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    async with serving(cut) as server, client() as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(f"http://127.0.0.1:{server.port}/")


async def test_https_is_verified_against_the_trusted_certificate() -> None:
    identity = TlsIdentity.create()
    async with serving(echo_forever, tls=identity) as server:
        url = f"https://localhost:{server.port}/"
        async with client(verify=identity.client_context()) as http:
            trusted = await http.post(url, content=b"secret")
            assert trusted.text == "6"
            assert trusted.extensions["network_stream"].get_extra_info("ssl_object") is not None
        async with client() as http:  # the system's trust store knows nothing of it
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(url)


async def test_tls_to_a_server_that_never_answers_the_handshake_is_a_connect_timeout() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(mute) as server, client(timeout=0.2) as http:
        with pytest.raises(httpx.ConnectTimeout):
            await http.get(f"https://localhost:{server.port}/")


async def test_reading_ahead_stops_at_the_buffer_limit_and_resumes_once_half_is_read() -> None:
    total = 8 * READ_BUFFER_LIMIT  # far more than the buffer may hold

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * total)
        await writer.drain()

    async with serving(flood) as server:
        loop = asyncio.get_running_loop()
        transport, connection = await loop.create_connection(_Connection, "127.0.0.1", server.port)
        try:

            async def paused() -> bool:
                return not transport.is_reading()

            await eventually(paused, what="reading paused while nobody reads")
            held = len(connection.buffer)
            assert READ_BUFFER_LIMIT < held < total  # stopped past the limit, not at the end

            received = bytearray()
            async with asyncio.timeout(10):  # a reader that is never resumed fails, not hangs
                while not transport.is_reading():
                    chunk = await connection.read(16 * 1024)
                    assert chunk, "the stream ended early"
                    received += chunk
                assert len(connection.buffer) <= READ_BUFFER_LIMIT // 2  # resumed at half

                while len(received) < total:
                    chunk = await connection.read(64 * 1024)
                    assert chunk, "the stream ended early"
                    received += chunk
            assert received == b"x" * total  # nothing lost across the pause
        finally:
            transport.close()
