"""Incident emails flattened once and spliced per recipient (FlatEmails): byte for byte
what flattening each recipient's whole message gives, but for List-Unsubscribe, which
stays one line (a URL in angle brackets) where the library would fold or encode it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime

import pytest

from services.dispatcher.channels.email_flat import (
    BodyTemplate,
    FlatEmails,
    date_header,
    flatten,
    smtp_policy,
)
from services.dispatcher.channels.email_message import OutgoingEmail, compose
from services.dispatcher.rendering.messages import RenderedMessage
from shared.plan import ChannelName
from tests.support.builders import make_delivery

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
FROM = "Example Status <status@example.com>"
LONG_LINK = "https://status.example.com/unsubscribe?token=" + "t0kEn" * 30
MESSAGE = RenderedMessage(
    ChannelName.EMAIL,
    title="Investigating: Checkout for ünïcode customers " + "and more words " * 8,
    text="We are looking into it. Ça marche pas.\n" * 40,
    html="<p>We are looking into it.</p>" * 40,
)
RECIPIENTS = (
    "alice@example.com",
    "o'brien+status@mail.example.co.uk",
    "a-very-long-local-part-that-goes-on-and-on-and-on-for-ever@example.com",
    "dots.in.the.name@example.org",
)
_BOUNDARY = re.compile(rb"={15}\d+==")


def _email(recipient: str, *, public: bool, link: str | None = None) -> OutgoingEmail:
    delivery = make_delivery(delivery_id=f"id-{len(recipient)}", incident_id="inc-7", public=public)
    return compose(MESSAGE, recipient, delivery, email_from=FROM, now=NOW, unsubscribe_link=link)


def _parsed(flat: FlatEmails, outgoing: OutgoingEmail) -> EmailMessage:
    data = flat.flatten(outgoing, utf8=False, cte_type="8bit")
    return message_from_bytes(data, policy=policy.default)


def _same_boundary(data: bytes) -> bytes:
    """MIME boundaries are random per flattening: compare everything else."""
    return _BOUNDARY.sub(b"BOUNDARY", data)


@pytest.mark.parametrize(("utf8", "cte_type"), [(False, "8bit"), (False, "7bit"), (True, "8bit")])
@pytest.mark.parametrize("recipient", RECIPIENTS)
def test_internal_mail_is_exactly_the_whole_message_flattened(
    recipient: str, utf8: bool, cte_type: str
) -> None:
    flat = FlatEmails()
    outgoing = _email(recipient, public=False)

    spliced = flat.flatten(outgoing, utf8=utf8, cte_type=cte_type)

    whole = flatten(outgoing.mime(), smtp_policy(utf8, cte_type))
    assert _same_boundary(spliced) == _same_boundary(whole)


@pytest.mark.parametrize("recipient", RECIPIENTS)
def test_subscriber_mail_differs_only_in_an_unfolded_list_unsubscribe(recipient: str) -> None:
    flat = FlatEmails()
    outgoing = _email(recipient, public=True, link=LONG_LINK)

    spliced = flat.flatten(outgoing, utf8=False, cte_type="8bit")

    whole = flatten(outgoing.mime(), smtp_policy(False, "8bit"))
    one_line = f"List-Unsubscribe: <{LONG_LINK}>\r\n".encode()
    assert one_line in spliced
    assert b"=?utf-8?" not in spliced.split(b"List-Unsubscribe:")[1].split(b"\r\n")[0]
    unfolded = re.sub(rb"List-Unsubscribe:(?:[^\r]*\r\n[ \t])*[^\r]*\r\n", one_line, whole)
    assert _same_boundary(spliced) == _same_boundary(unfolded)
    parsed = message_from_bytes(spliced, policy=policy.default)
    assert parsed["List-Unsubscribe"] == f"<{LONG_LINK}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["To"] == recipient


def test_each_recipient_gets_its_own_headers_from_one_template() -> None:
    flat = FlatEmails()
    first = _email("alice@example.com", public=True, link="https://s.example.com/u?t=alice")
    second = _email("bob@example.com", public=True, link="https://s.example.com/u?t=bob")

    one, two = _parsed(flat, first), _parsed(flat, second)

    assert (one["To"], two["To"]) == ("alice@example.com", "bob@example.com")
    assert one["Message-ID"] == first.message_id
    assert two["Message-ID"] == second.message_id
    assert one["List-Unsubscribe"] == "<https://s.example.com/u?t=alice>"
    assert two["List-Unsubscribe"] == "<https://s.example.com/u?t=bob>"
    assert one["Subject"] == two["Subject"] == " ".join(MESSAGE.title.split())
    assert one["Date"] == "Mon, 23 Nov 2026 14:30:00 +0000"
    assert len(flat._bodies) == 1  # the body was encoded once for both


def test_another_message_gets_another_template() -> None:
    flat = FlatEmails()
    outgoing = _email("alice@example.com", public=False)
    other = OutgoingEmail(
        **{**outgoing.__dict__, "subject": "Resolved: Checkout", "text": "Fixed.\n"}
    )

    parsed = _parsed(flat, other)

    assert parsed["Subject"] == "Resolved: Checkout"
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Fixed.\n"


def test_the_envelope_sender_is_the_from_address() -> None:
    assert FlatEmails().envelope_sender(_email("a@example.com", public=False)) == (
        "status@example.com"
    )


SUBJECTS = (
    "Investigating: Checkout",
    'Resolved (after 2h): checkout; payments & "cards" <EU> [SEV1] 100% ok',
    "A subject long enough to be folded by the email library at seventy-eight columns, twice",
    "Ünïcode: la caisse ne marche plus",
    "Looks =?utf-8?q?encoded?= but is not",
    "trailing:colon: and comma, semicolon;",
)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_any_subject_and_incident_id_come_out_as_the_library_writes_them(subject: str) -> None:
    delivery = make_delivery(delivery_id="abc", incident_id=f"inc {subject[:20]}", public=False)
    message = RenderedMessage(ChannelName.EMAIL, title=subject, text="words\n", html=None)
    outgoing = compose(message, "alice@example.com", delivery, email_from=FROM, now=NOW)

    spliced = FlatEmails().flatten(outgoing, utf8=False, cte_type="8bit")

    assert spliced == flatten(outgoing.mime(), smtp_policy(False, "8bit"))  # no boundary


BODIES = (
    ("plain words\n", "<p>html</p>"),
    ("no trailing newline", None),
    ("", ""),
    ("blank\n\nlines\n\n\n", "<p>x</p>\n\n"),
    ("crlf\r\nand cr\ronly\n", "<b>\r\n</b>"),
    (".\nFrom the top\n. dot\n", "--not-a-boundary\n"),
    ("trailing spaces   \n\ttabs\n", None),
    ("x" * 78 + "\n" + "y" * 78, "z" * 78),
    ("x" * 79, "<p>a line too long for 7bit</p>"),  # quoted-printable
    ("é" * 100 + "\n" + "ü" * 90, "<p>" + "ß" * 120 + "</p>"),  # base64
    ("Ça marche", "<p>ünïcode</p>"),  # 8bit: the library writes it
)


@pytest.mark.parametrize(("text", "html"), [b for b in BODIES if b[0].isascii() or len(b[0]) > 78])
def test_text_the_library_sends_as_ascii_fills_the_body_template(
    text: str, html: str | None
) -> None:
    outgoing = _email("a@example.com", public=False)
    outgoing = OutgoingEmail(**{**outgoing.__dict__, "text": text, "html": html})
    template = BodyTemplate.build(html is not None, smtp_policy(False, "8bit"))

    assert template.fill(outgoing) is not None


@pytest.mark.parametrize(("text", "html"), BODIES)
@pytest.mark.parametrize(("utf8", "cte_type"), [(False, "8bit"), (False, "7bit"), (True, "8bit")])
def test_any_body_comes_out_as_the_library_writes_it(
    text: str, html: str | None, utf8: bool, cte_type: str
) -> None:
    delivery = make_delivery(delivery_id="abc", incident_id="inc-7", public=False)
    message = RenderedMessage(ChannelName.EMAIL, title="Subject", text=text, html=html)
    outgoing = OutgoingEmail(
        **{**compose(message, "a@example.com", delivery, email_from=FROM, now=NOW).__dict__}
        | {"text": text}  # compose strips nothing here, but say exactly what is sent
    )

    spliced = FlatEmails().flatten(outgoing, utf8=utf8, cte_type=cte_type)

    whole = flatten(outgoing.mime(), smtp_policy(utf8, cte_type))
    assert _same_boundary(spliced) == _same_boundary(whole)


@pytest.mark.parametrize(
    "date",
    [
        NOW,
        NOW.replace(microsecond=999_999),
        NOW.astimezone(timezone(timedelta(hours=-5))),
        datetime(2026, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
    ],
)
def test_the_date_header_is_written_as_the_library_writes_it(date: datetime) -> None:
    assert date_header(date) == format_datetime(date)


def test_one_instant_in_two_zones_is_written_in_each_zone() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))

    assert date_header(NOW) == format_datetime(NOW)
    assert date_header(paris) == format_datetime(paris)  # not the UTC text made first
    assert date_header(paris) != date_header(NOW)
