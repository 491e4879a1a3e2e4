"""Building the email and classifying SMTP errors, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import aiosmtplib
import pytest

from services.dispatcher.channels.email import build_email, classify_smtp_error, message_id_for
from services.dispatcher.channels.outcome import Permanent, Retryable
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import ManualClock
from shared.plan import ChannelName
from shared.settings import Settings
from tests.support.builders import make_delivery

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SETTINGS = Settings(_env_file=None, email_from="Example Status <status@example.com>")


MESSAGE = RenderedMessage(
    ChannelName.EMAIL, title="Investigating: Checkout", text="plain body", html="<p>html</p>"
)


def test_email_is_multipart_text_and_html_with_headers() -> None:
    delivery = make_delivery(delivery_id="abc123")

    email = build_email(MESSAGE, "alice@example.com", delivery, SETTINGS, ManualClock(NOW))

    assert email.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in email.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert email["From"] == "Example Status <status@example.com>"
    assert email["To"] == "alice@example.com"
    assert email["Subject"] == "Investigating: Checkout"
    assert email["Date"] == "Mon, 23 Nov 2026 14:30:00 +0000"
    assert email["Message-ID"] == "<abc123@example.com>"
    assert email["Auto-Submitted"] == "auto-generated"
    assert email["X-Clarion-Incident"] == "inc-1"
    text, html = email.iter_parts()
    assert text.get_content().strip() == "plain body"
    assert html.get_content().strip() == "<p>html</p>"


def test_text_only_message_is_not_multipart() -> None:
    text_only = RenderedMessage(ChannelName.EMAIL, title="s", text="plain")
    email = build_email(text_only, "a@example.com", make_delivery(), SETTINGS, ManualClock(NOW))
    assert email.get_content_type() == "text/plain"


def test_message_id_is_derived_from_the_delivery() -> None:
    d1, d2 = make_delivery(delivery_id="d1"), make_delivery(delivery_id="d2")

    assert message_id_for(d1, SETTINGS.email_from) == "<d1@example.com>"
    assert message_id_for(d1, "no address") == "<d1@clarion.invalid>"
    assert message_id_for(d1, SETTINGS.email_from) != message_id_for(d2, SETTINGS.email_from)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (aiosmtplib.SMTPDataError(550, "rejected"), Permanent),
        (aiosmtplib.SMTPDataError(451, "try later"), Retryable),
        (aiosmtplib.SMTPSenderRefused(553, "no", "status@example.com"), Permanent),
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
    ],
)
def test_smtp_errors_are_classified(error: Exception, kind: type) -> None:
    assert isinstance(classify_smtp_error(error), kind)
