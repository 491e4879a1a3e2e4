"""Open SMTP sessions, kept and reused: connecting, TLS and AUTH once, not per message.

A fan-out to thousands of recipients would otherwise pay a TCP connect, a TLS
handshake and an AUTH for every message. Sessions are taken one per send, so
concurrent sends never share one, and at most ``keep`` idle sessions are kept.

A send is one mail transaction (MAIL, RCPT, DATA) with the message's bytes as the
driver wrote them (:mod:`.email_flat`), the envelope and body encoding chosen as
aiosmtplib's ``send_message`` chooses them, without parsing the addresses once more.
aiosmtplib opens each session (TLS, EHLO, AUTH); when the server offers PIPELINING,
the session's transactions go pipelined (:mod:`.smtp_pipelining`): two round trips
instead of four.

A session that failed in any way is closed, never reused. A session idle for
longer than ``check_after`` is checked with NOOP before it is reused (servers
drop idle clients), and replaced when the check fails, so a stale session never
costs a delivery an attempt.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import aiosmtplib
from aiosmtplib.typing import SMTPStatus

from services.dispatcher.channels.smtp_pipelining import PipelinedSession
from shared.settings import Settings

CHECK_AFTER_SECONDS: Final = 5.0

Session = aiosmtplib.SMTP | PipelinedSession
"""An open session: aiosmtplib's client, or the pipelining session it became."""

Flatten = Callable[[bool, str], bytes]
"""The message's bytes for a session: (SMTPUTF8 in use, ``8bit`` or ``7bit``) -> bytes."""


def smtp_client(settings: Settings, tls_context: ssl.SSLContext | None = None) -> aiosmtplib.SMTP:
    """A client for the CLARION_SMTP_* server, not connected yet (``connect()`` also does
    STARTTLS and AUTH, as configured)."""
    username = settings.smtp_username or None
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=username,
        password=password if username else None,
        use_tls=settings.smtp_tls,
        start_tls=settings.smtp_starttls,
        timeout=settings.smtp_timeout_seconds,
        tls_context=tls_context,
    )


class SmtpSessions:
    def __init__(
        self,
        connect: Callable[[], Awaitable[aiosmtplib.SMTP]],
        *,
        keep: int,
        check_after: float = CHECK_AFTER_SECONDS,
    ) -> None:
        self._connect = connect
        self._keep = keep
        self._check_after = check_after
        self._idle: list[tuple[Session, float]] = []

    async def send(self, sender: str, recipients: Sequence[str], flatten: Flatten) -> None:
        """Send over a kept session or a new one, with the envelope and body encoding
        aiosmtplib's ``send_message`` would choose. Raises what aiosmtplib raises."""
        session = await self._take()
        try:
            await _send(session, sender, list(recipients), flatten)
        except BaseException:
            await _close(session)
            raise
        if len(self._idle) < self._keep:
            self._idle.append((session, time.monotonic()))
        else:
            await _quit(session)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for session, _ in idle:
            await _quit(session)

    async def _take(self) -> Session:
        while self._idle:
            session, since = self._idle.pop()
            if not session.is_connected:
                continue
            if time.monotonic() - since < self._check_after:
                return session
            try:
                await session.noop()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                await _close(session)
                continue
            return session
        return await self._open()

    async def _open(self) -> Session:
        client = await self._connect()
        try:
            if client.is_ehlo_or_helo_needed:
                await _greet(client)
            return PipelinedSession(client) if PipelinedSession.offered(client) else client
        except BaseException:
            client.close()
            raise


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO from a server that refuses EHLO."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def _send(session: Session, sender: str, recipients: list[str], flatten: Flatten) -> None:
    """One mail transaction, as aiosmtplib's ``send_message`` makes it, without parsing
    addresses again: the driver checked them (:func:`_check_address`)."""
    for address in (sender, *recipients):
        _check_address(address)
    options: list[bytes] = []
    utf8 = not (sender + "".join(recipients)).isascii()
    if utf8:
        if not session.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "an address is not ASCII and the server does not support SMTPUTF8"
            )
        options.append(b"SMTPUTF8")
    cte_type = "7bit"
    if session.supports_extension("8BITMIME"):
        options.append(b"BODY=8BITMIME")
        cte_type = "8bit"
    message = flatten(utf8, cte_type)
    if session.supports_extension("size"):
        options.insert(0, f"size={len(message)}".encode("ascii"))  # CRLF already
    encoding = "utf-8" if utf8 else "ascii"
    try:
        if isinstance(session, PipelinedSession):
            addresses = [recipient.encode(encoding) for recipient in recipients]
            await session.transaction(sender.encode(encoding), options, addresses, message)
        else:
            await _envelope(session, sender, recipients, options, encoding)
            await session.data(message)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await session.rset()  # the next message on this session starts afresh
        raise


async def _envelope(
    session: aiosmtplib.SMTP,
    sender: str,
    recipients: list[str],
    options: list[bytes],
    encoding: str,
) -> None:
    """MAIL FROM and RCPT TO; raises as aiosmtplib's ``sendmail`` does."""
    answer = await session.execute_command(
        b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *options
    )
    if answer.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(answer.code, answer.message, sender)
    refused: list[aiosmtplib.SMTPRecipientRefused] = []
    for recipient in recipients:
        answer = await session.execute_command(b"RCPT", b"TO:<" + recipient.encode(encoding) + b">")
        if answer.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            refused.append(aiosmtplib.SMTPRecipientRefused(answer.code, answer.message, recipient))
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)


def _check_address(address: str) -> None:
    """What aiosmtplib refuses on a command line (its own check parses the address)."""
    if not address or any(c in address for c in "\r\n\0<>") or address != address.strip():
        raise ValueError("an address cannot be sent on an SMTP command line")


async def _quit(session: Session) -> None:
    try:
        await session.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        await _close(session)


async def _close(session: Session) -> None:
    if session.is_connected:
        session.close()
