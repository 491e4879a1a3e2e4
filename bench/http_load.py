"""A lean HTTP/1.1 load generator: keep-alive connections, prebuilt requests, no framing library.

httpx spends tens of microseconds of Python per request, which on a 2-core machine
caps the client well below what Alertmanager accepts. This client writes request
bytes built beforehand (``request_bytes``) and parses only the status line, the
``Content-Length`` (or chunked framing) and the body of each answer.

- :func:`closed_loop`: ``concurrency`` connections, each sending its next request as
  soon as the previous one is answered, for ``duration`` seconds (or ``limit`` requests).
- :class:`Pool`: connections on demand, for open-loop senders that must never wait for
  a free connection before the next scheduled send.

Each run reports the client's own CPU time (``getrusage``), so a saturated client
shows instead of passing for a slow server.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    """A complete keep-alive ``POST`` of a JSON ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def get_bytes(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("ascii")


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case, with its colon) in a response head."""
    lower = head.lower()
    start = lower.find(b"\r\n" + name)
    if start < 0:
        return None
    start += 2 + len(name)
    end = lower.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


def _chunked_end(buffer: bytearray, start: int) -> tuple[int, bytes] | None:
    """Where a chunked body starting at ``start`` ends, and the body; None if incomplete."""
    body = bytearray()
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        chunk_start = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", chunk_start)
            return None if trailer_end < 0 else (trailer_end + 2, bytes(body))
        if len(buffer) < chunk_start + size + 2:
            return None
        body += buffer[chunk_start : chunk_start + size]
        position = chunk_start + size + 2


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the server closed the connection"))

    def _complete(self) -> None:
        if self._waiter is None or self._waiter.done():
            return
        end = self._buffer.find(HEAD_END)
        if end < 0:
            return
        head = bytes(self._buffer[:end])
        status = int(head[9:12])
        length = _header(head, b"content-length:")
        if length is not None:
            total = end + 4 + int(length)
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
        elif (_header(head, b"transfer-encoding:") or b"").lower() == b"chunked":
            framed = _chunked_end(self._buffer, end + 4)
            if framed is None:
                return
            total, body = framed
        else:
            total, body = end + 4, b""
        del self._buffer[:total]
        self._waiter.set_result((status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send prebuilt request bytes; the answer's status and body."""
        assert self._transport is not None
        if self.closed:
            raise ConnectionError("the connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system), all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class LoadResult:
    """What one closed-loop run saw."""

    concurrency: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)  # seconds, per answered request
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    client_cpu: float = 0.0  # CPU seconds the client used during the run

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def client_cpu_share(self) -> float:
        """The client's CPU use as a share of one core (1.0: one core saturated)."""
        return self.client_cpu / self.elapsed if self.elapsed else 0.0


async def closed_loop(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    concurrency: int,
    duration: float,
    limit: int | None = None,
) -> LoadResult:
    """``concurrency`` connections sending ``make_request(n)`` back to back for ``duration``
    seconds (or until ``limit`` requests are sent), ``n`` counting up from 0."""
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    result = LoadResult(concurrency, 0.0)
    numbers = itertools.count()
    started = time.perf_counter()
    deadline = started + duration
    cpu_before = cpu_seconds()

    async def worker(connection: Connection) -> None:
        while time.perf_counter() < deadline:
            n = next(numbers)
            if limit is not None and n >= limit:
                return
            data = make_request(n)
            sent = time.perf_counter()
            try:
                status, _ = await connection.request(data)
            except ConnectionError:
                result.errors += 1
                return
            result.latencies.append(time.perf_counter() - sent)
            result.statuses[status] += 1

    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        result.elapsed = time.perf_counter() - started
        result.client_cpu = cpu_seconds() - cpu_before
        for connection in connections:
            connection.close()
    return result


class Pool:
    """Connections to one server, opened on demand: a send never waits for a free one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[Connection] = []
        self.opened = 0

    async def request(self, data: bytes) -> tuple[int, bytes]:
        connection = self._idle.pop() if self._idle else None
        if connection is None or connection.closed:
            connection = await Connection.open(self.host, self.port)
            self.opened += 1
        answer = await connection.request(data)
        self._idle.append(connection)
        return answer

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
