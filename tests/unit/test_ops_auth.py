"""Ops page sessions, CSRF tokens, redirects after sign-in and the loopback rule: pure parts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.dispatcher.ops_auth import (
    SESSION_LIFETIME,
    csrf_token_for,
    issue_session,
    safe_next,
    session_valid,
)
from shared.auth import is_loopback

KEY = b"the-ops-token"
NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def test_a_session_is_valid_with_its_key_until_it_expires() -> None:
    session = issue_session(KEY, NOW)

    assert session_valid(KEY, session, NOW)
    assert session_valid(KEY, session, NOW + SESSION_LIFETIME - timedelta(seconds=1))
    assert not session_valid(KEY, session, NOW + SESSION_LIFETIME)
    assert not session_valid(b"another-token", session, NOW)  # a new token ends every session


def test_the_session_is_not_the_token_and_does_not_contain_it() -> None:
    session = issue_session(KEY, NOW)

    assert KEY.decode() not in session
    assert session.startswith("v1.")


def test_each_session_is_different() -> None:
    assert issue_session(KEY, NOW) != issue_session(KEY, NOW)


def test_a_session_issued_in_the_future_is_refused_beyond_the_clock_skew() -> None:
    ahead = issue_session(KEY, NOW + timedelta(seconds=30))
    far_ahead = issue_session(KEY, NOW + timedelta(hours=1))

    assert session_valid(KEY, ahead, NOW)
    assert not session_valid(KEY, far_ahead, NOW)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"), id="mac"),
        pytest.param(
            lambda s: s.replace(s.split(".")[1], str(int(s.split(".")[1]) - 60)), id="time"
        ),
        pytest.param(lambda s: s.replace(s.split(".")[2], "x" * 22), id="nonce"),
        pytest.param(lambda s: "v2" + s[2:], id="version"),
        pytest.param(lambda s: s + ".", id="shape"),
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: KEY.decode(), id="the-token-itself"),
    ],
)
def test_a_tampered_session_is_refused(tamper: Callable[[str], str]) -> None:
    session = issue_session(KEY, NOW)
    assert session_valid(KEY, session, NOW)
    assert not session_valid(KEY, tamper(session), NOW)


def test_a_csrf_token_is_bound_to_its_session_and_key() -> None:
    first, second = issue_session(KEY, NOW), issue_session(KEY, NOW)

    token = csrf_token_for(KEY, first)
    assert token == csrf_token_for(KEY, first)
    assert token != csrf_token_for(KEY, second)
    assert token != csrf_token_for(b"another-key", first)
    assert first not in token


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ops/deliveries?status=sent&channel=email", "/ops/deliveries?status=sent&channel=email"),
        ("/ops", "/ops"),
        ("/ops/incidents/inc-1", "/ops/incidents/inc-1"),
        (None, "/ops"),
        ("", "/ops"),
        ("https://evil.example/ops", "/ops"),
        ("//evil.example/ops", "/ops"),
        ("/\\evil.example", "/ops"),
        ("\\\\evil.example/ops", "/ops"),
        ("javascript:alert(1)", "/ops"),
        ("/status", "/ops"),
        ("/opsevil", "/ops"),
        ("/ops/../status", "/ops"),
        ("/ops/\r\nSet-Cookie: x=1", "/ops"),
        ("ops/deliveries", "/ops"),
    ],
)
def test_after_signing_in_only_local_ops_paths_are_followed(
    target: str | None, expected: str
) -> None:
    assert safe_next(target) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("203.0.113.9", False),
        ("::ffff:203.0.113.9", False),
        ("testclient", False),
        ("localhost", False),  # a name is not an address: the peer address is what counts
        ("", False),
        (None, False),
    ],
)
def test_loopback_clients(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback
