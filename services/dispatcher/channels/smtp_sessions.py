"""Open SMTP sessions, kept and reused: connecting, TLS and AUTH once, not per message.

A fan-out to thousands of recipients would otherwise pay a TCP connect, a TLS
handshake and an AUTH for every message. Sessions are taken one per send, so
concurrent sends never share one, and at most ``keep`` idle sessions are kept.

A session that failed in any way is closed, never reused. A session idle for
longer than ``check_after`` is checked with NOOP before it is reused (servers
drop idle clients), and replaced when the check fails, so a stale session never
costs a delivery an attempt.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from email.message import EmailMessage
from typing import Final

import aiosmtplib

from shared.settings import Settings

CHECK_AFTER_SECONDS: Final = 5.0


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
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        """Send over a kept session or a new one. Raises what aiosmtplib raises."""
        session = await self._take()
        try:
            await session.send_message(message, recipients=list(recipients))
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

    async def _take(self) -> aiosmtplib.SMTP:
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
        return await self._connect()


async def _quit(session: aiosmtplib.SMTP) -> None:
    try:
        await session.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        await _close(session)


async def _close(session: aiosmtplib.SMTP) -> None:
    if session.is_connected:
        session.close()
