"""Incident emails as the bytes an SMTP server receives, without building a MIME tree
per recipient.

Flattening a whole MIME message costs far more than sending it: each header is parsed
and folded again, and the parts are encoded again. Here the message is written in two
pieces. The MIME body (the text and HTML parts, with their own headers) is written once
per distinct message and kept, so a fan-out to thousands of recipients encodes it once;
it is written into a body flattened once with placeholder parts (:class:`BodyTemplate`),
each part encoded as ``EmailMessage.set_content`` encodes it (7bit, quoted-printable or
base64; an 8-bit part takes the library's whole road). The header lines are written
one by one, in the order :meth:`OutgoingEmail.mime` sets them: a value the email
library would write as it is (a plain address, date, message id, or a line of
printable ASCII words) is written directly, any other is folded by the library itself
(and a constant one, such as ``From``, once). The tests compare the result with
flattening the recipient's whole message.

``List-Unsubscribe`` is the one exception: it is written as one line when it fits
the 998-character limit, since mail clients read it as a URL in angle brackets, and
the library would turn a link longer than 78 characters into RFC 2047 encoded words.
"""

from __future__ import annotations

import email.policy
import io
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.contentmanager import _encode_text  # type: ignore[attr-defined]
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Final

from aiosmtplib.email import extract_sender

from services.dispatcher.channels.email_message import OutgoingEmail

LIST_UNSUBSCRIBE: Final = "List-Unsubscribe"
MAX_LINE: Final = 998  # RFC 5322's limit, without the CRLF
FOLD_AT: Final = 78  # where the library starts folding
KEEP_FOLDED: Final = 1024  # folded header lines kept (constant ones repeat)

_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM: Final = rf"{_ATEXT}(?:\.{_ATEXT})*"
_MESSAGE_ID: Final = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
# Printable ASCII words, one space apart, none of them an encoded word's "=?".
_WORDS: Final = re.compile(r"(?!.*=\?)[\x21-\x7e]+(?: [\x21-\x7e]+)*")
# Values the email library writes unchanged (when the line fits), by header name.
_PLAIN: Final = {
    "To": re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}"),
    "Date": re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"),
    "Message-ID": _MESSAGE_ID,
    "In-Reply-To": _MESSAGE_ID,
    "References": _MESSAGE_ID,
    LIST_UNSUBSCRIBE: re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>"),  # printable, no < or >
}
_UNSTRUCTURED: Final = frozenset(
    {"Subject", "Auto-Submitted", "X-Auto-Response-Suppress", "Precedence"}
    | {"X-Clarion-Incident", "List-Unsubscribe-Post"}
)

if TYPE_CHECKING:
    Policy = EmailPolicy[EmailMessage]
else:
    Policy = EmailPolicy


def smtp_policy(utf8: bool, cte_type: str) -> Policy:
    """The policy aiosmtplib's ``send_message`` flattens with."""
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    return policy if cte_type == "8bit" else policy.clone(cte_type=cte_type)


def flatten(message: EmailMessage, policy: Policy) -> bytes:
    """``message`` as bytes, as aiosmtplib's ``send_message`` would send it."""
    with io.BytesIO() as out:
        BytesGenerator(out, policy=policy).flatten(message)
        return out.getvalue()


def plain_line(name: str, value: str) -> bytes | None:
    """``name: value`` with its CRLF when the library would write exactly that, else None."""
    line = f"{name}: {value}"
    if len(line) > (MAX_LINE if name == LIST_UNSUBSCRIBE else FOLD_AT):
        return None
    pattern = _PLAIN.get(name) or (_WORDS if name in _UNSTRUCTURED else None)
    if pattern is None or pattern.fullmatch(value) is None:
        return None
    return line.encode("ascii") + b"\r\n"


def body_bytes(outgoing: OutgoingEmail, policy: Policy) -> bytes:
    """The MIME body (MIME-Version, Content-Type and the parts), flattened."""
    message = EmailMessage()
    message.set_content(outgoing.text)
    if outgoing.html is not None:
        message.add_alternative(outgoing.html, subtype="html")
    return flatten(message, policy)


_TEXT: Final = "clarion-text-placeholder"
_HTML: Final = "clarion-html-placeholder"
_BOUNDARY: Final = re.compile(rb'boundary="([^"]+)"')
_SEVEN_BIT: Final = b"Content-Transfer-Encoding: 7bit\r\n"
_NEWLINES: Final = re.compile(r"\r\n|\r|\n")  # how the generator splits a payload's lines


@dataclass(frozen=True)
class BodyTemplate:
    """The MIME body flattened around placeholder parts: what goes before, between and
    after the text and HTML, and the boundary the parts must not contain."""

    pieces: tuple[bytes, ...]
    boundary: bytes

    @classmethod
    def build(cls, html: bool, policy: Policy) -> BodyTemplate:
        placeholder = OutgoingEmail("", "", "", _TEXT, _HTML if html else None, "", _EPOCH, ())
        flat = body_bytes(placeholder, policy)
        found = _BOUNDARY.search(flat)
        pieces = re.split(rb"clarion-(?:text|html)-placeholder\r\n", flat)
        if len(pieces) != (3 if html else 2):
            raise ValueError("the placeholder parts are not where they were put")
        return cls(tuple(pieces), found.group(1) if found else b"")

    def fill(self, outgoing: OutgoingEmail) -> bytes | None:
        """The body of ``outgoing``, or None when a part is 8-bit (the library then also
        decides how the policy sends it) or contains the boundary."""
        texts = [outgoing.text] if outgoing.html is None else [outgoing.text, outgoing.html]
        parts = [_part(text, self.boundary) for text in texts]
        if len(parts) != len(self.pieces) - 1:
            return None
        out: list[bytes] = []
        for before, part in zip(self.pieces, parts, strict=False):
            if part is None:
                return None
            cte, data = part
            head, found, tail = before.rpartition(_SEVEN_BIT)
            if not found:
                return None
            out += [head, b"Content-Transfer-Encoding: " + cte + b"\r\n", tail, data]
        out.append(self.pieces[-1])
        return b"".join(out)


def _part(text: str, boundary: bytes) -> tuple[bytes, bytes] | None:
    """(its Content-Transfer-Encoding, its lines as written) for a text part, as
    ``EmailMessage.set_content`` encodes ``text``; None when that is 8-bit."""
    # The content manager's own encoder (private, but it is what set_content calls): the
    # same choice of 7bit, quoted-printable or base64, and the same encoded lines.
    cte, payload = _encode_text(text, "utf-8", None, email.policy.default)
    if cte not in ("7bit", "quoted-printable", "base64"):
        return None
    data = _NEWLINES.sub("\r\n", payload).encode("ascii")
    if boundary and boundary in data:
        return None
    return cte.encode("ascii"), data


def date_header(date: datetime) -> str:
    """``format_datetime(date)``: whole seconds, so written once per second and zone."""
    return _date_header(date.replace(microsecond=0), date.utcoffset())


@lru_cache(maxsize=8)
def _date_header(date: datetime, offset: timedelta | None) -> str:
    return format_datetime(date)  # (offset: aware datetimes at one instant hash alike)


def _headers(outgoing: OutgoingEmail) -> list[tuple[str, str]]:
    """Every header, in the order :meth:`OutgoingEmail.mime` sets them."""
    return [
        ("From", outgoing.sender),
        ("To", outgoing.recipient),
        ("Subject", outgoing.subject),
        ("Date", date_header(outgoing.date)),
        *outgoing.headers,
    ]


_BodyKey = tuple[str, str | None, bool, str]
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class FlatEmails:
    """Writes incident emails, keeping the ``keep`` most recent bodies."""

    def __init__(self, keep: int = 64) -> None:
        self._keep = keep
        self._bodies: OrderedDict[_BodyKey, bytes] = OrderedDict()
        self._folded: dict[tuple[str, str, bool, str], bytes] = {}
        self._senders: dict[str, str] = {}
        self._templates: dict[tuple[bool, bool, str], BodyTemplate] = {}

    def flatten(self, outgoing: OutgoingEmail, *, utf8: bool, cte_type: str) -> bytes:
        """``outgoing`` as bytes for the wire (``utf8``: SMTPUTF8 is in use; ``cte_type``:
        ``8bit`` when the server takes 8BITMIME, else ``7bit``)."""
        policy = smtp_policy(utf8, cte_type)
        lines = [self._line(name, value, policy) for name, value in _headers(outgoing)]
        return b"".join(lines) + self._body(outgoing, policy)

    def envelope_sender(self, outgoing: OutgoingEmail) -> str:
        """The address of ``From``, as aiosmtplib's ``send_message`` would send it."""
        found = self._senders.get(outgoing.sender)
        if found is None:
            message = EmailMessage()
            message["From"] = outgoing.sender
            sender = extract_sender(message)
            if sender is None:
                raise ValueError("the From header has no address")
            found = self._senders[outgoing.sender] = sender
        return found

    def _line(self, name: str, value: str, policy: Policy) -> bytes:
        plain = plain_line(name, value)
        if plain is not None:
            return plain
        key = (name, value, policy.utf8, policy.cte_type)
        folded = self._folded.get(key)
        if folded is None:
            if len(self._folded) >= KEEP_FOLDED:
                self._folded.clear()
            parsed = policy.header_store_parse(name, value)[1]  # as EmailMessage stores it
            folded = self._folded[key] = policy.fold_binary(name, parsed)
        return folded

    def _body(self, outgoing: OutgoingEmail, policy: Policy) -> bytes:
        key = (outgoing.text, outgoing.html, policy.utf8, policy.cte_type)
        found = self._bodies.get(key)
        if found is not None:
            self._bodies.move_to_end(key)
            return found
        shape = (outgoing.html is not None, policy.utf8, policy.cte_type)
        template = self._templates.get(shape)
        if template is None:
            template = self._templates[shape] = BodyTemplate.build(shape[0], policy)
        built = template.fill(outgoing) or body_bytes(outgoing, policy)
        self._bodies[key] = built
        while len(self._bodies) > self._keep:
            self._bodies.popitem(last=False)
        return built
