from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.requests import Request

from services.ingest.credentials import (
    SOURCES,
    InboundRequest,
    auth_warnings,
    authenticate,
    credentials_for,
    known_secrets,
)
from shared.auth import check_bearer, is_loopback, secret_equals
from shared.errors import Forbidden, Unauthorized
from shared.redaction import redact_text
from shared.settings import Settings

NOW = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
BODY = b'{"receiver":"clarion","status":"firing","alerts":[]}'
REMOTE = "203.0.113.7"
BASIC_SOURCES = ("alertmanager", "grafana", "datadog", "generic", "sns")
TOKEN_SOURCES = ("alertmanager", "grafana", "datadog", "generic")
GRAFANA_SECRET = "grafana-hmac-secret"
# A key and signature published with the Standard Webhooks reference libraries.
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WHSEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
WHSEC_TS = 1614265330
WHSEC_BODY = b'{"test": 2432232314}'
WHSEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def inbound(
    headers: dict[str, str] | None = None, body: bytes = BODY, client: str | None = REMOTE
) -> InboundRequest:
    return InboundRequest(headers=headers or {}, body=body, client=client)


def check(
    source: str,
    config: Settings,
    request: InboundRequest,
    now: datetime = NOW,
    routing_key: str | None = None,
) -> str:
    return authenticate(
        source, credentials_for(config, source), request, now, routing_key=routing_key
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def grafana_headers(
    body: bytes = BODY, secret: str = GRAFANA_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Signed as Grafana signs: hex HMAC-SHA256 of the body, or of "timestamp:body"."""
    signed = body if timestamp is None else f"{timestamp}:".encode() + body
    headers = {
        "X-Grafana-Alerting-Signature": hmac.new(
            secret.encode(), signed, hashlib.sha256
        ).hexdigest()
    }
    if timestamp is not None:
        headers["X-Grafana-Alerting-Signature-Timestamp"] = str(timestamp)
    return headers


def webhook_headers(
    body: bytes = BODY, secret: str = WHSEC, timestamp: int | None = None, msg_id: str = "msg_1"
) -> dict[str, str]:
    """Signed as the Standard Webhooks spec says: base64 HMAC-SHA256 of "id.timestamp.body"."""
    ts = str(int(NOW.timestamp()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def epoch(delta: timedelta = timedelta()) -> int:
    return int((NOW + delta).timestamp())


# --- nothing configured: loopback only -------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("client", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_any_credentials_loopback_clients_are_served(source: str, client: str) -> None:
    assert check(source, settings(), inbound(client=client)) == "loopback"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    "client", [REMOTE, "10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "localhost", "", None]
)
def test_without_any_credentials_remote_clients_are_forbidden(
    source: str, client: str | None
) -> None:
    with pytest.raises(Forbidden, match="only from its own host"):
        check(source, settings(), inbound(bearer("anything"), client=client))


def test_once_credentials_exist_loopback_clients_need_them_too() -> None:
    with pytest.raises(Unauthorized):
        check("alertmanager", settings(ingest_token="t0ken"), inbound(client="127.0.0.1"))


def test_a_source_without_credentials_is_closed_while_others_have_some() -> None:
    config = settings(alertmanager_token="am-token")
    with pytest.raises(Forbidden, match="datadog"):
        check("datadog", config, inbound(bearer("am-token"), client="127.0.0.1"))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("128.0.0.1", False),
        ("::2", False),
        ("::ffff:192.0.2.1", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, expected: bool) -> None:
    assert is_loopback(host) is expected


# --- bearer tokens ----------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_the_ingest_token_works_for_every_source(source: str) -> None:
    assert check(source, settings(ingest_token="ingest-t0ken"), inbound(bearer("ingest-t0ken")))


@pytest.mark.parametrize("source", TOKEN_SOURCES)
def test_a_source_token_adds_to_the_ingest_token(source: str) -> None:
    config = settings(ingest_token="ingest-t0ken", **{f"{source}_token": "own-t0ken"})
    assert check(source, config, inbound(bearer("own-t0ken"))) == "bearer"
    assert check(source, config, inbound(bearer("ingest-t0ken"))) == "bearer"


@pytest.mark.parametrize("source", TOKEN_SOURCES)
def test_a_wrong_bearer_token_is_unauthorized(source: str) -> None:
    config = settings(**{f"{source}_token": "own-t0ken"})
    with pytest.raises(Unauthorized, match=r"wrong token \(Bearer\)") as caught:
        check(source, config, inbound(bearer("guess")))
    assert "own-t0ken" not in str(caught.value)
    assert "guess" not in str(caught.value)


@pytest.mark.parametrize("source", SOURCES)
def test_missing_credentials_are_unauthorized_with_both_challenges(source: str) -> None:
    with pytest.raises(Unauthorized, match="credentials are required") as caught:
        check(source, settings(ingest_token="ingest-t0ken"), inbound())
    schemes = [c.split()[0] for c in caught.value.challenges]
    assert schemes == ["Bearer", "Basic"]


def test_one_sources_token_does_not_open_another() -> None:
    config = settings(ingest_token="ingest-t0ken", alertmanager_token="am-t0ken")
    with pytest.raises(Unauthorized):
        check("grafana", config, inbound(bearer("am-t0ken")))


def test_the_scheme_name_is_case_insensitive_and_others_are_ignored() -> None:
    config = settings(ingest_token="ingest-t0ken")
    assert check("generic", config, inbound({"authorization": "bEaReR ingest-t0ken"}))
    with pytest.raises(Unauthorized, match="credentials are required"):
        check("generic", config, inbound({"Authorization": "Token ingest-t0ken"}))


# --- basic auth -------------------------------------------------------------------------


@pytest.mark.parametrize("source", BASIC_SOURCES)
def test_basic_auth_right_and_wrong(source: str) -> None:
    config = settings(**{f"{source}_basic_auth": "clarion:pa:ss word"})
    assert check(source, config, inbound(basic("clarion", "pa:ss word"))) == "basic"
    for user, password in [("clarion", "wrong"), ("other", "pa:ss word"), ("clarion", "")]:
        with pytest.raises(Unauthorized, match=r"wrong user or password \(Basic\)"):
            check(source, config, inbound(basic(user, password)))


def test_malformed_basic_credentials_are_unauthorized() -> None:
    config = settings(alertmanager_basic_auth="u:p")
    with pytest.raises(Unauthorized, match=r"malformed credentials \(Basic\)"):
        check("alertmanager", config, inbound({"Authorization": "Basic not base64!"}))


def test_the_ingest_token_is_not_a_basic_password() -> None:
    config = settings(ingest_token="ingest-t0ken")
    with pytest.raises(Unauthorized):
        check("sns", config, inbound(basic("any", "ingest-t0ken")))


def test_a_basic_auth_setting_without_a_colon_fails_early() -> None:
    with pytest.raises(ValueError, match="CLARION_SNS_BASIC_AUTH must be 'user:password'"):
        credentials_for(settings(sns_basic_auth="justapassword"), "sns")


def test_an_unknown_source_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown ingest source"):
        credentials_for(settings(), "nagios")


# --- Grafana HMAC -----------------------------------------------------------------------


def grafana_config(**values: Any) -> Settings:
    return settings(grafana_hmac_secret=GRAFANA_SECRET, **values)


def test_grafana_signature_of_the_body_alone() -> None:
    assert check("grafana", grafana_config(), inbound(grafana_headers())) == "grafana-hmac"


@pytest.mark.parametrize("skew", [timedelta(0), timedelta(minutes=-5), timedelta(minutes=5)])
def test_grafana_signature_with_a_timestamp(skew: timedelta) -> None:
    headers = grafana_headers(timestamp=epoch(skew))
    assert check("grafana", grafana_config(), inbound(headers)) == "grafana-hmac"


@pytest.mark.parametrize(
    "skew", [timedelta(minutes=-5, seconds=-1), timedelta(minutes=5, seconds=1)]
)
def test_grafana_timestamp_outside_five_minutes_is_unauthorized(skew: timedelta) -> None:
    with pytest.raises(Unauthorized, match="away from the server clock"):
        check("grafana", grafana_config(), inbound(grafana_headers(timestamp=epoch(skew))))


@pytest.mark.parametrize(
    "headers",
    [
        grafana_headers(secret="another-secret"),
        grafana_headers(body=b'{"status":"resolved"}'),
        {"X-Grafana-Alerting-Signature": "not-hex"},
        # A timestamped signature stripped of its timestamp no longer matches.
        {
            "X-Grafana-Alerting-Signature": grafana_headers(timestamp=epoch())[
                "X-Grafana-Alerting-Signature"
            ]
        },
    ],
    ids=["wrong-secret", "other-body", "garbage", "timestamp-removed"],
)
def test_a_wrong_grafana_signature_is_unauthorized(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized, match="Grafana signature does not match"):
        check("grafana", grafana_config(), inbound(headers))


def test_a_grafana_timestamp_must_be_unix_seconds() -> None:
    headers = grafana_headers(timestamp=epoch())
    headers["X-Grafana-Alerting-Signature-Timestamp"] = "2026-11-23T14:31:00Z"
    with pytest.raises(Unauthorized, match="not a Unix time"):
        check("grafana", grafana_config(), inbound(headers))


def test_grafana_alternative_header_names_are_accepted() -> None:
    ts = epoch()
    standard = grafana_headers(timestamp=ts)
    headers = {
        "x-grafana-alert-signature": standard["X-Grafana-Alerting-Signature"],
        "X-GRAFANA-ALERTING-TIMESTAMP": str(ts),
    }
    assert check("grafana", grafana_config(), inbound(headers)) == "grafana-hmac"


def test_a_valid_bearer_is_enough_even_with_a_bad_signature() -> None:
    config = grafana_config(ingest_token="ingest-t0ken")
    headers = {**grafana_headers(secret="stale-secret"), **bearer("ingest-t0ken")}
    assert check("grafana", config, inbound(headers)) == "bearer"


def test_with_an_hmac_secret_nothing_valid_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="credentials are required"):
        check("grafana", grafana_config(), inbound())
    with pytest.raises(Unauthorized, match=r"wrong token \(Bearer\); the Grafana signature"):
        check("grafana", grafana_config(), inbound({**bearer("x"), **grafana_headers(b"{}")}))


def test_grafana_signatures_mean_nothing_to_other_sources() -> None:
    config = grafana_config(alertmanager_token="am-t0ken")
    with pytest.raises(Unauthorized, match="credentials are required"):
        check("alertmanager", config, inbound(grafana_headers()))


# --- Standard Webhooks (generic source) -------------------------------------------------


def webhook_config(secret: str = WHSEC, **values: Any) -> Settings:
    return settings(generic_webhook_secret=secret, **values)


def test_the_published_standard_webhooks_example_verifies() -> None:
    headers = {
        "webhook-id": WHSEC_ID,
        "webhook-timestamp": str(WHSEC_TS),
        "webhook-signature": WHSEC_SIGNATURE,
    }
    now = datetime.fromtimestamp(WHSEC_TS, UTC)
    request = inbound(headers, body=WHSEC_BODY)
    assert check("generic", webhook_config(), request, now=now) == "standard-webhooks"


@pytest.mark.parametrize("secret", [WHSEC, WHSEC.removeprefix("whsec_")])
def test_standard_webhooks_valid_signature(secret: str) -> None:
    assert check("generic", webhook_config(secret), inbound(webhook_headers())) == (
        "standard-webhooks"
    )


def test_standard_webhooks_any_v1_entry_may_match() -> None:
    headers = webhook_headers()
    valid = headers["webhook-signature"]
    others = ["v1a,c2lnbmF0dXJl", "v1", "v1,!!!", "v2," + valid[3:], "v1," + "A" * 44]
    headers["webhook-signature"] = " ".join([*others, valid])
    assert check("generic", webhook_config(), inbound(headers)) == "standard-webhooks"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="}, "no v1 entry"),
        ({"webhook-id": "msg_2"}, "no v1 entry"),
        ({"webhook-id": ""}, "needs all of"),
        ({"webhook-timestamp": "soon"}, "not a Unix time"),
    ],
)
def test_standard_webhooks_invalid(change: dict[str, str], reason: str) -> None:
    headers = {**webhook_headers(), **change}
    with pytest.raises(Unauthorized, match=reason):
        check("generic", webhook_config(), inbound(headers))


def test_standard_webhooks_signature_over_another_body_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="no v1 entry"):
        check("generic", webhook_config(), inbound(webhook_headers(body=b"{}")))


@pytest.mark.parametrize(
    "skew", [timedelta(minutes=-5, seconds=-1), timedelta(minutes=5, seconds=1)]
)
def test_standard_webhooks_stale_or_future_is_unauthorized(skew: timedelta) -> None:
    headers = webhook_headers(timestamp=epoch(skew))
    with pytest.raises(Unauthorized, match="away from the server clock"):
        check("generic", webhook_config(), inbound(headers))


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("whsec_not*base64", "followed by base64"), ("whsec_c2hvcnQ=", "at least 24 bytes")],
)
def test_a_bad_webhook_secret_fails_early(secret: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"CLARION_GENERIC_WEBHOOK_SECRET: .*{reason}"):
        credentials_for(webhook_config(secret), "generic")


# --- PagerDuty routing keys -------------------------------------------------------------


def test_pagerduty_routing_keys() -> None:
    config = settings(pagerduty_routing_keys="R0UTING-A, R0UTING-B", ingest_token="ingest-t0ken")
    for key in ("R0UTING-A", "R0UTING-B", "ingest-t0ken"):
        assert check("pagerduty", config, inbound(), routing_key=key) == "routing-key"
    with pytest.raises(Unauthorized, match="routing key is not configured"):
        check("pagerduty", config, inbound(), routing_key="R0UTING-C")


def test_pagerduty_without_routing_keys_is_closed_while_others_have_credentials() -> None:
    config = settings(alertmanager_token="am-t0ken")
    with pytest.raises(Forbidden):
        check("pagerduty", config, inbound(), routing_key="am-t0ken")


# --- constant time, requests, warnings, secrets ----------------------------------------


def test_every_configured_token_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    config = settings(ingest_token="ingest-t0ken", datadog_token="dd-t0ken")

    assert check("datadog", config, inbound(bearer("ingest-t0ken"))) == "bearer"
    assert len(calls) == 2  # the first token matched, the second was still compared

    calls.clear()
    check("grafana", grafana_config(), inbound(grafana_headers()))
    assert len(calls) == 1


def test_secret_equals_hides_lengths_and_check_bearer_still_works() -> None:
    assert secret_equals("abc", b"abc")
    assert not secret_equals("abc", "abcd")
    check_bearer("Bearer ops", settings(ops_token="ops").ops_token)
    with pytest.raises(Unauthorized) as caught:
        check_bearer("Bearer nope", settings(ops_token="ops").ops_token)
    assert caught.value.challenges == ("Bearer",)


def test_inbound_request_headers_are_case_insensitive_first_wins() -> None:
    request = InboundRequest(
        headers={"X-Custom": "first", "x-custom": "second"}, body=b"", client=None
    )
    assert request.header("X-CUSTOM") == "first"
    assert request.header("missing") is None


def test_inbound_request_from_a_starlette_request() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"authorization", b"Bearer t"), (b"webhook-id", b"msg_1")],
        "client": ("::1", 5000),
    }
    request = InboundRequest.from_request(Request(scope), b"{}")
    assert request.header("Authorization") == "Bearer t"
    assert request.client == "::1"
    assert request.body == b"{}"


def test_auth_warnings() -> None:
    assert "only requests from this host" in auth_warnings(settings())[0]
    assert auth_warnings(settings(ingest_token="t")) == []
    closed = auth_warnings(settings(alertmanager_token="t"))
    assert len(closed) == len(SOURCES) - 1
    assert any("CLARION_PAGERDUTY_ROUTING_KEYS" in line for line in closed)
    assert not any("alertmanager" in line for line in closed)


def test_known_secrets_lists_every_configured_secret() -> None:
    config = settings(
        ingest_token="it",
        sns_basic_auth="user:pw",
        grafana_hmac_secret="hm",
        generic_webhook_secret=WHSEC,
        pagerduty_routing_keys="rk",
    )
    expected = {"it", "user:pw", "pw", "hm", "rk", WHSEC, WHSEC.removeprefix("whsec_")}
    assert set(known_secrets(config)) == expected


def test_credentials_do_not_print_their_secrets() -> None:
    creds = credentials_for(
        settings(ingest_token="ingest-t0ken", generic_webhook_secret=WHSEC), "generic"
    )
    assert "ingest-t0ken" not in repr(creds)
    assert "MfKQ9r8" not in repr(creds)


def test_failure_messages_survive_log_redaction_unchanged() -> None:
    config = grafana_config(ingest_token="ingest-t0ken", alertmanager_basic_auth="u:p")
    attempts = [
        ("grafana", inbound()),
        ("grafana", inbound({**bearer("x"), **grafana_headers(b"{}")})),
        ("alertmanager", inbound(basic("u", "wrong"))),
        ("alertmanager", inbound({"Authorization": "Basic !"})),
    ]
    for source, request in attempts:
        with pytest.raises(Unauthorized) as caught:
            check(source, config, request)
        assert redact_text(str(caught.value)) == str(caught.value)
