"""``clarion send-test-alert``: post a shipped sample alert to the running ingest.

Each run sends the source's sample (``services/ingest/samples/``, built by
:mod:`services.test_alert_payloads`) with fresh timestamps, a new test key as its
group, fingerprint or dedup key, so each run opens a new test incident, and the
severity asked for: SEV4 by default, which the shipped plan keeps internal.
``--resolve`` sends the same alert resolved: with ``--key``, or the key of the last
test alert of that source sent from here (kept, with its severity, in
``<CLARION_DATA_DIR>/test-alerts.json``).

Before sending, it says on stderr who will hear of it, as the plan routes it
(:func:`services.test_alert_payloads.reach`).

The request carries what the running ingest asks of that source, read from the
same settings ingest reads: ``CLARION_INGEST_TOKEN`` or the source's own bearer
token, basic auth, Grafana HMAC secret or Standard Webhooks secret, and for
PagerDuty a routing key in the body. With no credential configured at all,
ingest accepts requests from its own host only, and none is sent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
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
    plan_or_fail,
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
from services.test_alert_payloads import (
    DEFAULT_SEVERITY,
    PATHS,
    SAMPLE_ROUTING_KEY,
    Heard,
    Source,
    build_body,
    load_sample,
    reach,
    reach_line,
    severities_for,
)
from shared.contracts import Severity
from shared.plan import ChannelName, Plan
from shared.settings import Settings

KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEYS_FILE: Final = "test-alerts.json"

test_alert_app = typer.Typer(add_completion=False)


def _checked_key(value: str | None) -> str | None:
    if value is not None and not KEY_PATTERN.fullmatch(value):
        raise typer.BadParameter(
            "a key is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _severity(value: str) -> Severity:
    try:
        return Severity.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@test_alert_app.command(
    name="send-test-alert",
    epilog=examples(
        "clarion send-test-alert --source grafana",
        "clarion send-test-alert --source grafana --resolve",
        "clarion send-test-alert --source generic --severity SEV1",
        "clarion send-test-alert --source pagerduty --resolve --key clarion-test-5f0c1a2b3c4d",
    ),
)
def send_test_alert(
    *,
    source: Annotated[Source, typer.Option("--source", "-s", help="Which source's sample.")],
    severity: Annotated[
        Severity | None,
        typer.Option(
            parser=_severity,
            metavar="SEV1|SEV2|SEV3|SEV4",
            show_default=False,
            help="The test incident's severity. Default: SEV4, which the shipped plan keeps "
            "internal (with --resolve: the severity it was sent with).",
        ),
    ] = None,
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

    Every audience the plan routes its severity to hears of it, as of a real alert;
    the command says who before sending.
    """
    settings = settings_or_fail()
    plan = plan_or_fail(settings.plan)
    keys = KeyStore(settings.data_dir)
    if key is None:
        key = keys.last(source) if resolve else new_key()
        if key is None:
            fail(
                f"No test {source} alert was sent from here ({keys.path} has no key): "
                "give the key to resolve with --key."
            )
    if severity is None:
        severity = keys.severity(source, key) if resolve else DEFAULT_SEVERITY
    now = datetime.now(UTC)
    try:
        creds = credentials_for(settings, source.value)
        heard = (
            None if severity is None else reach(plan, source, key, severity, now, resolve=resolve)
        )
        body = build_body(
            source,
            load_sample(source),
            key,
            now,
            severity=severity or DEFAULT_SEVERITY,  # resolving: the incident keeps its own
            severities=severities_for(source, plan),
            resolve=resolve,
            routing_key=routing_key_for(creds),
        )
    except ValueError as exc:
        fail(f"Invalid configuration: {exc}")
    typer.echo(reach_line(plan, severity, heard, resolve=resolve), err=True)
    answer = _post(ingest_url(settings, url), source, body, auth_headers(creds, body, now))
    if not resolve:
        keys.remember(source, key, severity or DEFAULT_SEVERITY)
    outcome = Outcome(
        source=source,
        resolve=resolve,
        key=key,
        answer=answer,
        severity=severity,
        heard=heard,
        # PagerDuty's answer names no incident: ask the operator API which has the alert.
        found=_incident_with_alert(settings, url, key) if source is Source.PAGERDUTY else None,
    )
    page = _status_page(plan, settings, outcome.incident_id) if outcome.on_status_page else None
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
    severity: Severity | None = None
    """None: resolving a test incident of unknown severity (sent from elsewhere)."""
    heard: tuple[Heard, ...] | None = None
    """Who the plan routes it to; None when the severity is unknown."""
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
    def on_status_page(self) -> bool:
        """The plan routes it to the status page (or may: severity unknown)."""
        if self.heard is None:
            return True
        return any(ChannelName.STATUS_PAGE in heard.channels for heard in self.heard)

    @property
    def resolved_nothing(self) -> bool:
        """Ingest took the resolved alert, but no open incident had it."""
        return self.resolve and self.events is not None and self.incident_id is None

    def document(self, status_page: str | None) -> dict[str, Any]:
        """The ``--json`` output; ``status_page`` is None when the plan does not post there."""
        return {
            "source": self.source.value,
            "action": "resolve" if self.resolve else "fire",
            "key": self.key,
            "severity": self.severity.sev if self.severity else None,
            "audiences": None if self.heard is None else [h.document() for h in self.heard],
            "url": self.answer.url,
            "http_status": self.answer.http_status,
            "incident_id": self.incident_id,
            "incident_status": self.found.get("status") if self.found else None,
            "events": self.events,
            "status_page": status_page,
        }

    def report(self, status_page: str | None) -> list[str]:
        """The plain output: what was sent, the answer, and where to look next (the status
        page only when the plan posts the incident there)."""
        state = "resolved" if self.resolve else "firing"
        sent = f"Sent a test {self.source} alert ({state}) to {self.answer.url}"
        lines = [f"{sent}: HTTP {self.answer.http_status}.", f"Incident:     {self._incident()}"]
        if self.events is not None:
            events = ", ".join(self.events) or "none (ingest had this alert already)"
            lines.append(f"Events:       {events}")
        lines.append(f"Test key:     {self.key}")
        if status_page:
            lines.append(f"Status page:  {status_page}")
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


def _status_page(plan: Plan, settings: Settings, incident_id: str | None) -> str:
    """Where people follow the incident, as its messages link it: the plan's page, else
    the incident's own page on the built-in one (its front page without an incident)."""
    context = RenderContext.of(plan, settings)
    return context.follow_url(incident_id) if incident_id else context.status_url


# --- Test keys, remembered per source ------------------------------------------------


def new_key() -> str:
    """A fresh test key: one new alert group, so one new incident."""
    return f"clarion-test-{secrets.token_hex(6)}"


class KeyStore:
    """The key of the last test alert sent from here, and its severity, per source, in the
    data dir (``{"grafana": {"key": ..., "severity": "SEV4"}}``; older files hold the key
    alone)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE

    def _entries(self) -> dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def last(self, source: Source) -> str | None:
        entry = self._entries().get(source.value)
        key = entry.get("key") if isinstance(entry, dict) else entry
        return key if isinstance(key, str) and KEY_PATTERN.fullmatch(key) else None

    def severity(self, source: Source, key: str) -> Severity | None:
        """The severity the last test alert of ``source`` was sent with, if its key is ``key``."""
        entry = self._entries().get(source.value)
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        try:
            return Severity.parse(str(entry.get("severity")))
        except ValueError:
            return None

    def remember(self, source: Source, key: str, severity: Severity) -> None:
        """Keep ``key`` for ``source``; a data dir that can't be written only costs a warning."""
        entries = {**self._entries(), source.value: {"key": key, "severity": severity.sev}}
        partial = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
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
