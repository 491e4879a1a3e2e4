"""SMTP transactions sent pipelined (RFC 2920), on a session aiosmtplib opened.

aiosmtplib connects, does TLS (implicit or STARTTLS), EHLO and AUTH, and sends one
command at a time: a mail transaction is four round trips (MAIL, RCPT, DATA, the
message). When the server offers PIPELINING, :class:`PipelinedSession` takes the
connection over once it is ready (``transport.set_protocol``, asyncio's own way to
hand a connection to another protocol) and sends MAIL, every RCPT and DATA in one
write, then the message: two round trips. Every reply is still read and checked in
order, and failures raise aiosmtplib's exceptions (the sender refused, every
recipient refused, DATA refused), as its ``sendmail`` does.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Final, cast

import aiosmtplib
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

MAX_REPLY_BYTES: Final = 64 * 1024
"""A reply longer than this is refused (aiosmtplib's own limit is of this order)."""

_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


class _Replies(asyncio.Protocol):
    """The server's replies, in order, however they arrive: several in one segment
    (pipelined), or one split over several."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        self._ready: deque[SMTPResponse] = deque()
        self._waiting: deque[asyncio.Future[SMTPResponse]] = deque()
        self._failure: Exception | None = None

    @property
    def failed(self) -> bool:
        return self._failure is not None or self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._take_reply()) is not None:
                if self._waiting:
                    self._waiting.popleft().set_result(reply)
                else:
                    self._ready.append(reply)
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
            self.transport.close()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection lost"
        self._fail(aiosmtplib.SMTPServerDisconnected(reason))

    async def reply(self, within: float | None) -> SMTPResponse:
        if self._ready:
            return self._ready.popleft()
        if self._failure is not None:
            raise self._failure
        waiter: asyncio.Future[SMTPResponse] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(within):
                return await waiter
        except TimeoutError as exc:
            self._fail(aiosmtplib.SMTPReadTimeoutError("timed out waiting for the server"))
            self.transport.close()  # replies would pair with the wrong commands from now
            raise aiosmtplib.SMTPReadTimeoutError("timed out waiting for the server") from exc

    def _take_reply(self) -> SMTPResponse | None:
        """One whole reply from the buffer (its lines ``250-...`` up to ``250 ...``)."""
        offset, lines = 0, []
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset : end + 1])
            offset = end + 1
            code = line[:3]
            if not code.isdigit():
                text = line.decode("utf-8", "replace").strip()
                raise aiosmtplib.SMTPResponseException(
                    SMTPStatus.invalid_response, f"malformed SMTP reply: {text}"
                )
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                message = b"\n".join(lines).decode("utf-8", "surrogateescape")
                return SMTPResponse(int(code), message)
        if len(self._buffer) > MAX_REPLY_BYTES:
            raise aiosmtplib.SMTPResponseException(
                SMTPStatus.invalid_response, "SMTP reply too long"
            )
        return None

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


class PipelinedSession:
    """A ready session (connected, TLS, EHLO and AUTH done by aiosmtplib) whose
    transactions go pipelined. The aiosmtplib client it came from is not used again."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        transport = client.transport
        if transport is None or not client.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("the session is not connected")
        self._extensions = {name.lower() for name in client.esmtp_extensions}
        self._timeout = client.timeout
        self._replies = _Replies(cast(asyncio.Transport, transport))
        transport.set_protocol(self._replies)

    @staticmethod
    def offered(client: aiosmtplib.SMTP) -> bool:
        """The server offers PIPELINING (in its EHLO reply)."""
        return client.supports_extension("pipelining")

    @property
    def is_connected(self) -> bool:
        return not self._replies.failed

    def supports_extension(self, name: str) -> bool:
        return name.lower() in self._extensions

    async def transaction(
        self, sender: bytes, options: list[bytes], recipients: list[bytes], message: bytes
    ) -> None:
        """MAIL, RCPT for each recipient and DATA in one write; the message once DATA is
        accepted, its line endings CRLF and leading dots doubled, as aiosmtplib sends it.
        Raises what aiosmtplib's ``sendmail`` raises."""
        commands = [b" ".join([b"MAIL FROM:<" + sender + b">", *options])]
        commands += [b"RCPT TO:<" + recipient + b">" for recipient in recipients]
        commands.append(b"DATA")
        self._write(b"\r\n".join(commands) + b"\r\n")
        mail = await self._reply()
        answers = [await self._reply() for _ in recipients]
        data = await self._reply()
        refused = [
            aiosmtplib.SMTPRecipientRefused(answer.code, answer.message, recipient.decode())
            for recipient, answer in zip(recipients, answers, strict=True)
            if answer.code not in (SMTPStatus.completed, SMTPStatus.will_forward)
        ]
        problem: aiosmtplib.SMTPException | None = None
        if mail.code != SMTPStatus.completed:
            problem = aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender.decode())
        elif len(refused) == len(recipients):
            problem = aiosmtplib.SMTPRecipientsRefused(refused)
        elif data.code != SMTPStatus.start_input:
            problem = aiosmtplib.SMTPDataError(data.code, data.message)
        if problem is not None:
            if data.code == SMTPStatus.start_input:  # DATA taken anyway: end it, empty
                self._write(b".\r\n")
                await self._reply()
            raise problem
        self._write(data_lines(message))
        done = await self._reply()
        if done.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(done.code, done.message)

    async def noop(self) -> None:
        await self._command(b"NOOP")

    async def rset(self) -> None:
        await self._command(b"RSET")

    async def quit(self) -> None:
        try:
            await self._command(b"QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self._replies.transport.close()

    async def _command(self, command: bytes) -> None:
        self._write(command + b"\r\n")
        reply = await self._reply()
        if reply.code >= 400:
            raise aiosmtplib.SMTPResponseException(reply.code, reply.message)

    def _write(self, data: bytes) -> None:
        if self._replies.failed:
            raise aiosmtplib.SMTPServerDisconnected("the session is closed")
        self._replies.transport.write(data)

    async def _reply(self) -> SMTPResponse:
        return await self._replies.reply(self._timeout)


def data_lines(message: bytes) -> bytes:
    """The message as DATA carries it: every line ending CRLF (a bare CR or LF too), a
    leading dot doubled, then the ending ``.`` line.

    A flattened message already ends its lines with CRLF: then counting is enough to
    know it, and the dots are doubled by a plain replace, without a regex pass over
    every line (the regexes cost an email a tenth of its CPU in the fan-out).
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:  # a bare CR or LF
        message = _LINE_END.sub(b"\r\n", message)
    lines = message.replace(b"\r\n.", b"\r\n..")
    if lines.startswith(b"."):
        lines = b"." + lines
    return lines + (b".\r\n" if lines.endswith(b"\r\n") else b"\r\n.\r\n")
