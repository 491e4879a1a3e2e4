"""Templates compiled at start-up (TemplateEngine.warm): the first message does not wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dispatcher.rendering.engine import RenderFailed, TemplateEngine


def write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(text)


def test_warm_compiles_every_template_and_skips_one_that_does_not_compile(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        {
            "title.txt.j2": "Down: {{ name }}",
            "body.txt.j2": "{% for x in items %}{{ x }}{% endfor %}",
            "broken.txt.j2": "{% for x in %}",
            "notes.md": "not a template",
        },
    )
    engine = TemplateEngine([tmp_path])

    assert engine.warm() == 2
    with pytest.raises(RenderFailed):  # its own render still reports it
        engine.render("broken.txt.j2", {})


def test_a_warmed_template_is_the_one_compiled_at_warm_up(tmp_path: Path) -> None:
    write(tmp_path, {"title.txt.j2": "Down: {{ name }}"})
    engine = TemplateEngine([tmp_path])
    engine.warm()

    write(tmp_path, {"title.txt.j2": "Changed: {{ name }}"})  # templates are read once

    assert engine.render("title.txt.j2", {"name": "api"}) == "Down: api"
