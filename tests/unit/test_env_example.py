""".env.example documents every setting, nothing else, each with its real default."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shared.settings import Settings

ENV_EXAMPLE = Path(__file__).parents[2] / ".env.example"
SETTING_LINE = re.compile(r"^#\s*CLARION_(?P<name>[A-Z0-9_]+)=(?P<value>.*)$")


def documented() -> dict[str, str]:
    """Field name -> documented default, from the ``# CLARION_X=default`` lines."""
    found: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = SETTING_LINE.match(line)
        if match:
            name = match["name"].lower()
            assert name not in found, f"CLARION_{match['name']} is documented twice"
            found[name] = match["value"]
    return found


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert sorted(documented()) == sorted(Settings.model_fields)


def test_no_setting_is_switched_on_by_copying_the_file() -> None:
    active = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert active == []


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in os.environ:
        if variable.startswith("CLARION_"):
            monkeypatch.delenv(variable)
    return monkeypatch


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_documented_default_is_the_real_default(name: str, clean_env: pytest.MonkeyPatch) -> None:
    value = documented()[name]
    real = Settings(_env_file=None).model_dump()[name]
    if value == "":
        # Unset: the default is "nothing" (None, empty) or computed at start.
        assert real in (None, ()) or Settings.model_fields[name].default_factory is not None
        return
    clean_env.setenv(f"CLARION_{name.upper()}", value)
    parsed = Settings(_env_file=None).model_dump()[name]
    assert _plain(parsed) == _plain(real)
