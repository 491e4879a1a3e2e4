"""The one Jinja environment: sandboxed, strict, HTML autoescaped, templates as files."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Final

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    """Templates ending in ``.html.j2`` are autoescaped; ``.txt.j2`` are plain text."""
    env = SandboxedEnvironment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True, default=False
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["sentence"] = sentence
    return env


def sentence(text: str) -> str:
    """End ``text`` with a full stop unless it already ends a sentence."""
    stripped = text.strip()
    return stripped if not stripped or stripped[-1] in ".!?" else f"{stripped}."
