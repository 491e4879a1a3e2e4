"""A real SMTP server (aiosmtpd) on loopback, with a mailbox tests can wait on."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Mailbox:
    """Messages the server accepted, in arrival order."""

    messages: list[EmailMessage] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, message: EmailMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[list[EmailMessage]], bool], timeout: float = 20.0
    ) -> list[EmailMessage]:
        """Block until ``predicate(messages)`` holds; fail the test after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(list(self.messages)), timeout):
                subjects = [m["Subject"] for m in self.messages]
                raise AssertionError(f"mailbox condition not met in {timeout}s; have {subjects}")
            return list(self.messages)

    def matching(self, text: str) -> list[EmailMessage]:
        return [m for m in self.messages if text in (m["Subject"] or "")]


class _Handler:
    """Accepts mail, except recipients told to bounce (5xx) or defer (4xx), and a held DATA."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.hold: threading.Event | None = None
        self.held = threading.Event()
        self.bounce: set[str] = set()
        self.defer: set[str] = set()

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.bounce:
            return "550 5.1.1 no such user here"
        if address in self.defer:
            return "451 4.3.0 mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.hold is not None and not self.hold.is_set():
            # Park this delivery until the test releases it, then refuse it:
            # the sender sees a temporary failure (or has died meanwhile).
            self.held.set()
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 60.0)
            return "451 4.3.0 held by test, not accepted"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.mailbox.add(message)
        return "250 2.0.0 OK"


class SmtpServer:
    """A real SMTP server on loopback; ``bounce``/``defer`` script its answers per recipient."""

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self._handler = _Handler(self.mailbox)
        self.bounce = self._handler.bounce
        self.defer = self._handler.defer
        self.port = free_port()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mailbox.messages if m["X-Envelope-To"] == address]

    def hold_next(self) -> tuple[threading.Event, threading.Event]:
        """Hold the next message in DATA; returns (held, release) events."""
        self._handler.hold = threading.Event()
        self._handler.held.clear()
        return self._handler.held, self._handler.hold

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        if self._handler.hold is not None:
            self._handler.hold.set()
        self._controller.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
