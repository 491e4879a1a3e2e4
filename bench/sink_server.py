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

SMTP (:class:`SmtpSink`) is a minimal server on the same event loop, accepting every
message: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, with 8BITMIME, SMTPUTF8 and
PIPELINING. aiosmtpd, which it replaced, spent about 0.6 ms of CPU per message
(measured on the 2-core benchmark machine): a sink that slow, sharing the CPU with the
dispatcher, would cap the fan-out figure near 1,000 messages per second by itself.
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


SMTP_GREETING = b"220 bench-sink ESMTP\r\n"
SMTP_EHLO = b"250-bench-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250 HELP\r\n"
SMTP_OK = b"250 OK\r\n"
SMTP_ACCEPTED = b"250 2.0.0 OK\r\n"
SMTP_GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
SMTP_BYE = b"221 Bye\r\n"
SMTP_UNKNOWN = b"502 Command not implemented\r\n"
SMTP_NO_RECIPIENT = b"503 Error: need RCPT command\r\n"
DATA_END = b"\r\n.\r\n"


class SmtpSink(asyncio.Protocol):
    """One SMTP client: accept every message, stamp it, keep its incident id."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.recipients: list[str] = []
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(SMTP_GREETING)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self.transport is not None:
            if self.in_data:
                if not self._message_ended(replies):
                    break
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            replies.append(self.command(line))
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
            if replies[-1] is SMTP_BYE:
                self.transport.close()
                self.transport = None

    def _message_ended(self, replies: list[bytes]) -> bool:
        """Take a whole message off the buffer, if it is there (an empty one ends at once)."""
        if self.buffer.startswith(b".\r\n"):
            content, consumed = b"", 3
        else:
            end = self.buffer.find(DATA_END)
            if end < 0:
                return False
            content, consumed = bytes(self.buffer[:end]), end + len(DATA_END)
        del self.buffer[:consumed]
        arrived = time.monotonic()
        found = INCIDENT_HEADER.search(content)
        key = found.group(1).decode("ascii", "replace") if found else ""
        self.arrivals.smtp.append((arrived, ", ".join(self.recipients), key))
        self.in_data = False
        self.recipients = []
        replies.append(SMTP_ACCEPTED)
        return True

    def command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb in (b"MAIL", b"RSET"):
            self.recipients = []
        elif verb == b"RCPT":
            start, end = line.find(b"<"), line.find(b">")
            self.recipients.append(line[start + 1 : end].decode("utf-8", "replace"))
        elif verb == b"DATA":
            self.in_data = bool(self.recipients)
            return SMTP_GO_AHEAD if self.in_data else SMTP_NO_RECIPIENT
        return SMTP_REPLIES.get(verb, SMTP_UNKNOWN)


SMTP_REPLIES = {
    b"EHLO": SMTP_EHLO,
    b"HELO": SMTP_OK,
    b"MAIL": SMTP_OK,
    b"RCPT": SMTP_OK,
    b"RSET": SMTP_OK,
    b"NOOP": SMTP_OK,
    b"QUIT": SMTP_BYE,
}


async def serve(host: str, http_port: int, smtp_port: int) -> None:
    loop = asyncio.get_running_loop()
    arrivals = Arrivals()
    http = await loop.create_server(lambda: HttpSink(arrivals), host, http_port, backlog=1024)
    smtp = await loop.create_server(lambda: SmtpSink(arrivals), host, smtp_port, backlog=1024)
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
