"""Hostile input for the reliability suite: every source read the way ingest reads it,
real payloads to start from, ways to spoil them, and ingest served to hostile clients.

A source's *declared* errors are what its route turns into a 4xx: pydantic's
``ValidationError`` (a 422, or PagerDuty's 400) and :class:`InvalidPayload`. Anything
else escaping a parser would be a 500.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from services.ingest.app import create_app
from services.ingest.grouping import group_alerts
from services.ingest.openapi_docs import sample
from services.ingest.sources import alertmanager, datadog, generic, grafana, pagerduty, sns
from services.ingest.sources.sns import SnsNotification
from shared.contracts import Alert
from shared.errors import InvalidPayload
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.reliability.scale import Outcome
from tests.support.asgi import serving_in_thread
from tests.support.strategies import json_values

DECLARED_ERRORS: Final = (ValidationError, InvalidPayload)
"""What a source may raise for a bad body: the route answers it with a 4xx."""

JsonPath = tuple[str | int, ...]
"""Where a value sits inside a JSON document: keys and list indexes."""

LONE_SURROGATE: Final = "db-\udfff-1"
"""Text JSON can carry (``"\\udfff"``) that is not Unicode: it cannot be encoded as UTF-8."""


def hostile_settings(**overrides: Any) -> settings:
    """Hypothesis settings for a bounded, repeatable hostile run (never shrinks: we count)."""
    values: dict[str, Any] = {
        "derandomize": True,
        "database": None,
        "deadline": None,
        "print_blob": False,
        "suppress_health_check": list(HealthCheck),
    }
    return settings(**(values | overrides))


# --- the sources, read as ingest reads them -----------------------------------------------


def _batch(
    model: type[BaseModel], parse: Callable[[Any], list[Alert]]
) -> Callable[[Any], list[Alert]]:
    def read(data: Any) -> list[Alert]:
        return parse(model.model_validate(data))

    return read


def _read_pagerduty(data: Any) -> list[Alert]:
    event = pagerduty.PagerDutyEvent.model_validate(data)
    pagerduty.dedup_key_of(event)
    pagerduty.group_key_of(event)
    return [] if pagerduty.is_acknowledge(event) else pagerduty.parse(event)


def _read_sns(data: Any) -> list[Alert]:
    message = sns.message_from(data)
    return sns.parse(message) if isinstance(message, SnsNotification) else []


@dataclass(frozen=True)
class Source:
    """One monitoring source: its route, real bodies to start from, and its parser."""

    name: str
    url: str
    parse: Callable[[Any], list[Alert]]
    fixtures: tuple[str, ...] = ()
    samples: tuple[str, ...] = ()

    def seeds(self) -> list[Any]:
        """Real bodies: ingest's shipped samples, then the documented fixtures (tests/fixtures)."""
        shipped = [sample(name) for name in self.samples]
        return shipped + [load_fixture(name) for name in self.fixtures]

    def read(self, data: Any) -> list[Alert]:
        """Validate and parse ``data`` as the route does, then group and serialize the
        alerts as the store will; raises one of :data:`DECLARED_ERRORS` for a bad body."""
        alerts = self.parse(data)
        group_alerts(alerts)
        for alert in alerts:
            alert.model_dump_json()
        return alerts


SOURCES: Final = (
    Source(
        "alertmanager",
        "/v1/alerts/alertmanager",
        _batch(alertmanager.AlertmanagerWebhook, alertmanager.parse),
        fixtures=(
            "alertmanager_webhook_v4_firing.json",
            "alertmanager_webhook_v4_firing_single.json",
            "alertmanager_webhook_v4_resolved.json",
        ),
    ),
    Source(
        "grafana",
        "/v1/alerts/grafana",
        _batch(grafana.GrafanaWebhook, grafana.parse),
        fixtures=("grafana_webhook_v1_firing.json",),
    ),
    Source(
        "datadog",
        "/v1/alerts/datadog",
        _batch(datadog.DatadogWebhook, datadog.parse),
        fixtures=("datadog_webhook_default_payload_template.json",),
        samples=("datadog_triggered.json",),
    ),
    Source(
        "pagerduty",
        "/v2/enqueue",
        _read_pagerduty,
        fixtures=(
            "pagerduty_events_v2_trigger_devdocs.json",
            "pagerduty_events_v2_acknowledge.json",
            "pagerduty_events_v2_resolve.json",
        ),
    ),
    Source(
        "generic",
        "/v1/alerts/generic",
        _batch(generic.GenericWebhook, generic.parse),
        fixtures=("generic_alert_v1_firing.json", "generic_alert_v1_resolved.json"),
    ),
    Source(
        "sns",
        "/v1/alerts/sns",
        _read_sns,
        fixtures=(
            "aws_sns_http_notification.json",
            "aws_sns_http_subscription_confirmation.json",
        ),
        samples=("sns_notification.json",),
    ),
)
BY_NAME: Final = {source.name: source for source in SOURCES}


@dataclass
class Tally:
    """Cases tried and mishandled, with the first few mishandled kept to show."""

    sent: int = 0
    mishandled: int = 0
    examples: list[str] = field(default_factory=list)

    def ok(self) -> None:
        self.sent += 1

    def bad(self, what: str) -> None:
        self.sent += 1
        self.mishandled += 1
        if len(self.examples) < 3:
            self.examples.append(what[:300])

    def outcome(self, scenario: str, *notes: str) -> Outcome:
        shown = [*notes, *self.examples]
        return Outcome(
            scenario,
            sent=self.sent,
            delivered=self.sent - self.mishandled,
            lost=self.mishandled,
            notes=shown,
        )


def parse_or_refuse(source: Source, data: Any, tally: Tally) -> None:
    """Count ``data`` as handled when the source parses it or refuses it as declared."""
    try:
        source.read(data)
    except DECLARED_ERRORS:
        tally.ok()
    except Exception as exc:  # anything else would be a 500: the point of counting
        tally.bad(f"{source.name}: {type(exc).__name__}: {exc} <- {json_text(data)[:150]}")
    else:
        tally.ok()


# --- documents and their spoiling ---------------------------------------------------------


def json_text(value: Any) -> str:
    """``value`` as the JSON text a sender would post (``NaN`` and lone surrogates escaped)."""
    return json.dumps(value, allow_nan=True)


def paths(value: Any, *, strings_only: bool = False, prefix: JsonPath = ()) -> list[JsonPath]:
    """Every path inside ``value`` (not the root), parents before children."""
    found: list[JsonPath] = []
    items: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        here = (*prefix, key)
        if not strings_only or isinstance(child, str):
            found.append(here)
        found += paths(child, strings_only=strings_only, prefix=here)
    return found


DROP: Final = object()
"""A replacement that removes the key (or list item) instead."""


def replaced(document: Any, changes: Sequence[tuple[JsonPath, Any]]) -> Any:
    """A deep copy of ``document`` with each path set to its new value (or dropped)."""
    result = copy.deepcopy(document)
    for path, new in changes:
        parent = result
        try:
            for key in path[:-1]:
                parent = parent[key]
            if new is DROP:
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(new)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or retyped the parent
    return result


ODD_VALUES: Final[tuple[Any, ...]] = (
    "",
    " ",
    "x" * 5000,
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-02-30T25:61:00Z",
    "1763908260000",
    "-1",
    "$ALERT_ID",
    "[P0] [Triggered on {a:b] x",
    "severity: SEV0 [critical]",
    "\u202e\u0000\ufeff",
    "😀" * 100,
    2**64,
    -(2**63),
    1e308,
    -0.0,
    float("inf"),
    float("nan"),
    True,
    None,
    [],
    {},
    [None],
    {"": None},
)


def odd_values() -> st.SearchStrategy[Any]:
    """Any JSON, or a value picked to trip a parser (zero times, huge numbers, NaN...)."""
    return st.one_of(json_values, st.sampled_from(ODD_VALUES))


def spoiled(seed: Any) -> st.SearchStrategy[Any]:
    """``seed`` with one to three values anywhere in it replaced, retyped or dropped."""
    where = paths(seed)
    if not where:
        return st.just(seed)
    change = st.tuples(st.sampled_from(where), st.one_of(odd_values(), st.just(DROP)))
    return st.lists(change, min_size=1, max_size=3).map(lambda changes: replaced(seed, changes))


def spoiled_payloads(sources: Sequence[Source] = SOURCES) -> st.SearchStrategy[tuple[Source, Any]]:
    """A source and one of its real bodies, spoiled."""
    pairs = [(source, seed) for source in sources for seed in source.seeds()]
    return st.sampled_from(pairs).flatmap(
        lambda pair: spoiled(pair[1]).map(lambda body: (pair[0], body))
    )


def with_lone_surrogates(seed: Any) -> Iterator[tuple[JsonPath, Any]]:
    """``seed`` with each of its strings, one at a time, replaced by :data:`LONE_SURROGATE`."""
    for path in paths(seed, strings_only=True):
        yield path, replaced(seed, [(path, LONE_SURROGATE)])


def deeply_nested(levels: int, *, as_object: bool = False) -> bytes:
    """A JSON document ``levels`` deep: ``[[[...]]]`` or ``{"a":{"a":...}}``."""
    if as_object:
        return b'{"a":' * levels + b"1" + b"}" * levels
    return b"[" * levels + b"]" * levels


# --- ingest, served for hostile clients -----------------------------------------------------


@contextmanager
def ingest_served(settings: Settings) -> Iterator[str]:
    """The real ingest app (lifespan on) on 127.0.0.1 in a thread; yields its base URL."""
    with serving_in_thread(create_app(settings), lifespan="on") as base_url:
        yield base_url


def post_document(client: httpx.Client, url: str, document: Any, **headers: str) -> httpx.Response:
    """POST ``document`` as JSON text, the way a careless sender would write it."""
    return client.post(
        url,
        content=json_text(document).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
