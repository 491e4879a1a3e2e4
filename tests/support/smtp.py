"""A real SMTP server (aiosmtpd) on loopback, with a mailbox tests can wait on.

Plain by default; ``SmtpServer(tls="starttls")`` requires STARTTLS before mail,
``tls="implicit"`` speaks TLS from the first byte (both with a self-signed
certificate for 127.0.0.1: trust it with ``server.tls.client_context()``), and
``credentials=(login, password)`` requires AUTH. ``server.sessions`` says how
each accepted message came in (over TLS? after STARTTLS? authenticated as whom?)
and ``server.auth_attempts`` lists every AUTH the server saw.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


@dataclass(frozen=True)
class TlsIdentity:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM)."""

    certificate_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls, host: str = "127.0.0.1") -> TlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="clarion-test-tls-") as directory:
            cert_path = os.path.join(directory, "cert.pem")
            key_path = os.path.join(directory, "key.pem")
            with open(cert_path, "wb") as cert_file:
                cert_file.write(self.certificate_pem)
            with open(key_path, "wb") as key_file:
                key_file.write(self.key_pem)
            context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and verifies the host name)."""
        return ssl.create_default_context(cadata=self.certificate_pem.decode())


@dataclass(frozen=True)
class SessionFacts:
    """How one accepted message arrived."""

    tls: bool  # over TLS, implicit or after STARTTLS
    starttls: bool  # the session upgraded with STARTTLS
    login: str | None  # the AUTH login, when the client authenticated
    connection: int = 0  # the same number for messages sent over one SMTP connection


@dataclass(frozen=True)
class AuthAttempt:
    mechanism: str
    login: str
    tls: bool
    accepted: bool


class _Handler:
    """Accepts mail, except recipients told to bounce (5xx) or defer (4xx), and a held DATA."""

    def __init__(self, mailbox: Mailbox, *, pipelining: bool) -> None:
        self.mailbox = mailbox
        self.pipelining = pipelining
        self.hold: threading.Event | None = None
        self.held = threading.Event()
        self.bounce: set[str] = set()
        self.defer: set[str] = set()
        self.credentials: tuple[str, str] | None = None
        self.sessions: list[SessionFacts] = []
        self.auth_attempts: list[AuthAttempt] = []
        self._upgraded: set[int] = set()  # ids of sessions that ran STARTTLS

    async def handle_EHLO(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # this hook's duty (aiosmtpd's "new" EHLO hook)
        if self.pipelining:  # as Postfix, Exchange and most relays do
            responses.insert(-1, "250-PIPELINING")
        return responses

    def handle_STARTTLS(self, server: Any, session: Any, envelope: Any) -> bool:  # noqa: N802
        self._upgraded.add(id(session))
        return True

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        login, password = "", ""
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
        accepted = self.credentials is not None and (login, password) == self.credentials
        self.auth_attempts.append(
            AuthAttempt(mechanism, login, tls=_over_tls(server, session), accepted=accepted)
        )
        return AuthResult(success=accepted, handled=False, auth_data=auth_data)

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
        auth = session.auth_data if session.authenticated else None
        self.sessions.append(
            SessionFacts(
                tls=_over_tls(server, session),
                starttls=id(session) in self._upgraded,
                login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
                connection=id(session),
            )
        )
        self.mailbox.add(message)
        return "250 2.0.0 OK"


def _over_tls(server: Any, session: Any) -> bool:
    """After STARTTLS aiosmtpd fills ``session.ssl``; implicit TLS shows on the transport."""
    transport = getattr(server, "transport", None)
    on_transport = transport is not None and transport.get_extra_info("ssl_object") is not None
    return session.ssl is not None or on_transport


class SmtpServer:
    """A real SMTP server on loopback; ``bounce``/``defer`` script its answers per recipient.

    ``tls``: None (plain), ``"starttls"`` (offered and required before MAIL) or
    ``"implicit"`` (TLS from connect). ``credentials``: require AUTH with them
    (aiosmtpd offers AUTH only over TLS). ``pipelining``: offer PIPELINING (RFC 2920);
    aiosmtpd reads commands one after another either way.
    """

    def __init__(
        self,
        *,
        tls: Literal["starttls", "implicit"] | None = None,
        credentials: tuple[str, str] | None = None,
        identity: TlsIdentity | None = None,
        pipelining: bool = True,
    ) -> None:
        self.mailbox = Mailbox()
        self._handler = _Handler(self.mailbox, pipelining=pipelining)
        self.bounce = self._handler.bounce
        self.defer = self._handler.defer
        self.sessions = self._handler.sessions
        self.auth_attempts = self._handler.auth_attempts
        self.port = free_port()
        if tls is not None and identity is None:
            identity = TlsIdentity.create()
        self.tls = identity  # the server's certificate, when it speaks TLS
        options: dict[str, Any] = {}
        if tls is not None:
            assert self.tls is not None
            if tls == "implicit":
                options["ssl_context"] = self.tls.server_context()
            else:
                options["tls_context"] = self.tls.server_context()
                options["require_starttls"] = True
        if credentials is not None:
            self._handler.credentials = credentials
            options["authenticator"] = self._handler.authenticate
            options["auth_required"] = True
        self._controller = Controller(
            self._handler, hostname="127.0.0.1", port=self.port, **options
        )

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
