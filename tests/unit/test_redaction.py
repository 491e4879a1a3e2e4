from __future__ import annotations

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from shared.logs import redact_processor
from shared.redaction import REDACTED, mask_recipient, redact_text, redact_value


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("mail alice.smith@example.com now", "alice.smith@example.com"),
        ("call +1 (555) 123-4567 please", "555) 123"),
        ("sms to +447700900123", "+447700900123"),
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ("redis://user:hunter2@redis:6379/0", "hunter2"),
    ],
)
def test_redact_text_removes_personal_data_and_secrets(text: str, leak: str) -> None:
    assert leak not in redact_text(text)


def test_redact_text_keeps_dates_times_and_ordinary_words() -> None:
    text = "incident opened 2026-11-23T14:30:24Z on checkout-1:8080, 12.3% errors"
    assert redact_text(text) == text


def test_masked_recipients_stay_distinguishable() -> None:
    assert mask_recipient("alice@example.com") == "a***@example.com"
    assert mask_recipient("+15551234567").endswith("4567")
    assert "555123" not in mask_recipient("+15551234567")
    assert mask_recipient("status-page") == "status-page"


def test_secret_named_keys_lose_their_values_recursively() -> None:
    value = {"smtp": {"password": "hunter2", "host": "mail"}, "tokens": ["x"], "api_key": "k"}
    assert redact_value(value) == {
        "smtp": {"password": REDACTED, "host": "mail"},
        "tokens": REDACTED,
        "api_key": REDACTED,
    }


def test_log_processor_redacts_every_event() -> None:
    with structlog.testing.capture_logs(processors=[redact_processor]) as logs:
        structlog.get_logger().info(
            "sending", recipient="bob@example.org", ingest_token="s3cret", entry_id="1732-0"
        )
    (event,) = logs
    assert event["recipient"] == "b***@example.org"
    assert event["ingest_token"] == REDACTED
    assert event["entry_id"] == "1732-0"


@given(
    st.from_regex(r"[a-z]{1,12}@[a-z]{1,10}\.(com|org|net)", fullmatch=True),
    st.text(alphabet=st.characters(categories=("L", "Zs")), max_size=30),
)
def test_no_email_address_survives_redaction(address: str, noise: str) -> None:
    local = address.split("@", maxsplit=1)[0]
    redacted = redact_text(f"{noise} {address} {noise}")
    assert address not in redacted or len(local) == 1


def test_identifiers_that_look_personal_are_kept() -> None:
    with structlog.testing.capture_logs(processors=[redact_processor]) as logs:
        structlog.get_logger().info(
            "sent",
            provider_message_id="<e922743c@clarion.invalid>",
            consumer="host-12345-ab7346",
            recipient="carol@example.net",
        )
    (event,) = logs
    assert event["provider_message_id"] == "<e922743c@clarion.invalid>"
    assert event["consumer"] == "host-12345-ab7346"
    assert event["recipient"] == "c***@example.net"
