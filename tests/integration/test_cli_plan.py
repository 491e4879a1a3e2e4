"""``clarion plan check`` and ``clarion plan preview``, on real plan files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from services.dispatcher.rendering.messages import SHIPPED_TEMPLATES
from services.plan_commands import plan_app
from shared.plan import DEFAULT_PLAN

VALID = """\
version: 1
organization: Acme
severities:
  SEV1: {name: a major outage, update_every: 30m}
  SEV2: {name: a partial outage, update_every: 1h}
  SEV3: {name: degraded performance}
  SEV4: {name: a minor issue, internal_only: true}
audiences:
  customers:
    public: true
    email: [customer@example.invalid]
    status_page: true
routes:
  - audiences: [customers]
"""


app = typer.Typer()
app.add_typer(plan_app, name="plan")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner with no CLARION_ setting from the outside and no .env in its way."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith("CLARION_"):
            monkeypatch.delenv(variable)
    return CliRunner()


def plan(runner: CliRunner, *args: str | Path) -> Result:
    return runner.invoke(app, ["plan", *(str(arg) for arg in args)])


def write(directory: Path, text: str) -> Path:
    path = directory / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_of_a_good_plan_passes_with_a_table_and_a_summary(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = plan(runner, "check", write(tmp_path, VALID))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(
        line.split()[1:7] == ["SEV1", "│", "opened", "│", "customers", "│"] for line in lines
    )
    assert "FAIL" not in result.stdout
    assert lines[-1] == "36 messages checked, 0 failed"


def test_check_of_the_default_plan_passes(runner: CliRunner) -> None:
    result = plan(runner, "check")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith(" messages checked, 0 failed; 4 warning(s)")


def test_check_of_the_default_plan_prints_the_summary(runner: CliRunner) -> None:
    result = plan(runner, "check", DEFAULT_PLAN)

    summary = result.stdout.splitlines()[-1]
    assert summary.endswith(" failed; 4 warning(s)")
    assert "CLARION_SLACK_INCIDENTS_WEBHOOK is not set" in result.stdout


def test_check_names_the_file_and_line_of_a_broken_plan(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("update_every: 1h", "update_every: hourly"))

    result = plan(runner, "check", path)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}: invalid communication plan (1 problem(s))",
        "  plan.yaml line 5 (severities.SEV2.update_every): 'hourly' is not a duration; "
        "write 90s, 30m, 2h or 1d",
    ]
    assert result.stdout == ""


def test_check_reads_the_plan_named_by_clarion_plan(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VALID + "colour: blue\n")
    monkeypatch.setenv("CLARION_PLAN", str(path))

    result = plan(runner, "check")

    assert result.exit_code == 1
    assert "  plan.yaml line 15 (colour): unknown key 'colour'" in result.stderr.splitlines()


def test_check_of_a_missing_file_names_it(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "missing-plan.yaml"

    result = plan(runner, "check", path)

    assert result.exit_code == 1
    assert f"{path}: invalid communication plan" in result.stderr
    assert "missing-plan.yaml file: no such file" in result.stderr


def test_check_fails_and_says_why_when_a_message_fails(runner: CliRunner, tmp_path: Path) -> None:
    templates = tmp_path / "templates" / "email"
    templates.mkdir(parents=True)
    shipped = (SHIPPED_TEMPLATES / "message.txt.j2").read_text()
    (templates / "message.txt.j2").write_text(shipped.replace("{{ say.apology() }}", ""))
    path = write(tmp_path, VALID + "templates_dir: templates\n")

    result = plan(runner, "check", path)

    assert result.exit_code == 1
    failures = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert len(failures) == 6  # opened and resolved emails of SEV1 to SEV3
    assert all("no apology" in line for line in failures)
    assert result.stdout.splitlines()[-1] == "36 messages checked, 6 failed"


def test_preview_prints_the_customer_email(runner: CliRunner) -> None:
    result = plan(runner, "preview", "--event", "opened", "--severity", "SEV1")

    assert result.exit_code == 0, result.output
    out = result.stdout
    email = out[out.index("customers · email") :]
    assert "Subject: Investigating: A major outage affecting checkout" in email
    assert "Customers cannot complete checkout." in email
    assert "Next update by 15:00 UTC, Mon 23 Nov 2026, or sooner if anything changes." in email
    assert "(an HTML part is sent as well)" in email
    assert "engineering · slack" in out
    assert '"blocks": [' in out  # the Slack body, as indented JSON


def test_preview_of_one_audience(runner: CliRunner, tmp_path: Path) -> None:
    result = plan(runner, "preview", "-e", "resolved", "-s", "SEV2", "-a", "support")

    assert result.exit_code == 0, result.output
    assert "support · email" in result.stdout
    assert "customers" not in result.stdout
    assert "Resolved: " in result.stdout


def test_preview_rejects_an_unknown_event_listing_the_valid_ones(runner: CliRunner) -> None:
    result = plan(runner, "preview", "--event", "exploded", "--severity", "SEV1")

    assert result.exit_code == 2
    message = " ".join(result.stderr.replace("│", " ").split())
    assert (
        "unknown event 'exploded'; expected one of opened, updated, severity_changed, "
        "update_due, resolved, postmortem_published" in message
    )


def test_preview_rejects_an_unknown_severity_listing_the_valid_ones(runner: CliRunner) -> None:
    result = plan(runner, "preview", "--severity", "SEV9")

    assert result.exit_code == 2
    message = " ".join(result.stderr.replace("│", " ").split())
    assert "unknown severity 'SEV9'; expected one of SEV1/critical" in message
