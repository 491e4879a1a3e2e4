"""The README promises only what exists: make targets, settings, files and commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.main import get_command

from services.cli import app
from shared.settings import Settings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def section(title: str) -> str:
    """The text under ``## title``, up to the next section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", MAKEFILE, re.M))


def test_quick_start_is_exactly_make_run_and_make_test() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", section("Quick start"), re.S)

    assert blocks, "the quick start has no command block"
    assert blocks[0].split("\n")[:-1] == ["make run", "make test"]


def test_every_make_target_the_readme_mentions_exists() -> None:
    mentioned = set(re.findall(r"\bmake ([a-z][\w-]*)", README))

    assert {"run", "test"} <= mentioned
    assert mentioned <= make_targets(), f"no such target: {sorted(mentioned - make_targets())}"


TEST_VARIABLES = {"CLARION_RELIABILITY", "CLARION_TEST_REDIS_URL", "CLARION_CHROMIUM"}
"""Read by the test suite, not by Clarion."""


def test_every_clarion_variable_in_the_readme_is_a_real_setting() -> None:
    settings = {f"CLARION_{name.upper()}" for name in Settings.model_fields}
    mentioned = set(re.findall(r"\bCLARION_[A-Z0-9_]+", README)) - TEST_VARIABLES

    assert mentioned <= settings, f"not settings: {sorted(mentioned - settings)}"


def test_the_configuration_table_lists_every_setting() -> None:
    rows = set(re.findall(r"^\| `(CLARION_[A-Z0-9_]+)` \|", section("Configuration"), re.M))

    assert rows == {f"CLARION_{name.upper()}" for name in Settings.model_fields}


def test_every_clarion_subcommand_the_readme_mentions_exists() -> None:
    command = get_command(app)
    assert hasattr(command, "commands")
    # As a command: in a code span or at the start of a line, maybe as .venv/bin/clarion.
    mentioned = set(re.findall(r"(?:`|^|bin/)clarion ([a-z][a-z-]*)", README, re.M))

    assert {"up", "outbox"} <= mentioned

    assert mentioned <= set(command.commands), sorted(mentioned - set(command.commands))


def test_every_up_option_the_readme_mentions_exists() -> None:
    command = get_command(app)
    assert hasattr(command, "commands")
    options = {opt for param in command.commands["up"].params for opt in param.opts}

    # Where the README talks about running it: before the architecture.
    running = README.partition("## Architecture")[0]
    mentioned = set(re.findall(r"`(?:[^`]*\s)?(--[a-z-]+)`", running)) - {"--help"}

    assert "--demo" in mentioned
    assert mentioned <= options, sorted(mentioned - options)


@pytest.mark.parametrize(
    "path",
    sorted(set(re.findall(r"\b((?:services|tests|shared)/[\w./-]+\.(?:py|json))", README))),
)
def test_every_file_the_readme_names_exists(path: str) -> None:
    assert (ROOT / path).is_file(), path


def test_architecture_is_a_mermaid_diagram_of_the_three_services() -> None:
    diagram = re.search(r"```mermaid\n(.*?)```", README, re.S)

    assert diagram
    for name in ("ingest", "scheduler", "dispatcher", "clarion:incident-events", "updates-due"):
        assert name in diagram.group(1)
