"""The incident email without a server: its parts, its headers, unsubscribe tokens, SMTP errors."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import aiosmtplib
import pytest

from services.dispatcher.channels.email import classify_smtp_error
from services.dispatcher.channels.email_message import (
    InvalidRecipient,
    compose,
    message_id_for,
    sender_domain,
    thread_root_id,
)
from services.dispatcher.channels.outcome import Permanent, Retryable
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.unsubscribe import (
    unsubscribe_token,
    unsubscribe_url,
    verify_unsubscribe_token,
)
from shared.plan import ChannelName
from tests.support.builders import make_delivery

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
FROM = "Example Status <status@example.com>"
SECRET = "unsubscribe-secret-for-tests"
LINK = "https://status.example.com/unsubscribe?token=abc"
MESSAGE = RenderedMessage(
    ChannelName.EMAIL, title="Investigating: Checkout", text="plain body\n", html="<p>html</p>"
)


def test_the_email_is_text_then_html_with_every_header() -> None:
    delivery = make_delivery(delivery_id="abc123", incident_id="inc-7")

    email = compose(MESSAGE, "alice@example.com", delivery, email_from=FROM, now=NOW).mime()

    assert email.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in email.iter_parts()] == ["text/plain", "text/html"]
    text, html = email.iter_parts()
    assert text.get_content() == "plain body\n"
    assert html.get_content().strip() == "<p>html</p>"
    assert email["From"] == FROM
    assert email["To"] == "alice@example.com"
    assert email["Subject"] == "Investigating: Checkout"
    assert email["Date"] == "Mon, 23 Nov 2026 14:30:00 +0000"
    assert email["Message-ID"] == "<abc123@example.com>"
    assert email["In-Reply-To"] == "<incident-inc-7@example.com>"
    assert email["References"] == "<incident-inc-7@example.com>"
    assert email["Auto-Submitted"] == "auto-generated"
    assert email["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert email["X-Clarion-Incident"] == "inc-7"


def test_a_text_only_message_is_not_multipart() -> None:
    text_only = RenderedMessage(ChannelName.EMAIL, title="s", text="plain")

    email = compose(text_only, "a@example.com", make_delivery(), email_from=FROM, now=NOW).mime()

    assert email.get_content_type() == "text/plain"
    assert email.get_content().strip() == "plain"


def test_message_ids_follow_the_delivery_and_thread_ids_the_incident() -> None:
    d1 = make_delivery(delivery_id="d1", incident_id="inc-1", event_id="ev-opened")
    d2 = make_delivery(delivery_id="d2", incident_id="inc-1", event_id="ev-resolved")

    assert message_id_for(d1, FROM) == "<d1@example.com>"
    assert message_id_for(d1, FROM) == message_id_for(d1, FROM)
    assert message_id_for(d1, "no address") == "<d1@clarion.invalid>"
    assert message_id_for(d1, FROM) != message_id_for(d2, FROM)
    first = compose(MESSAGE, "a@example.com", d1, email_from=FROM, now=NOW)
    second = compose(MESSAGE, "a@example.com", d2, email_from=FROM, now=NOW)
    assert first.header_map["References"] == second.header_map["References"]
    assert thread_root_id("inc-1", FROM) != thread_root_id("inc-2", FROM)


def test_an_incident_id_unfit_for_a_message_id_is_hashed_the_same_way_every_time() -> None:
    root = thread_root_id("inc 1 <odd>", FROM)

    assert root == thread_root_id("inc 1 <odd>", FROM)
    assert root.startswith("<incident-")
    assert root.endswith("@example.com>")
    assert " " not in root
    assert "<odd>" not in root


def test_sender_domain_falls_back_when_from_has_no_usable_domain() -> None:
    assert sender_domain("Status <Status@Example.COM>") == "example.com"
    assert sender_domain("status@") == "clarion.invalid"
    assert sender_domain("status@bad!domain") == "clarion.invalid"


def test_subscriber_mail_gets_one_click_unsubscribe_and_bulk_precedence() -> None:
    delivery = make_delivery(public=True)

    email = compose(
        MESSAGE, "alice@example.com", delivery, email_from=FROM, now=NOW, unsubscribe_link=LINK
    )

    headers = email.mime()
    assert headers["List-Unsubscribe"] == f"<{LINK}>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["Precedence"] == "bulk"
    assert email.unsubscribe_url == LINK


def test_a_plain_http_link_gets_no_one_click_post() -> None:
    """RFC 8058 one-click needs HTTPS; the built-in page on loopback is plain HTTP."""
    link = "http://127.0.0.1:8001/status/unsubscribe?token=abc"

    email = compose(
        MESSAGE,
        "alice@example.com",
        make_delivery(public=True),
        email_from=FROM,
        now=NOW,
        unsubscribe_link=link,
    ).mime()

    assert email["List-Unsubscribe"] == f"<{link}>"
    assert email["List-Unsubscribe-Post"] is None


def test_internal_mail_has_no_list_headers_even_when_given_a_link() -> None:
    email = compose(
        MESSAGE,
        "oncall@example.com",
        make_delivery(public=False, audience="oncall"),
        email_from=FROM,
        now=NOW,
        unsubscribe_link=LINK,
    ).mime()

    assert email["List-Unsubscribe"] is None
    assert email["List-Unsubscribe-Post"] is None
    assert email["Precedence"] is None
    assert email["Auto-Submitted"] == "auto-generated"


def test_a_subject_cannot_inject_headers() -> None:
    sneaky = RenderedMessage(ChannelName.EMAIL, title="Down\r\nBcc: x@evil.example", text="t")

    email = compose(sneaky, "a@example.com", make_delivery(), email_from=FROM, now=NOW).mime()

    assert email["Bcc"] is None
    assert email["Subject"] == "Down Bcc: x@evil.example"


@pytest.mark.parametrize(
    "recipient",
    ["", "not an address", "alice@", "@example.com", "a@b@example.com", "a@example.com\r\nBcc: x"],
)
def test_an_unusable_recipient_is_refused_without_being_named(recipient: str) -> None:
    with pytest.raises(InvalidRecipient) as raised:
        compose(MESSAGE, recipient, make_delivery(), email_from=FROM, now=NOW)

    assert "@" not in str(raised.value)


# Unsubscribe tokens


def test_a_token_names_its_address_for_the_secret_that_made_it() -> None:
    token = unsubscribe_token(SECRET, "alice@example.com")

    assert verify_unsubscribe_token(SECRET, token) == "alice@example.com"
    assert verify_unsubscribe_token(SECRET.encode(), token) == "alice@example.com"
    assert verify_unsubscribe_token("another secret", token) is None
    assert token == unsubscribe_token(SECRET, "alice@example.com")
    assert token != unsubscribe_token(SECRET, "bob@example.com")
    assert SECRET not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_a_tampered_token_does_not_verify() -> None:
    token = unsubscribe_token(SECRET, "alice@example.com")
    address_part, mac_part = token.split(".")
    bob = base64.urlsafe_b64encode(b"bob@example.com").rstrip(b"=").decode()
    flipped = mac_part[:-2] + ("A" if mac_part[-2] != "A" else "B") + mac_part[-1]

    assert verify_unsubscribe_token(SECRET, f"{bob}.{mac_part}") is None
    assert verify_unsubscribe_token(SECRET, f"{address_part}.{flipped}") is None
    assert verify_unsubscribe_token(SECRET, f"{address_part}.{mac_part[:-4]}") is None
    assert verify_unsubscribe_token(SECRET, address_part) is None
    assert verify_unsubscribe_token(SECRET, f"{address_part}.{mac_part}=") is None
    assert verify_unsubscribe_token(SECRET, f"{address_part}.{mac_part}!") is None
    assert verify_unsubscribe_token(SECRET, "") is None
    assert verify_unsubscribe_token(SECRET, "." * 5000) is None
    assert verify_unsubscribe_token("", token) is None


def test_a_token_cannot_be_made_without_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        unsubscribe_token("", "alice@example.com")


def test_the_unsubscribe_url_sits_under_the_follow_url() -> None:
    token = unsubscribe_token(SECRET, "alice@example.com")

    url = unsubscribe_url("https://status.example.com/", token)
    with_query = unsubscribe_url("https://example.com/status?lang=en", token)

    assert url == f"https://status.example.com/unsubscribe?token={token}"
    parts = urlsplit(with_query)
    assert parts.path == "/status/unsubscribe"
    assert parse_qs(parts.query) == {"lang": ["en"], "token": [token]}


# SMTP errors


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (aiosmtplib.SMTPDataError(550, "rejected"), Permanent),
        (aiosmtplib.SMTPDataError(451, "try later"), Retryable),
        (aiosmtplib.SMTPSenderRefused(553, "no", "status@example.com"), Permanent),
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), Permanent),
        (aiosmtplib.SMTPAuthenticationError(454, "try again"), Retryable),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(550, "no such user", "a@example.com")]
            ),
            Permanent,
        ),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(450, "mailbox busy", "a@example.com")]
            ),
            Retryable,
        ),
        (aiosmtplib.SMTPConnectError("refused"), Retryable),
        (aiosmtplib.SMTPServerDisconnected("gone"), Retryable),
        (aiosmtplib.SMTPReadTimeoutError("slow"), Retryable),
        (ConnectionRefusedError(111, "refused"), Retryable),
        (aiosmtplib.SMTPNotSupported("no STARTTLS"), Permanent),
        (aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server."), Permanent),
    ],
)
def test_smtp_errors_are_classified(error: Exception, kind: type) -> None:
    assert isinstance(classify_smtp_error(error), kind)


def test_smtp_errors_never_carry_the_address_or_the_password() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(
                550, "5.1.1 <alice@example.com>: Recipient address rejected", "alice@example.com"
            )
        ]
    )
    auth = aiosmtplib.SMTPAuthenticationError(535, "credentials hunter2-pw rejected")

    refused_outcome = classify_smtp_error(refused)
    auth_outcome = classify_smtp_error(auth, secrets=["hunter2-pw"])

    assert isinstance(refused_outcome, Permanent)
    assert "550" in refused_outcome.error
    assert "alice@example.com" not in refused_outcome.error
    assert isinstance(auth_outcome, Permanent)
    assert "535" in auth_outcome.error
    assert "hunter2-pw" not in auth_outcome.error
