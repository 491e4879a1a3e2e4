"""``clarion send-test-alert``: post a shipped sample alert to the running ingest.

Each run sends the source's sample (``services/ingest/samples/``) with fresh
timestamps and a new test key as its group, fingerprint or dedup key, so each
run opens a new test incident. ``--resolve`` sends the same alert resolved: with
``--key``, or the key of the last test alert of that source sent from here (kept
in ``<CLARION_DATA_DIR>/test-alerts.json``).

The request carries what the running ingest asks of that source, read from the
same settings ingest reads: ``CLARION_INGEST_TOKEN`` or the source's own bearer
token, basic auth, Grafana HMAC secret or Standard Webhooks secret, and for
PagerDuty a routing key in the body. With no credential configured at all,
ingest accepts requests from its own host only, and none is sent.

The payload builders are pure functions: a sample, a key and a time in, a body out.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer

from services.cli_support import (
    IngestUrl,
    examples,
    fail,
    ingest_client,
    ingest_url,
    response_detail,
    settings_or_fail,
    unreachable,
)
from services.dispatcher.rendering.values import RenderContext
from services.ingest.credentials import SourceCredentials, credentials_for
from services.ingest.signatures import (
    GRAFANA_SIGNATURE_HEADERS,
    GRAFANA_TIMESTAMP_HEADERS,
    WEBHOOK_ID,
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
    grafana_signature,
    standard_webhook_signature,
)
from services.local_run import SAMPLES_DIR
from shared.plan import PlanError, load_plan
from shared.settings import Settings

KEY_LABEL: Final = "clarion_test_key"
"""The label (Datadog: tag) every test alert carries, with its key."""
TITLE_PREFIX: Final = "Test alert: "
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEYS_FILE: Final = "test-alerts.json"
GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
SAMPLE_ROUTING_KEY: Final = "samplekeyhere"


class Source(StrEnum):
    ALERTMANAGER = "alertmanager"
    GRAFANA = "grafana"
    PAGERDUTY = "pagerduty"
    DATADOG = "datadog"
    GENERIC = "generic"


SAMPLES: Final[Mapping[Source, str]] = {
    Source.ALERTMANAGER: "alertmanager_firing.json",
    Source.GRAFANA: "grafana_firing.json",
    Source.PAGERDUTY: "pagerduty_trigger.json",
    Source.DATADOG: "datadog_triggered.json",
    Source.GENERIC: "generic_firing.json",
}

PATHS: Final[Mapping[Source, str]] = {
    Source.ALERTMANAGER: "/v1/alerts/alertmanager",
    Source.GRAFANA: "/v1/alerts/grafana",
    Source.PAGERDUTY: "/v2/enqueue",
    Source.DATADOG: "/v1/alerts/datadog",
    Source.GENERIC: "/v1/alerts/generic",
}

test_alert_app = typer.Typer(add_completion=False)


def _checked_key(value: str | None) -> str | None:
    if value is not None and not KEY_PATTERN.fullmatch(value):
        raise typer.BadParameter(
            "a key is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


@test_alert_app.command(
    name="send-test-alert",
    epilog=examples(
        "clarion send-test-alert --source grafana",
        "clarion send-test-alert --source grafana --resolve",
        "clarion send-test-alert --source pagerduty --resolve --key clarion-test-5f0c1a2b3c4d",
    ),
)
def send_test_alert(
    *,
    source: Annotated[Source, typer.Option("--source", "-s", help="Which source's sample.")],
    resolve: Annotated[
        bool, typer.Option("--resolve", help="Send the test alert resolved instead of firing.")
    ] = False,
    key: Annotated[
        str | None,
        typer.Option(
            callback=_checked_key,
            help="The test key (group, fingerprint, dedup key). Default: a new one when firing, "
            "the last one sent from here with --resolve.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    url: IngestUrl = None,
) -> None:
    """Send the source's sample alert to ingest: each run opens a new test incident.

    Every audience the plan routes the incident to hears of it, as of a real alert.
    """
    settings = settings_or_fail()
    keys = KeyStore(settings.data_dir)
    if key is None:
        key = keys.last(source) if resolve else new_key()
        if key is None:
            fail(
                f"No test {source} alert was sent from here ({keys.path} has no key): "
                "give the key to resolve with --key."
            )
    try:
        creds = credentials_for(settings, source.value)
    except ValueError as exc:
        fail(f"Invalid configuration: {exc}")
    now = datetime.now(UTC)
    sample = load_sample(source)
    body = build_body(source, sample, key, now, resolve=resolve, routing_key=routing_key_for(creds))
    answer = _post(ingest_url(settings, url), source, body, auth_headers(creds, body, now))
    if not resolve:
        keys.remember(source, key)
    outcome = Outcome(
        source=source,
        resolve=resolve,
        key=key,
        answer=answer,
        # PagerDuty's answer names no incident: ask the operator API which has the alert.
        found=_incident_with_alert(settings, url, key) if source is Source.PAGERDUTY else None,
    )
    page = _status_page(settings, outcome.incident_id)
    if as_json:
        typer.echo(json.dumps(outcome.document(page), indent=2))
    else:
        typer.echo("\n".join(outcome.report(page)))
    if outcome.resolved_nothing:
        if not as_json:
            typer.echo(
                f"Nothing was resolved: is {key} the key of an open test incident?", err=True
            )
        raise typer.Exit(1)


@dataclass(frozen=True)
class Answer:
    """What ingest answered to the webhook."""

    url: str
    http_status: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """One test alert sent, and what became of it."""

    source: Source
    resolve: bool
    key: str
    answer: Answer
    found: Mapping[str, Any] | None = None
    """PagerDuty: the incident with the test alert, as the operator API shows it."""

    @property
    def incident_id(self) -> str | None:
        if self.source is Source.PAGERDUTY:
            return str(self.found["id"]) if self.found else None
        value = self.answer.body.get("incident_id")
        return str(value) if value else None

    @property
    def events(self) -> list[str] | None:
        """The incident events published; None when the answer does not say (PagerDuty)."""
        if self.source is Source.PAGERDUTY:
            return None
        return [str(event) for event in self.answer.body.get("events") or []]

    @property
    def resolved_nothing(self) -> bool:
        """Ingest took the resolved alert, but no open incident had it."""
        return self.resolve and self.events is not None and self.incident_id is None

    def document(self, status_page: str) -> dict[str, Any]:
        """The ``--json`` output."""
        return {
            "source": self.source.value,
            "action": "resolve" if self.resolve else "fire",
            "key": self.key,
            "url": self.answer.url,
            "http_status": self.answer.http_status,
            "incident_id": self.incident_id,
            "incident_status": self.found.get("status") if self.found else None,
            "events": self.events,
            "status_page": status_page,
        }

    def report(self, status_page: str) -> list[str]:
        """The plain output: what was sent, the answer, and where to look next."""
        state = "resolved" if self.resolve else "firing"
        sent = f"Sent a test {self.source} alert ({state}) to {self.answer.url}"
        lines = [f"{sent}: HTTP {self.answer.http_status}.", f"Incident:     {self._incident()}"]
        if self.events is not None:
            events = ", ".join(self.events) or "none (ingest had this alert already)"
            lines.append(f"Events:       {events}")
        lines += [f"Test key:     {self.key}", f"Status page:  {status_page}"]
        if not self.resolve:
            again = f"clarion send-test-alert --source {self.source} --resolve --key {self.key}"
            lines.append(f"Resolve it:   {again}")
        return lines

    def _incident(self) -> str:
        if self.found:
            return f"{self.found.get('id')} ({self.found.get('status')})"
        if self.incident_id:
            return self.incident_id
        if self.source is Source.PAGERDUTY:
            return "not found (the operator API did not say; see `clarion incidents list`)"
        return f"none: no open incident has the test key {self.key}"


def _post(base: str, source: Source, body: bytes, headers: Mapping[str, str]) -> Answer:
    """POST the test alert; any refusal ends the command with ingest's reason."""
    target = f"{base}{PATHS[source]}"
    try:
        with httpx.Client(timeout=10.0) as client:
            response = client.post(
                target, content=body, headers={"Content-Type": "application/json", **headers}
            )
    except httpx.HTTPError as exc:
        fail(unreachable("ingest", base, exc))
    if response.status_code >= 400:
        fail(
            f"Ingest answered {response.status_code} to the test {source} alert: "
            f"{response_detail(response)}.{_credentials_hint(source, response.status_code)}"
        )
    try:
        answer = response.json()
    except ValueError:
        fail(f"{target} answered {response.status_code} without JSON: is it Clarion's ingest?")
    return Answer(target, response.status_code, answer if isinstance(answer, dict) else {})


def _credentials_hint(source: Source, status: int) -> str:
    if status not in (400, 401, 403) or (status == 400 and source is not Source.PAGERDUTY):
        return ""
    own = (
        "CLARION_PAGERDUTY_ROUTING_KEYS"
        if source is Source.PAGERDUTY
        else f"the CLARION_{source.upper()}_* credentials"
    )
    return f" Set CLARION_INGEST_TOKEN or {own} as ingest has them."


def _incident_with_alert(settings: Settings, url: str | None, key: str) -> dict[str, Any] | None:
    """The newest PagerDuty incident with the alert ``key``; None when the operator API does
    not say (no ops token, say): finding it is a convenience, not the command's job."""
    try:
        with ingest_client(settings, url) as client:
            response = client.get("/v1/incidents", params={"status": "all", "limit": 50})
        incidents = response.json()["incidents"] if response.status_code == 200 else []
        for incident in incidents:
            fingerprints = {alert["fingerprint"] for alert in incident["alerts"]}
            if incident["source"] == Source.PAGERDUTY.value and key in fingerprints:
                return dict(incident)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return None


def _status_page(settings: Settings, incident_id: str | None) -> str:
    """Where people follow the incident, as its messages link it: the plan's page, else
    the incident's own page on the built-in one (its front page without an incident)."""
    try:
        plan = load_plan(settings.plan)
    except PlanError:
        return settings.local_status_url
    context = RenderContext.of(plan, settings)
    return context.follow_url(incident_id) if incident_id else context.status_url


# --- Test keys, remembered per source ------------------------------------------------


def new_key() -> str:
    """A fresh test key: one new alert group, so one new incident."""
    return f"clarion-test-{secrets.token_hex(6)}"


class KeyStore:
    """The key of the last test alert sent from here, per source, in the data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE

    def last(self, source: Source) -> str | None:
        try:
            keys = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        key = keys.get(source.value) if isinstance(keys, dict) else None
        return key if isinstance(key, str) and KEY_PATTERN.fullmatch(key) else None

    def remember(self, source: Source, key: str) -> None:
        """Keep ``key`` for ``source``; a data dir that can't be written only costs a warning."""
        try:
            keys = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            keys = {}
        keys = {**(keys if isinstance(keys, dict) else {}), source.value: key}
        partial = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(keys, indent=2) + "\n", encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as exc:
            typer.echo(f"Could not keep the test key in {self.path} ({exc}).", err=True)


# --- Credentials ---------------------------------------------------------------------


def auth_headers(creds: SourceCredentials, body: bytes, now: datetime) -> dict[str, str]:
    """The headers that carry the first credential ``creds`` accepts; {} when none does
    (loopback only, or PagerDuty's routing key, which is in the body)."""
    if creds.tokens:
        return {"Authorization": f"Bearer {creds.tokens[0].get_secret_value()}"}
    if creds.basic:
        pair = base64.b64encode(creds.basic[0].get_secret_value().encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    timestamp = str(int(now.timestamp()))
    if creds.grafana_hmac_secret is not None:
        secret = creds.grafana_hmac_secret.get_secret_value().encode()
        return {
            GRAFANA_SIGNATURE_HEADERS[0]: grafana_signature(secret, body, timestamp),
            GRAFANA_TIMESTAMP_HEADERS[0]: timestamp,
        }
    if creds.webhook_key is not None:
        message_id = f"msg_{secrets.token_hex(12)}"
        signature = standard_webhook_signature(
            creds.webhook_key.get_secret_value(), message_id, timestamp, body
        )
        return {WEBHOOK_ID: message_id, WEBHOOK_TIMESTAMP: timestamp, WEBHOOK_SIGNATURE: signature}
    return {}


def routing_key_for(creds: SourceCredentials) -> str:
    """The PagerDuty routing key to send: a configured one, else the sample's."""
    keys = creds.routing_keys or creds.tokens
    return keys[0].get_secret_value() if keys else SAMPLE_ROUTING_KEY


# --- Payloads ------------------------------------------------------------------------


def load_sample(source: Source) -> dict[str, Any]:
    sample: dict[str, Any] = json.loads((SAMPLES_DIR / SAMPLES[source]).read_text("utf-8"))
    return sample


def build_body(
    source: Source,
    sample: Mapping[str, Any],
    key: str,
    now: datetime,
    *,
    resolve: bool = False,
    routing_key: str = SAMPLE_ROUTING_KEY,
) -> bytes:
    """The bytes to post (and sign): ``sample`` as a test alert with ``key``, sent at ``now``."""
    if source is Source.PAGERDUTY:
        payload = pagerduty_body(sample, key, now, resolve, routing_key)
    else:
        payload = _BUILDERS[source](sample, key, now, resolve)
    return json.dumps(payload, separators=(",", ":")).encode()


def labelled_body(
    sample: Mapping[str, Any], key: str, now: datetime, resolve: bool
) -> dict[str, Any]:
    """Alertmanager's (and Grafana's) webhook: the group and every fingerprint from ``key``."""
    body = copy.deepcopy(dict(sample))
    status = "resolved" if resolve else "firing"
    body["status"] = status
    body["groupKey"] = f'{{}}:{{{KEY_LABEL}="{key}"}}'
    for field in ("groupLabels", "commonLabels"):
        body[field] = {**(body.get(field) or {}), KEY_LABEL: key}
    for index, alert in enumerate(body["alerts"]):
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        summary = annotations.get("summary") or labels.get("alertname") or "Alert"
        alert.update(
            status=status,
            fingerprint=f"{key}-{index}",
            labels={**labels, KEY_LABEL: key},
            annotations={**annotations, "summary": TITLE_PREFIX + summary},
        )
        if resolve:
            alert.pop("startsAt", None)  # ingest keeps the start it knows
            alert["endsAt"] = _rfc3339(now)
        else:
            alert.update(startsAt=_rfc3339(now), endsAt=GO_ZERO_TIME)
    return body


def grafana_body(
    sample: Mapping[str, Any], key: str, now: datetime, resolve: bool
) -> dict[str, Any]:
    body = labelled_body(sample, key, now, resolve)
    body["state"] = "ok" if resolve else "alerting"
    return body


def datadog_body(
    sample: Mapping[str, Any], key: str, now: datetime, resolve: bool
) -> dict[str, Any]:
    """One monitor notification; ``key`` is its aggregation key (its group)."""
    body = copy.deepcopy(dict(sample))
    title = TITLE_PREFIX + str(body.get("alert_title") or "Datadog monitor")
    scope = body.get("alert_scope") or ""
    transition = "Recovered" if resolve else "Triggered"
    millis = str(int(now.timestamp() * 1000))
    body.update(
        id=str(secrets.randbelow(10**18) + 10**18),
        aggreg_key=key,
        alert_title=title,
        title=f"[{transition} on {{{scope}}}] {title}" if scope else f"[{transition}] {title}",
        alert_transition=transition,
        date=millis,
        last_updated=millis,
        tags=",".join(filter(None, [body.get("tags"), f"{KEY_LABEL}:{key}"])),
    )
    if resolve:
        body.update(alert_type="success", alert_status="Recovered")
    return body


def generic_body(
    sample: Mapping[str, Any], key: str, now: datetime, resolve: bool
) -> dict[str, Any]:
    """Clarion's generic format: ``key`` is the group, and the fingerprints derive from it."""
    body = copy.deepcopy(dict(sample))
    for index, alert in enumerate(body["alerts"]):
        title = alert.get("title") or alert.get("summary") or "Alert"
        alert.update(
            status="resolved" if resolve else "firing",
            title=TITLE_PREFIX + title,
            fingerprint=f"{key}-{index}",
            group=key,
            labels={**(alert.get("labels") or {}), KEY_LABEL: key},
        )
        alert.pop("summary", None)
        if resolve:
            alert.pop("starts_at", None)
            alert["ends_at"] = _rfc3339(now)
        else:
            alert.pop("ends_at", None)
            alert["starts_at"] = _rfc3339(now)
    return body


def pagerduty_body(
    sample: Mapping[str, Any], key: str, now: datetime, resolve: bool, routing_key: str
) -> dict[str, Any]:
    """An Events API v2 event: ``key`` is the dedup key, and so the alert's fingerprint."""
    body = copy.deepcopy(dict(sample))
    details = body.get("payload") or {}
    details.update(
        summary=TITLE_PREFIX + str(details.get("summary") or "PagerDuty event"),
        timestamp=_rfc3339(now),
    )
    body.update(
        routing_key=routing_key,
        dedup_key=key,
        event_action="resolve" if resolve else "trigger",
        payload=details,
    )
    return body


_BUILDERS: Final[
    Mapping[Source, Callable[[Mapping[str, Any], str, datetime, bool], dict[str, Any]]]
] = {
    Source.ALERTMANAGER: labelled_body,
    Source.GRAFANA: grafana_body,
    Source.DATADOG: datadog_body,
    Source.GENERIC: generic_body,
}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
