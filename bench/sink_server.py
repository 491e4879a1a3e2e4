"""The benchmark's message sinks, in a process of their own: an HTTP sink and an SMTP sink.

    python -m bench.sink_server --http-port P --smtp-port Q

Running apart from the load generator keeps the two from sharing one GIL: a sink's
timestamp is not delayed by the client's work. Both stamp each arrival with
``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process on the
machine) the moment the whole request or message is in, before answering.

HTTP (raw asyncio, keep-alive, ``Content-Length`` bodies):

- ``POST /hook/...``: 202, the arrival kept (time, path, body) for the benchmark;
- ``POST .../Messages.json``: 201 with a Twilio-shaped JSON answer (the SMS stand-in);
- any other ``POST``: 202, only counted (``/calibrate``: the client's ceiling);
- ``GET /_sink/arrivals?kind=http|smtp&after=N``: the arrivals kept, from the Nth,
  as JSON ``[[monotonic, path or recipient, key], ...]``: the incident id of a Clarion
  webhook (``incident.id``) or email (``X-Clarion-Incident``), Alertmanager's
  ``groupLabels.incident``;
- ``GET /_sink/counts``: messages received per path, and over SMTP.

SMTP is aiosmtpd on the same event loop, accepting every message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.smtp import SMTP

INCIDENT_HEADER = re.compile(rb"^X-Clarion-Incident:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
TWILIO_ANSWER = json.dumps({"sid": "SMbench", "status": "queued"}).encode()


class Arrivals:
    """Everything the sinks received."""

    def __init__(self) -> None:
        self.http: list[tuple[float, str, bytes]] = []
        self.smtp: list[tuple[float, str, str]] = []
        self.counts: Counter[str] = Counter()

    def listing(self, kind: str, after: int) -> list[list[Any]]:
        if kind == "smtp":
            return [[t, rcpt, key] for t, rcpt, key in self.smtp[after:]]
        return [[t, path, http_key(path, body)] for t, path, body in self.http[after:]]


def http_key(path: str, body: bytes) -> str | None:
    """Which incident an HTTP arrival is about (None when the body says nothing we know)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    incident, labels = data.get("incident"), data.get("groupLabels")
    for holder, name in ((incident, "id"), (labels, "incident")):
        value = holder.get(name) if isinstance(holder, dict) else None
        if isinstance(value, str):
            return value
    return None


def _response(status: int, reason: str, body: bytes = b"", kind: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += f"Content-Type: {kind}\r\n"
    return (head + "\r\n").encode("ascii") + body


ACCEPTED = _response(202, "Accepted")


class HttpSink(asyncio.Protocol):
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end])
            length = _content_length(head)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            arrived = time.monotonic()
            assert self.transport is not None
            self.transport.write(self.answer(head, body, arrived))

    def answer(self, head: bytes, body: bytes, arrived: float) -> bytes:
        method, target = head.split(b" ", 2)[:2]
        path = target.decode("latin-1")
        if method == b"GET" and path.startswith("/_sink/"):
            return self.control(path)
        bare = path.split("?", 1)[0]
        self.arrivals.counts[bare] += 1
        if bare.startswith("/hook/"):
            self.arrivals.http.append((arrived, bare, body))
        if bare.endswith("/Messages.json"):
            return _response(201, "Created", TWILIO_ANSWER)
        return ACCEPTED

    def control(self, path: str) -> bytes:
        parts = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/_sink/counts":
            payload: Any = {"http": dict(self.arrivals.counts), "smtp": len(self.arrivals.smtp)}
        elif parts.path == "/_sink/arrivals":
            kind = query.get("kind", "http")
            total = len(self.arrivals.smtp if kind == "smtp" else self.arrivals.http)
            after = int(query.get("after", "0"))
            payload = {"total": total, "items": self.arrivals.listing(kind, after)}
        else:
            return _response(404, "Not Found")
        return _response(200, "OK", json.dumps(payload).encode())


def _content_length(head: bytes) -> int:
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = lower.find(b"\r\n", start)
    return int(lower[start : end if end >= 0 else len(lower)].strip())


class SmtpSink:
    """aiosmtpd handler: accept every message, stamp it, keep its incident id."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        arrived = time.monotonic()
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        found = INCIDENT_HEADER.search(content)
        key = found.group(1).decode("ascii", "replace") if found else ""
        rcpt = ", ".join(envelope.rcpt_tos)
        self.arrivals.smtp.append((arrived, rcpt, key))
        return "250 2.0.0 OK"


async def serve(host: str, http_port: int, smtp_port: int) -> None:
    loop = asyncio.get_running_loop()
    arrivals = Arrivals()
    http = await loop.create_server(lambda: HttpSink(arrivals), host, http_port, backlog=1024)
    handler = SmtpSink(arrivals)
    smtp = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-sink", ident="bench-sink"), host, smtp_port
    )
    print("ready", flush=True)
    async with http, smtp:
        await asyncio.Event().wait()  # until the benchmark terminates this process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.http_port, args.smtp_port))


if __name__ == "__main__":
    main()
