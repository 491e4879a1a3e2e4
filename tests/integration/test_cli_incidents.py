"""``clarion incidents``, ``update post``, ``ack`` and ``resolve`` against a live system.

Ingest, dispatcher and scheduler run as processes over the test Valkey, with an ops
token; one system serves the whole module. Incidents are opened the way monitoring
opens them (a webhook), each test its own; the CLI runs in process with only
CLARION_* variables pointing it at the system, and every change it makes is checked
through ingest's operator API.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from typer.testing import CliRunner, Result

from services.cli import app
from tests.support.live_cli import Clarion, clarion_for, live_system
from tests.support.plans import write_plan
from tests.support.processes import System
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

OPS: Final = "ops-token-for-the-incidents-cli"
INGEST_TOKEN: Final = "ingest-token-for-the-incidents-cli"
UNKNOWN_ID: Final = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The three services on an emptied Valkey, ingest with an ops token and an ingest token."""
    root = tmp_path_factory.mktemp("cli-incidents")
    env = {
        "CLARION_PLAN": str(write_plan(root)),
        "CLARION_OPS_TOKEN": OPS,
        "CLARION_INGEST_TOKEN": INGEST_TOKEN,
    }
    with live_system(redis_url, root, env) as running:
        yield running


@pytest.fixture
def clarion(system: System, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Clarion:
    """The CLI as an operator on this host runs it: ingest found by CLARION_INGEST_PORT."""
    return clarion_for(system, monkeypatch, tmp_path, CLARION_OPS_TOKEN=OPS)


@pytest.fixture
def ops(system: System) -> Iterator[httpx.Client]:
    """Ingest's operator API, to check what the CLI did."""
    with httpx.Client(
        base_url=system.ingest_url, headers={"Authorization": f"Bearer {OPS}"}, timeout=10.0
    ) as client:
        yield client


def open_incident(system: System, title: str = "Checkout page returns errors") -> str:
    """A new incident, opened by a generic alert of its own group; its id."""
    name = uuid.uuid4().hex
    body = {
        "version": "1",
        "alerts": [
            {
                "title": f"{title} ({name[:6]})",
                "severity": "SEV2",
                "fingerprint": name,
                "group": name,
                "service": "checkout",
                "labels": {"probe": "checkout-page"},
            }
        ],
    }
    response = httpx.post(
        f"{system.ingest_url}/v1/alerts/generic",
        json=body,
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        timeout=10.0,
    )
    assert response.status_code == 202, response.text
    incident_id: str = response.json()["incident_id"]
    return incident_id


def incident(ops: httpx.Client, incident_id: str) -> dict[str, Any]:
    response = ops.get(f"/v1/incidents/{incident_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def succeeded(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def failed_cleanly(result: Result, code: int = 1) -> str:
    """The command failed with ``code``, by a message, not a traceback; the message."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


def facts(text: str) -> dict[str, str]:
    """The ``label: value`` head of ``incidents show``, up to its first blank line."""
    head = text.split("\n\n", 1)[0]
    return {
        label.strip(): value.strip()
        for label, _, value in (line.partition(":") for line in head.splitlines())
    }


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in succeeded(result).splitlines()]


# --- Reading ------------------------------------------------------------------------


def test_list_shows_incidents_newest_first_filtered_by_status(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    still_open = open_incident(system, "Search is slow")
    over = open_incident(system, "Login fails")
    assert ops.post(f"/v1/incidents/{over}/resolve").status_code == 200

    table = succeeded(clarion("incidents", "list"))
    listed = json_lines(clarion("incidents", "list", "--json"))
    opened = json_lines(clarion("incidents", "list", "--status", "open", "--json"))
    resolved = json_lines(clarion("incidents", "list", "--status", "resolved", "--json"))
    newest = json_lines(clarion("incidents", "list", "--limit", "1", "--json"))

    [row] = [line for line in table.splitlines() if still_open in line]
    assert "SEV2" in row
    assert "investigating" in row
    assert "Search is slow" in row
    assert "checkout" in row
    assert {still_open, over} <= {i["id"] for i in listed}
    assert still_open in {i["id"] for i in opened}
    assert over not in {i["id"] for i in opened}
    assert {i["status"] for i in opened} <= {"investigating", "identified", "monitoring"}
    assert over in {i["id"] for i in resolved}
    assert {i["status"] for i in resolved} == {"resolved"}
    assert len(newest) == 1
    assert newest[0]["id"] == listed[0]["id"]


def test_show_prints_the_incident_its_alerts_and_its_timeline(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    incident_id = open_incident(system, "Payments time out")
    posted = ops.post(
        f"/v1/incidents/{incident_id}/updates",
        json={"message": "We are rolling back a deploy.", "components": ["payments"]},
    )
    assert posted.status_code == 201, posted.text

    text = succeeded(clarion("incidents", "show", incident_id))
    shown = json.loads(succeeded(clarion("incidents", "show", incident_id, "--json")))

    assert shown == incident(ops, incident_id)
    head = facts(text)
    assert head["Incident"] == incident_id
    assert head["Title"] == shown["title"]
    assert "Payments time out" in head["Title"]
    assert head["Severity"] == "SEV2 (error)"
    assert head["Status"] == "investigating"
    assert head["Source"] == "generic"
    assert head["Service"] == "checkout"
    assert head["Components"] == "payments"
    assert head["Resolved"] == "no"
    assert head["Post-mortem"] == "none"
    lines = text.splitlines()
    assert "Alerts: 1, 1 firing" in text
    assert shown["alerts"][0]["fingerprint"] in text
    assert "Timeline" in text
    [update] = [line for line in lines if "We are rolling back a deploy." in line]
    assert "operator" in update
    assert len(shown["timeline"]) >= 2  # opened, then the update
    for entry in shown["timeline"]:
        assert entry["message"][:40] in text


def test_show_of_a_resolved_incident_names_its_post_mortem(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    incident_id = open_incident(system)
    assert ops.post(f"/v1/incidents/{incident_id}/resolve").status_code == 200
    published = ops.post(
        f"/v1/incidents/{incident_id}/postmortem",
        json={"url": "https://status.example.com/pm/1", "summary": "A bad config push."},
    )
    assert published.status_code == 200, published.text

    head = facts(succeeded(clarion("incidents", "show", incident_id)))

    assert head["Post-mortem"] == "https://status.example.com/pm/1 - A bad config push."
    assert head["Status"] == "resolved"
    assert head["Resolved"].endswith(" UTC")


# --- Changing -----------------------------------------------------------------------


def test_update_post_changes_status_headline_and_components(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    incident_id = open_incident(system)

    result = clarion(
        "update",
        "post",
        incident_id,
        "--message",
        "We found a faulty configuration change and are rolling it back.",
        "--status",
        "identified",
        "--title",
        "Checkout errors after a configuration change",
        "--impact",
        "Some customers cannot complete checkout.",
        "--component",
        "checkout",
        "--component",
        "payments",
        "--author",
        "alice",
    )

    assert succeeded(result).strip() == (
        f"Posted an update to incident {incident_id}: it is now identified. "
        "Events published: incident.updated."
    )
    now = incident(ops, incident_id)
    assert now["status"] == "identified"
    assert now["title"] == "Checkout errors after a configuration change"
    assert now["impact"] == "Some customers cannot complete checkout."
    assert now["components"] == ["checkout", "payments"]
    assert now["acknowledged_by"] == "alice"
    assert now["timeline"][-1]["message"] == (
        "We found a faulty configuration change and are rolling it back."
    )
    assert now["timeline"][-1]["author"] == "operator"


def test_update_post_with_status_resolved_resolves_and_json_is_ingests_answer(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    incident_id = open_incident(system)

    answer = json.loads(
        succeeded(
            clarion("update", "post", incident_id, "-m", "Fixed.", "--status", "resolved", "--json")
        )
    )

    assert answer["events"] == ["incident.resolved"]
    assert answer["incident"]["status"] == "resolved"
    assert answer["incident"] == incident(ops, incident_id)


def test_ack_makes_it_identified_once(system: System, clarion: Clarion, ops: httpx.Client) -> None:
    incident_id = open_incident(system)

    first = clarion("ack", incident_id, "--by", "alice")
    again = clarion("ack", incident_id, "--by", "bob")

    assert succeeded(first).strip() == (
        f"Acknowledged incident {incident_id}: it is now identified. "
        "Events published: incident.updated."
    )
    assert succeeded(again).strip() == (
        f"Incident {incident_id} is identified: it was acknowledged already, "
        "so nothing was published."
    )
    now = incident(ops, incident_id)
    assert now["status"] == "identified"
    assert now["acknowledged_by"] == "alice"


def test_resolve_resolves_with_a_last_word_and_a_second_time_is_a_conflict(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    incident_id = open_incident(system)

    first = clarion("resolve", incident_id, "--message", "The fix is deployed.")
    again = clarion("resolve", incident_id)
    update = clarion("update", "post", incident_id, "-m", "Too late.")

    assert succeeded(first).strip() == (
        f"Resolved incident {incident_id}: it is now resolved. Events published: incident.resolved."
    )
    now = incident(ops, incident_id)
    assert now["status"] == "resolved"
    assert now["resolved_at"] is not None
    assert now["timeline"][-1]["message"] == "The fix is deployed."
    for refused in (again, update):
        assert failed_cleanly(refused).strip() == (
            f"Ingest answered 409: incident {incident_id} is resolved; it takes no more changes."
        )
    assert incident(ops, incident_id)["timeline"] == now["timeline"]


# --- Failing clearly ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("incidents", "show", UNKNOWN_ID),
        ("ack", UNKNOWN_ID),
        ("resolve", UNKNOWN_ID),
        ("update", "post", UNKNOWN_ID, "--message", "Hello"),
    ],
)
def test_an_unknown_incident_is_one_clear_line(clarion: Clarion, command: tuple[str, ...]) -> None:
    output = failed_cleanly(clarion(*command))

    assert output.strip() == f"Ingest answered 404: no incident has the id {UNKNOWN_ID}."


def test_a_wrong_or_missing_ops_token_changes_nothing_and_says_what_to_set(
    system: System, clarion: Clarion, ops: httpx.Client
) -> None:
    incident_id = open_incident(system)

    wrong = clarion.with_env(CLARION_OPS_TOKEN="not-the-token")
    missing = clarion.with_env(CLARION_OPS_TOKEN=None)
    outputs = [
        failed_cleanly(wrong("incidents", "list")),
        failed_cleanly(wrong("ack", incident_id)),
        failed_cleanly(missing("resolve", incident_id)),
    ]

    assert outputs[0].strip() == (
        "Ingest refused the ops token (401: missing or wrong bearer token). "
        "Set CLARION_OPS_TOKEN to the token ingest runs with."
    )
    assert outputs[1] == outputs[0]
    assert outputs[2].startswith("Ingest wants an ops token (401:")
    assert "not-the-token" not in "".join(outputs)
    assert incident(ops, incident_id)["status"] == "investigating"


def test_an_invalid_update_names_the_field(system: System, clarion: Clarion) -> None:
    incident_id = open_incident(system)

    output = failed_cleanly(clarion("update", "post", incident_id, "-m", "x", "--title", ""))

    assert output.startswith("Ingest answered 422: the request is not valid (title: ")


def test_an_unreachable_ingest_is_one_clear_line(clarion: Clarion) -> None:
    port = free_port()  # nothing listens there
    by_url = clarion("incidents", "list", "--url", f"http://127.0.0.1:{port}")
    by_port = clarion.with_env(CLARION_INGEST_PORT=str(port))("ack", UNKNOWN_ID)

    for result in (by_url, by_port):
        output = failed_cleanly(result)
        assert output.startswith(f"Cannot reach ingest at http://127.0.0.1:{port} (")
        assert "clarion up" in output
        assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ("update", "post", UNKNOWN_ID),  # no --message
        ("incidents", "list", "--status", "closed"),
        ("incidents", "list", "--limit", "0"),
        ("incidents", "show"),
        ("update", "post", UNKNOWN_ID, "-m", "x", "--status", "fixed"),
        ("ack", UNKNOWN_ID, "--url", "ingest.example:8000"),
    ],
)
def test_usage_errors_exit_2_before_asking_ingest(
    clarion: Clarion, command: tuple[str, ...]
) -> None:
    # Ingest is unreachable here: a usage error must be found before any request.
    result = clarion.with_env(CLARION_INGEST_PORT=str(free_port()))(*command)

    failed_cleanly(result, code=2)
    assert "Cannot reach" not in result.output


@pytest.mark.parametrize(
    ("command", "description"),
    [
        (("incidents",), "Read incidents from ingest"),
        (("incidents", "list"), "List incidents, newest first."),
        (("incidents", "show"), "Show one incident"),
        (("update",), "Post a human-written update to an incident."),
        (("update", "post"), "Post an update"),
        (("ack",), "Acknowledge an incident"),
        (("resolve",), "Resolve an incident now"),
        (("send-test-alert",), "Send the source's sample alert to ingest"),
        (("dead-letters", "replay"), "Send dead deliveries again"),
        ((), "incidents"),
    ],
)
def test_every_command_has_help(command: tuple[str, ...], description: str) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    assert description in result.stdout
