"""Pipelined SMTP transactions (RFC 2920) against real servers on loopback: aiosmtpd
with and without PIPELINING, and a scripted server that answers nothing until it has
the whole pipelined group, and then answers the way a test needs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiosmtplib
import pytest

from services.dispatcher.channels.email import classify_smtp_error
from services.dispatcher.channels.outcome import Permanent, Retryable
from services.dispatcher.channels.smtp_pipelining import PipelinedSession, data_lines
from services.dispatcher.channels.smtp_sessions import SmtpSessions
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.integration

SENDER = "alerts@example.com"
MESSAGE = (
    b"From: alerts@example.com\r\nTo: ann@example.com\r\nSubject: Outage\r\n\r\n"
    b"We are sorry.\r\n.a line that starts with a dot\r\n.\r\nbare newline\nlast line"
)


def sessions_for(port: int, timeout: float = 5.0, keep: int = 1) -> SmtpSessions:
    async def connect() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout)
        await client.connect()
        return client

    return SmtpSessions(connect, keep=keep)


def flat(utf8: bool, cte_type: str) -> bytes:
    return MESSAGE


# aiosmtpd, offering PIPELINING or not


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_both_ways_deliver_the_same_message_over_one_kept_session(pipelining: bool) -> None:
    server = SmtpServer(pipelining=pipelining)
    server.start()
    try:
        sessions = sessions_for(server.port)
        await sessions.send(SENDER, ["ann@example.com"], flat)
        await sessions.send(SENDER, ["bob@example.com", "cid@example.com"], flat)
        await sessions.aclose()
    finally:
        server.stop()
    first, second = server.mailbox.messages
    assert first["X-Envelope-To"] == "ann@example.com"
    assert second["X-Envelope-To"] == "bob@example.com, cid@example.com"
    body = first.get_content().splitlines()
    assert body == [
        "We are sorry.",
        ".a line that starts with a dot",
        ".",
        "bare newline",
        "last line",
    ]
    assert len({facts.connection for facts in server.sessions}) == 1  # one session, reused


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_refused_recipient_is_refused_and_the_others_still_get_it(
    pipelining: bool,
) -> None:
    server = SmtpServer(pipelining=pipelining)
    server.bounce.add("gone@example.com")
    server.start()
    try:
        sessions = sessions_for(server.port)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await sessions.send(SENDER, ["gone@example.com"], flat)
        await sessions.send(SENDER, ["gone@example.com", "ann@example.com"], flat)
        await sessions.aclose()
    finally:
        server.stop()
    assert isinstance(classify_smtp_error(refused.value), Permanent)
    (delivered,) = server.mailbox.messages
    assert delivered["X-Envelope-To"] == "ann@example.com"


# A scripted server


@dataclass
class Conversation:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    commands: list[bytes] = field(default_factory=list)
    data: bytes = b""

    async def until(self, last: bytes) -> list[bytes]:
        """The client's lines up to and including ``last``, read before any answer."""
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("the client went away")
            lines.append(line.rstrip(b"\r\n"))
            self.commands.append(lines[-1])
            if lines[-1] == last:
                return lines

    async def message(self) -> bytes:
        self.data = await self.reader.readuntil(b"\r\n.\r\n")
        return self.data

    async def say(self, *replies: bytes) -> None:
        self.writer.write(b"".join(reply + b"\r\n" for reply in replies))
        await self.writer.drain()


Script = Callable[[Conversation], Awaitable[None]]


@dataclass
class Scripted:
    port: int
    talks: list[Conversation] = field(default_factory=list)

    @property
    def commands(self) -> list[bytes]:
        """What the client sent in its (only) session, EHLO first."""
        return self.talks[0].commands

    @property
    def data(self) -> bytes:
        return self.talks[0].data


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Scripted]:
    """A server that greets, offers PIPELINING, then follows ``script``; on leaving, it
    waits for the script to end (or the client to go)."""
    finished = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        talk = Conversation(reader, writer)
        state.talks.append(talk)
        try:
            await talk.say(b"220 scripted ESMTP")
            talk.commands.append((await reader.readline()).rstrip(b"\r\n"))  # EHLO
            await talk.say(b"250-scripted", b"250-8BITMIME", b"250 PIPELINING")
            await script(talk)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            finished.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state = Scripted(server.sockets[0].getsockname()[1])
    try:
        yield state
        await asyncio.wait_for(finished.wait(), 5)
    finally:
        for talk in state.talks:
            talk.writer.close()
        server.close()
        await server.wait_closed()


async def test_the_envelope_goes_in_one_group_before_any_answer() -> None:
    async def answer_only_after_data(talk: Conversation) -> None:
        await talk.until(b"DATA")  # a one-by-one client would wait here for ever
        await talk.say(b"250 2.1.0 sender ok", b"250 2.1.5 ann ok", b"250 2.1.5 bob ok")
        await talk.say(b"354 go ahead")
        await talk.message()
        await talk.say(b"250 2.0.0 queued")
        await talk.until(b"QUIT")
        await talk.say(b"221 bye")

    async with scripted(answer_only_after_data) as holder:
        sessions = sessions_for(holder.port)
        await sessions.send(SENDER, ["ann@example.com", "bob@example.com"], flat)
        await sessions.aclose()
    assert holder.commands[1:] == [
        b"MAIL FROM:<alerts@example.com> BODY=8BITMIME",
        b"RCPT TO:<ann@example.com>",
        b"RCPT TO:<bob@example.com>",
        b"DATA",
        b"QUIT",
    ]
    assert holder.data == data_lines(MESSAGE)
    assert b"\r\n..a line that starts with a dot\r\n..\r\nbare newline\r\n" in holder.data


async def test_replies_split_anywhere_and_multiline_are_paired_in_order() -> None:
    async def dribble(talk: Conversation) -> None:
        await talk.until(b"DATA")
        for piece in (b"25", b"0-first line\r\n250 sender", b" ok\r\n250 rcpt ok\r\n3", b"54 go"):
            talk.writer.write(piece)
            await talk.writer.drain()
        await talk.say(b"")
        await talk.message()
        await talk.say(b"250 queued")

    async with scripted(dribble) as holder:
        sessions = sessions_for(holder.port, keep=0)
        await sessions.send(SENDER, ["ann@example.com"], flat)
    assert holder.data == data_lines(MESSAGE)


async def failed_send(
    script: Script, expected: type[Exception], reply_within: float = 5.0
) -> tuple[Scripted, Exception]:
    """One message sent to ``script``'s server, which fails it with ``expected``."""
    async with scripted(script) as holder:
        sessions = sessions_for(holder.port, timeout=reply_within)
        with pytest.raises(expected) as raised:
            await sessions.send(SENDER, ["ann@example.com"], flat)
    return holder, raised.value


async def test_a_refused_sender_ends_the_transaction_without_the_message() -> None:
    async def refuse_sender(talk: Conversation) -> None:
        await talk.until(b"DATA")
        await talk.say(b"550 5.7.1 sender rejected", b"503 5.5.1 no sender", b"503 no valid rcpt")
        await talk.until(b"RSET")
        await talk.say(b"250 reset")

    holder, refused = await failed_send(refuse_sender, aiosmtplib.SMTPSenderRefused)
    assert isinstance(classify_smtp_error(refused), Permanent)
    assert holder.data == b""
    assert holder.commands[-1] == b"RSET"


async def test_data_accepted_after_every_recipient_was_refused_is_ended_empty() -> None:
    async def careless(talk: Conversation) -> None:
        await talk.until(b"DATA")
        await talk.say(b"250 ok", b"450 4.2.1 try later", b"354 go ahead anyway")
        await talk.until(b".")  # the client ends DATA at once: no message goes
        await talk.say(b"554 no valid recipients")
        await talk.until(b"RSET")
        await talk.say(b"250 reset")

    holder, refused = await failed_send(careless, aiosmtplib.SMTPRecipientsRefused)
    assert isinstance(classify_smtp_error(refused), Retryable)
    assert holder.commands[-2:] == [b".", b"RSET"]
    assert b"Subject" not in b"".join(holder.commands)


async def test_a_server_that_hangs_up_mid_transaction_is_retryable() -> None:
    async def hang_up(talk: Conversation) -> None:
        await talk.until(b"DATA")
        await talk.say(b"250 ok")
        talk.writer.close()

    _, lost = await failed_send(hang_up, aiosmtplib.SMTPServerDisconnected)
    assert isinstance(classify_smtp_error(lost), Retryable)


async def test_a_server_that_stops_answering_times_out_and_the_session_is_dropped() -> None:
    async def mute(talk: Conversation) -> None:
        await talk.until(b"DATA")
        await talk.reader.read()  # nothing said, until the client hangs up

    holder, late = await failed_send(mute, aiosmtplib.SMTPTimeoutError, reply_within=0.2)
    assert isinstance(classify_smtp_error(late), Retryable)
    assert holder.talks[0].reader.at_eof()  # the client closed the session


async def test_a_garbled_reply_fails_the_send_instead_of_pairing_wrong() -> None:
    async def garble(talk: Conversation) -> None:
        await talk.until(b"DATA")
        await talk.say(b"hello there", b"250 ok", b"354 go")

    holder, _ = await failed_send(garble, aiosmtplib.SMTPResponseException)
    assert holder.data == b""


def test_data_lines_end_every_line_with_crlf_and_double_leading_dots() -> None:
    assert data_lines(b"a\r\n.b\n.\rc") == b"a\r\n..b\r\n..\r\nc\r\n.\r\n"
    assert data_lines(b"ends\r\n") == b"ends\r\n.\r\n"


def _line_by_line(message: bytes) -> bytes:
    """RFC 5321's rules as written: each line ended with CRLF, a leading dot doubled."""
    lines = re.split(rb"\r\n|\r|\n", message)
    if len(lines) > 1 and lines[-1] == b"":  # the message ended its last line
        lines.pop()
    doubled = (b"." + line if line.startswith(b".") else line for line in lines)
    return b"".join(line + b"\r\n" for line in doubled) + b".\r\n"


@pytest.mark.parametrize(
    "message",
    [
        b".first line\r\n.\r\n..two dots\r\nlast\r\n",  # CRLF already: the fast path
        b"\r\n.\r\n.\r\n",
        b"no dot at all\r\nand no ending",
        b".",
        b"",
        b"mixed\r\n.x\n.y\r.z",
        b"a bare CR before a CRLF\r\r\n.dot",
        b"only LF\n.dot\n",
    ],
)
def test_data_lines_follow_the_rules_line_by_line(message: bytes) -> None:
    assert data_lines(message) == _line_by_line(message)


async def test_a_session_not_connected_cannot_be_taken_over() -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=1)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        PipelinedSession(client)
