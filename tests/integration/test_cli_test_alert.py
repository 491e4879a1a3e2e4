"""``clarion send-test-alert`` against a live system whose sources each want their own
credential: basic auth (Alertmanager), an HMAC signature (Grafana), a bearer token
(Datadog), a Standard Webhooks signature (generic) and a routing key (PagerDuty).

The services run as processes over the test Valkey, one system for the module, with
the shipped default plan (no monitoring hold): SEV4 goes to engineering only, SEV1 to
customers everywhere. Its channels have no credentials, so every message stays in the
local outbox. The CLI runs in process with the same CLARION_* settings; what it opened
or resolved is checked through ingest's operator API, and who heard of it through the
dispatcher's delivery log.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from services.cli import app
from services.test_alert_payloads import Source
from shared.plan import DEFAULT_PLAN
from tests.support.ingest_requests import whsec
from tests.support.live_cli import Clarion, clarion_for, live_system
from tests.support.processes import System
from tests.support.smtp import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OPS: Final = "ops-token-for-the-test-alert-cli"
CREDENTIALS: Final = {
    "CLARION_ALERTMANAGER_BASIC_AUTH": "alertmanager:am-password-1",
    "CLARION_GRAFANA_HMAC_SECRET": "grafana-hmac-secret-1",
    "CLARION_DATADOG_TOKEN": "datadog-token-1",
    "CLARION_GENERIC_WEBHOOK_SECRET": whsec(b"generic-webhook-key-0123456789abcdef"),
    "CLARION_PAGERDUTY_ROUTING_KEYS": "R0utingKey0123456789abcdefABCDEF",
}
WRONG: Final = {
    Source.ALERTMANAGER: (
        {"CLARION_ALERTMANAGER_BASIC_AUTH": "alertmanager:not-the-password"},
        "Ingest answered 401 to the test alertmanager alert: wrong user or password (Basic).",
    ),
    Source.GRAFANA: (
        {"CLARION_GRAFANA_HMAC_SECRET": "not-the-hmac-secret"},
        "Ingest answered 401 to the test grafana alert: "
        "the Grafana signature does not match the body.",
    ),
    Source.DATADOG: (
        {"CLARION_DATADOG_TOKEN": "not-the-datadog-token"},
        "Ingest answered 401 to the test datadog alert: wrong token (Bearer).",
    ),
    Source.GENERIC: (
        {"CLARION_GENERIC_WEBHOOK_SECRET": whsec(b"not-the-webhook-key-0123456789abcdef")},
        "Ingest answered 401 to the test generic alert: "
        "no v1 entry of webhook-signature matches the body.",
    ),
    Source.PAGERDUTY: (
        {"CLARION_PAGERDUTY_ROUTING_KEYS": "N0tTheRoutingKey0123456789abcdef"},
        "Ingest answered 400 to the test pagerduty alert: "
        "Event object is invalid: Invalid routing key.",
    ),
}
SEV4_LINE: Final = (
    "SEV4 is internal only in your plan: engineering (email, slack) will hear it; no customer will."
)
SEV1_LINE: Final = (
    "SEV1 reaches public audiences: customers (status_page, email, sms, mastodon, bluesky, x) "
    "will hear of this test; so will engineering (email, slack), support (email), "
    "executives (email)."
)


def shipped_plan_without_hold(directory: Path) -> Path:
    """The shipped default plan, with no monitoring hold: a resolved test alert resolves
    its incident at once."""
    plan = yaml.safe_load(DEFAULT_PLAN.read_text(encoding="utf-8"))
    plan["monitoring_hold"] = "0s"
    path = directory / "plan.yaml"
    path.write_text(yaml.safe_dump(plan), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shipped_plan_without_hold(tmp_path_factory.mktemp("cli-test-alert-plan"))


@pytest.fixture(scope="module")
def system(
    redis_url: str, plan_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The three services on an emptied Valkey, with the shipped plan (no hold)."""
    env = {**CREDENTIALS, "CLARION_PLAN": str(plan_file), "CLARION_OPS_TOKEN": OPS}
    with live_system(redis_url, tmp_path_factory.mktemp("cli-test-alert"), env) as running:
        yield running


@pytest.fixture
def clarion(
    system: System, plan_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Clarion:
    """The CLI on the services' host, with the credentials and the plan ingest has."""
    return clarion_for(
        system,
        monkeypatch,
        tmp_path,
        **CREDENTIALS,
        CLARION_OPS_TOKEN=OPS,
        CLARION_PLAN=str(plan_file),
    )


@pytest.fixture
def ops(system: System) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=system.ingest_url, headers={"Authorization": f"Bearer {OPS}"}, timeout=10.0
    ) as client:
        yield client


@pytest.fixture
async def dispatcher(system: System) -> AsyncIterator[httpx.AsyncClient]:
    """The dispatcher: its delivery log (with the ops token) and its status page."""
    async with httpx.AsyncClient(
        base_url=system.dispatcher_url, headers={"Authorization": f"Bearer {OPS}"}, timeout=10.0
    ) as client:
        yield client


async def heard_of(
    dispatcher: httpx.AsyncClient, incident_id: str, *expected: tuple[str, str]
) -> set[tuple[str, str]]:
    """Every (audience, channel) the delivery log has for the incident, once it has at
    least the ``expected`` ones."""

    async def recorded() -> set[tuple[str, str]] | None:
        response = await dispatcher.get(
            "/v1/deliveries", params={"incident_id": incident_id, "limit": 1000}
        )
        assert response.status_code == 200, response.text
        found = {(d["audience"], d["channel"]) for d in response.json()["deliveries"]}
        return found if set(expected) <= found else None

    return await eventually(recorded, what=f"deliveries {expected} of {incident_id}")


def incident(ops: httpx.Client, incident_id: str) -> dict[str, Any]:
    response = ops.get(f"/v1/incidents/{incident_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def incident_ids(ops: httpx.Client) -> set[str]:
    response = ops.get("/v1/incidents", params={"limit": 500})
    assert response.status_code == 200, response.text
    return {i["id"] for i in response.json()["incidents"]}


def sent(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def failed_cleanly(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


ENGINEERING: Final = [{"audience": "engineering", "public": False, "channels": ["email", "slack"]}]


@pytest.mark.parametrize("source", list(Source))
async def test_each_run_opens_a_new_sev4_test_incident_and_resolve_closes_it(
    source: Source, clarion: Clarion, ops: httpx.Client, dispatcher: httpx.AsyncClient
) -> None:
    runs = [clarion("send-test-alert", "--source", source, "--json") for _ in range(2)]
    first, second = (sent(run) for run in runs)

    assert [run.stderr for run in runs] == [SEV4_LINE + "\n"] * 2
    assert first["key"] != second["key"]
    assert first["incident_id"] != second["incident_id"]
    for run in (first, second):
        assert run["http_status"] == 202
        assert run["incident_id"], run
        assert (run["severity"], run["audiences"]) == ("SEV4", ENGINEERING)
        assert run["status_page"] is None  # the plan does not post SEV4 there
        opened = incident(ops, run["incident_id"])
        assert opened["source"] == source.value
        assert opened["severity"] == "info"  # ingest read SEV4 from the source's own words
        assert opened["status"] == "investigating"
        assert opened["title"].startswith("Test alert: ")
        assert opened["alerts"]
        for alert in opened["alerts"]:
            assert alert["status"] == "firing"
            if source is Source.PAGERDUTY:  # the dedup key is the fingerprint; no labels
                assert alert["fingerprint"] == run["key"]
            else:
                assert alert["labels"]["clarion_test_key"] == run["key"]
        # PagerDuty's answer does not list events
        assert run["events"] == (None if source is Source.PAGERDUTY else ["incident.opened"])
        told = await heard_of(
            dispatcher, run["incident_id"], ("engineering", "email"), ("engineering", "slack")
        )
        assert {audience for audience, _ in told} == {"engineering"}  # no customer heard
    listed = clarion("incidents", "list", "--status", "open", "--json")
    assert listed.exit_code == 0, listed.output
    open_ids = {json.loads(line)["id"] for line in listed.stdout.splitlines()}
    assert {first["incident_id"], second["incident_id"]} <= open_ids
    shown = clarion("incidents", "show", second["incident_id"])
    assert shown.exit_code == 0, shown.output
    for alert in incident(ops, second["incident_id"])["alerts"]:
        assert alert["fingerprint"] in shown.stdout
    assert "Test alert: " in shown.stdout

    resolving = clarion("send-test-alert", "--source", source, "--resolve", "--json")
    last = sent(resolving)
    named = sent(
        clarion("send-test-alert", "--source", source, "--resolve", "--key", first["key"], "--json")
    )

    assert last["key"] == second["key"]  # the last one sent from here, with its severity
    assert (last["severity"], last["audiences"]) == ("SEV4", ENGINEERING)
    assert resolving.stderr == SEV4_LINE.replace("hear it;", "hear it is resolved;") + "\n"
    assert last["incident_id"] == second["incident_id"]
    assert named["incident_id"] == first["incident_id"]
    assert (named["severity"], named["audiences"]) == (None, None)  # sent before the last one
    if source is Source.PAGERDUTY:  # looked up through the operator API
        assert (first["incident_status"], last["incident_status"]) == ("investigating", "resolved")
    for run in (first, second):
        resolved = incident(ops, run["incident_id"])
        assert resolved["status"] == "resolved"
        assert {a["status"] for a in resolved["alerts"]} == {"resolved"}


async def test_by_default_the_report_leaves_the_status_page_out_as_the_plan_does(
    clarion: Clarion, dispatcher: httpx.AsyncClient, system: System
) -> None:
    fired = clarion("send-test-alert", "--source", "generic")

    assert fired.exit_code == 0, fired.output
    assert fired.stderr == SEV4_LINE + "\n"
    [incident_id] = re.findall(r"^Incident: +([0-9a-f]{32})$", fired.stdout, re.M)
    assert "Status page:" not in fired.stdout
    assert fired.stdout.splitlines()[-1].startswith("Resolve it:   clarion send-test-alert ")
    told = await heard_of(
        dispatcher, incident_id, ("engineering", "email"), ("engineering", "slack")
    )
    assert {audience for audience, _ in told} == {"engineering"}
    page = await dispatcher.get(f"/status/incidents/{incident_id}")
    assert page.status_code == 404


async def test_a_sev1_test_reaches_customers_and_its_status_page_serves_the_incident(
    clarion: Clarion, ops: httpx.Client, dispatcher: httpx.AsyncClient, system: System
) -> None:
    fired = clarion("send-test-alert", "--source", "alertmanager", "--severity", "SEV1")

    assert fired.exit_code == 0, fired.output
    assert fired.stderr == SEV1_LINE + "\n"
    lines = fired.stdout.splitlines()
    assert lines[0] == (
        f"Sent a test alertmanager alert (firing) to {system.ingest_url}/v1/alerts/alertmanager: "
        "HTTP 202."
    )
    [incident_id] = re.findall(r"^Incident: +([0-9a-f]{32})$", fired.stdout, re.M)
    [key] = re.findall(r"^Test key: +(clarion-test-[0-9a-f]+)$", fired.stdout, re.M)
    assert "Events:       incident.opened" in lines
    page = f"{system.dispatcher_url}/status/incidents/{incident_id}"
    assert f"Status page:  {page}" in lines
    assert lines[-1] == (
        f"Resolve it:   clarion send-test-alert --source alertmanager --resolve --key {key}"
    )
    opened = incident(ops, incident_id)
    assert opened["severity"] == "critical"
    assert {a["fingerprint"] for a in opened["alerts"]} == {f"{key}-0", f"{key}-1"}
    assert "am-password-1" not in fired.output
    async with httpx.AsyncClient(timeout=10.0) as http:

        async def served() -> httpx.Response | None:
            response = await http.get(page)
            return response if response.status_code == 200 else None

        shown = await eventually(served, what=f"the status page of {incident_id}")
    assert f'id="incident-{incident_id}"' in shown.text  # this incident's own page
    await heard_of(
        dispatcher,
        incident_id,
        ("customers", "status_page"),
        ("customers", "email"),
        ("customers", "sms"),
        ("engineering", "email"),
        ("executives", "email"),
    )

    resolved = clarion("send-test-alert", "--source", "alertmanager", "--resolve")

    assert resolved.exit_code == 0, resolved.output
    assert resolved.stderr == (
        SEV1_LINE.replace("will hear of this test", "will hear it is resolved") + "\n"
    )
    assert resolved.stdout.splitlines()[0].endswith(
        f"(resolved) to {system.ingest_url}/v1/alerts/alertmanager: HTTP 202."
    )
    assert f"Incident:     {incident_id}" in resolved.stdout
    assert "Events:       incident.resolved" in resolved.stdout
    assert f"Status page:  {page}" in resolved.stdout
    assert incident(ops, incident_id)["status"] == "resolved"


def test_a_severity_may_be_named_in_words(clarion: Clarion, ops: httpx.Client) -> None:
    result = clarion("send-test-alert", "--source", "pagerduty", "--severity", "error", "--json")

    run = sent(result)
    assert run["severity"] == "SEV2"
    assert result.stderr.startswith("SEV2 reaches public audiences: customers (status_page, ")
    assert incident(ops, run["incident_id"])["severity"] == "error"


@pytest.mark.parametrize("source", list(Source))
def test_a_wrong_credential_is_refused_in_one_clear_line_and_opens_nothing(
    source: Source, clarion: Clarion, ops: httpx.Client
) -> None:
    changes, message = WRONG[source]
    before = incident_ids(ops)

    output = failed_cleanly(clarion.with_env(**changes)("send-test-alert", "--source", source))

    reach, refusal = output.strip().splitlines()
    assert reach == SEV4_LINE
    assert refusal.startswith(message + " Set CLARION_INGEST_TOKEN or ")
    for secret in (*changes.values(), *CREDENTIALS.values()):
        assert secret not in output
    assert incident_ids(ops) == before


def test_without_the_sources_credential_here_ingest_asks_for_one(
    clarion: Clarion, ops: httpx.Client
) -> None:
    before = incident_ids(ops)
    bare = clarion.with_env(**dict.fromkeys(CREDENTIALS))

    output = failed_cleanly(bare("send-test-alert", "--source", "grafana"))

    refusal = output.strip().splitlines()[-1]
    assert refusal.startswith("Ingest answered 401 to the test grafana alert: credentials are")
    assert "CLARION_GRAFANA_*" in refusal
    assert incident_ids(ops) == before


def test_resolve_needs_a_key_it_knows(clarion: Clarion, ops: httpx.Client) -> None:
    nothing_sent = failed_cleanly(clarion("send-test-alert", "--source", "grafana", "--resolve"))
    unknown = clarion(
        "send-test-alert", "--source", "generic", "--resolve", "--key", "clarion-test-nope"
    )

    assert nothing_sent.startswith("No test grafana alert was sent from here (")
    assert "--key" in nothing_sent
    failed_cleanly(unknown)
    assert "Incident:     none: no open incident has the test key clarion-test-nope" in (
        unknown.stdout
    )
    assert unknown.stderr.startswith(
        "Resolving the test incident: whoever heard of it will hear it is resolved.\n"
    )
    assert "Nothing was resolved" in unknown.stderr


def test_an_unreachable_ingest_is_one_clear_line(clarion: Clarion) -> None:
    port = free_port()

    output = failed_cleanly(
        clarion("send-test-alert", "--source", "datadog", "--url", f"http://127.0.0.1:{port}")
    )

    reach, refusal = output.strip().splitlines()
    assert reach == SEV4_LINE
    assert refusal.startswith(f"Cannot reach ingest at http://127.0.0.1:{port} (")


@pytest.mark.parametrize(
    "arguments",
    [
        (),  # no --source
        ("--source", "sns"),
        ("--source", "generic", "--key", "not a key!"),
        ("--source", "generic", "--url", "127.0.0.1:8000"),
        ("--source", "generic", "--severity", "SEV5"),
    ],
)
def test_usage_errors_exit_2(clarion: Clarion, arguments: tuple[str, ...]) -> None:
    failed_cleanly(clarion("send-test-alert", *arguments), code=2)


def test_help_describes_the_command() -> None:
    result = CliRunner().invoke(app, ["send-test-alert", "--help"], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    assert "Send the source's sample alert to ingest" in result.stdout
    assert "--severity" in result.stdout
    assert "Default: SEV4" in result.stdout
    for source in Source:
        assert source.value in result.stdout
