"""Scenario: every source parser, and every webhook route, against arbitrary and spoiled JSON.

The unit tests fuzz each parser's top-level fields; here every source is read the way
ingest reads it (validate, parse, group, serialize for the store), starting from its
real documented payloads spoiled at any depth, and the same bodies go through the real
routes. A body is handled when it parses or is refused with the source's declared error
(a 4xx); anything else escaping is a crash (a 500).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.body import parse_json
from shared.errors import MalformedBody
from shared.settings import Settings
from tests.reliability.hostile import (
    BY_NAME,
    SOURCES,
    Source,
    Tally,
    hostile_settings,
    ingest_served,
    json_text,
    odd_values,
    parse_or_refuse,
    post_document,
    spoiled_payloads,
    with_lone_surrogates,
)
from tests.reliability.scale import report, sized
from tests.support.ingest_requests import sns_time
from tests.support.signing_certs import FakeSnsHost, serving_fake_sns_host, signing_identity

pytestmark = pytest.mark.integration

TOKEN: Final = "fuzz-ingest-t0ken"
ROUTING_KEY: Final = "samplekeyhere"  # the PagerDuty fixtures' routing_key

SOURCE_NAMES: Final = [source.name for source in SOURCES]


# --- the parsers, as functions ------------------------------------------------------------


def test_any_json_is_parsed_or_refused_by_every_source() -> None:
    tally = Tally()
    per_source: dict[str, int] = dict.fromkeys(BY_NAME, 0)

    @hostile_settings(max_examples=sized(500, 20000))
    @given(st.sampled_from(SOURCES), odd_values())
    def feed(source: Source, value: Any) -> None:
        per_source[source.name] += 1
        parse_or_refuse(source, value, tally)

    feed()

    outcome = report(tally.outcome("fuzz: any JSON into every parser"))
    assert all(per_source.values()), per_source  # every source was tried
    assert outcome.lost == 0, outcome.notes


def test_spoiled_real_payloads_are_parsed_or_refused() -> None:
    tally = Tally()
    per_source: dict[str, int] = dict.fromkeys(BY_NAME, 0)

    @hostile_settings(max_examples=sized(400, 15000))
    @given(spoiled_payloads())
    def feed(case: tuple[Source, Any]) -> None:
        source, body = case
        per_source[source.name] += 1
        parse_or_refuse(source, body, tally)

    feed()

    outcome = report(tally.outcome("fuzz: spoiled real payloads into every parser"))
    assert all(per_source.values()), per_source  # every source was tried
    assert outcome.lost == 0, outcome.notes


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_lone_surrogate_anywhere_is_parsed_or_refused(name: str) -> None:
    """As ingest reads a body: ``parse_json`` refuses a lone surrogate before any parser."""
    source = BY_NAME[name]
    tally = Tally()

    for seed in source.seeds():
        for _path, body in with_lone_surrogates(seed):
            try:
                data = parse_json(json.dumps(body).encode())
            except MalformedBody:
                tally.ok()
                continue
            parse_or_refuse(source, data, tally)

    outcome = report(tally.outcome(f"fuzz: lone surrogates into the {name} parser"))
    assert outcome.sent > 0
    assert outcome.lost == 0, outcome.notes


# --- the routes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedIngest:
    url: str
    sns_host: FakeSnsHost


@pytest.fixture(scope="module")
def ingest(redis_url: str, test_plan_path: Path) -> Iterator[ServedIngest]:
    """One ingest for the module, every source open to the token. SNS certificates come
    only from a fake AWS host on loopback: nothing is ever fetched from the network."""
    identity = signing_identity(datetime.now(UTC))
    with serving_fake_sns_host(identity) as sns_host:
        settings = Settings(
            _env_file=None,
            redis_url=redis_url,
            plan=test_plan_path,
            ingest_token=TOKEN,
            pagerduty_routing_keys=ROUTING_KEY,
            ingest_rate_limit="1000000/second",
            sns_cert_url_pattern=sns_host.url_pattern,
            log_format="json",
        )
        with ingest_served(settings) as url:
            yield ServedIngest(url, sns_host)


def answered(status: int | str) -> bool:
    """2xx (accepted) or 4xx (refused, saying why): never a 5xx, a redirect or a reset."""
    return isinstance(status, int) and (200 <= status < 300 or 400 <= status < 500)


def post_status(client: httpx.Client, url: str, body: Any) -> int | str:
    """The status ``body`` is answered with, or the transport error when there is none.

    A server that crashed on the previous request may have dropped the pooled
    connection: one retry on a fresh one, so each failure is charged to its own body.
    """
    for attempt in (1, 2):
        try:
            return post_document(client, url, body, Authorization=f"Bearer {TOKEN}").status_code
        except httpx.TransportError as exc:
            if attempt == 2:
                return f"{type(exc).__name__}: {exc}"
    raise AssertionError("unreachable")


def test_any_json_through_every_route_gets_a_2xx_or_a_4xx(ingest: ServedIngest) -> None:
    tally = Tally()
    arbitrary = st.tuples(st.sampled_from(SOURCES), odd_values())

    with httpx.Client(base_url=ingest.url, timeout=30.0) as client:

        @hostile_settings(max_examples=sized(200, 5000))
        @given(st.one_of(arbitrary, spoiled_payloads()))
        def feed(case: tuple[Source, Any]) -> None:
            source, body = case
            status = post_status(client, source.url, body)
            if answered(status):
                tally.ok()
            else:
                tally.bad(f"{source.name}: {status} <- {json_text(body)[:120]}")

        feed()

    outcome = report(tally.outcome("fuzz: any JSON through every webhook route"))
    assert outcome.lost == 0, outcome.notes


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_lone_surrogate_anywhere_through_the_route_gets_a_4xx(
    name: str, ingest: ServedIngest
) -> None:
    source = BY_NAME[name]
    tally = Tally()
    seeds = source.seeds()[: sized(1, 100)]
    if name == "sns":
        # SNS checks the certificate URL and the age first: point the messages at the fake
        # AWS host, fresh, so the body reaches the signature check, as an attacker's can.
        fresh = {
            "SigningCertURL": ingest.sns_host.url("/cert.pem"),
            "Timestamp": sns_time(datetime.now(UTC) - timedelta(seconds=5)),
        }
        seeds = [{**seed, **fresh} for seed in seeds]

    with httpx.Client(base_url=ingest.url, timeout=30.0) as client:
        for seed in seeds:
            for path, body in with_lone_surrogates(seed):
                status = post_status(client, source.url, body)
                if answered(status):
                    tally.ok()
                else:
                    tally.bad(f"{path}: {status}")

    outcome = report(tally.outcome(f"fuzz: lone surrogates through the {name} route"))
    assert outcome.sent > 0
    assert outcome.lost == 0, outcome.notes
