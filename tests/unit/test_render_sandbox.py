"""TemplateEngine: plan templates override shipped ones, run sandboxed, and stay bounded."""

from __future__ import annotations

import json
import pprint
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import Environment
from jinja2.filters import do_wordwrap

from services.dispatcher.rendering.engine import (
    RenderFailed,
    TemplateEngine,
    TemplateProblem,
    sentence,
)
from services.dispatcher.rendering.size_limits import (
    json_text,
    pretty,
    repr_length,
    text_length,
    wrapped,
)

LAYOUT = """\
{{ org }} status update
{% block headline %}Something is happening{% endblock %}

{% block body %}{% endblock %}
Affected: {{ impact }}
"""

OPENED = """\
{% extends "email/layout.txt.j2" %}
{% block body %}
Investigating {{ title }}. {{ super() }}
{% endblock %}
"""


def write(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    write(directory, "email/layout.txt.j2", LAYOUT)
    write(directory, "email/opened.txt.j2", OPENED)
    write(directory, "email/resolved.txt.j2", "Resolved: {{ title }}\n")
    return directory


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    directory = tmp_path / "plan-templates"
    directory.mkdir()
    return directory


@pytest.fixture
def engine(plan: Path, shipped: Path) -> TemplateEngine:
    return TemplateEngine([plan, shipped])


def failure(
    engine: TemplateEngine, plan: Path, text: str, name: str = "probe.txt.j2", **values: object
) -> RenderFailed:
    """Render ``text`` as ``name`` (compiled templates are cached: one text per name)."""
    write(plan, name, text)
    with pytest.raises(RenderFailed) as caught:
        engine.render(name, values)
    return caught.value


# --- rendering and lookup -------------------------------------------------------------


def test_renders_values_through_inheritance(engine: TemplateEngine) -> None:
    text = engine.render("email/opened.txt.j2", {"org": "Acme", "title": "Login", "impact": "All"})

    assert (
        text == "Acme status update\nSomething is happening\nInvestigating Login. \nAffected: All"
    )


def test_plan_file_overrides_shipped_file_by_relative_path(
    engine: TemplateEngine, plan: Path
) -> None:
    write(plan, "email/resolved.txt.j2", "All good again: {{ title }}")

    assert engine.render("email/resolved.txt.j2", {"title": "Login"}) == "All good again: Login"


def test_shipped_file_is_used_when_the_plan_does_not_override_it(
    engine: TemplateEngine, plan: Path
) -> None:
    write(plan, "email/opened.txt.j2", "override")

    assert engine.render("email/resolved.txt.j2", {"title": "Login"}) == "Resolved: Login"


def test_override_can_extend_the_shipped_layout(engine: TemplateEngine, plan: Path) -> None:
    write(
        plan,
        "email/opened.txt.j2",
        '{% extends "email/layout.txt.j2" %}{% block headline %}Ours: {{ title }}{% endblock %}',
    )

    text = engine.render("email/opened.txt.j2", {"org": "Acme", "title": "Login", "impact": "All"})

    assert text.splitlines()[:2] == ["Acme status update", "Ours: Login"]


def test_exists_and_first_existing_follow_the_search_path(
    engine: TemplateEngine, plan: Path
) -> None:
    write(plan, "status_page/custom.txt.j2", "x")

    assert engine.exists("email/opened.txt.j2")
    assert engine.exists("status_page/custom.txt.j2")
    assert not engine.exists("email/missing.txt.j2")
    assert not engine.exists("../templates/email/opened.txt.j2")
    assert (
        engine.first_existing(["email/missing.txt.j2", "status_page/custom.txt.j2"])
        == "status_page/custom.txt.j2"
    )
    assert engine.first_existing(["nope.j2", "also-nope.j2"]) is None


def test_whitespace_control_trims_blocks_and_drops_the_trailing_newline(
    engine: TemplateEngine, plan: Path
) -> None:
    write(
        plan,
        "ws.txt.j2",
        "{% for n in names %}\n    {% if n %}\n{{ n }}\n    {% endif %}\n{% endfor %}\n",
    )

    write(plan, "line.txt.j2", "hi\n")

    assert engine.render("ws.txt.j2", {"names": ["a", "", "b"]}) == "a\nb\n"
    assert engine.render("line.txt.j2", {}) == "hi"


# --- blocks ---------------------------------------------------------------------------


def test_render_block_renders_an_overridden_block_with_super(engine: TemplateEngine) -> None:
    body = engine.render_block("email/opened.txt.j2", "body", {"title": "Login"})

    assert body == "Investigating Login. \n"


def test_render_block_renders_a_block_inherited_from_the_layout(engine: TemplateEngine) -> None:
    assert engine.render_block("email/opened.txt.j2", "headline", {}) == "Something is happening"


def test_render_block_of_a_missing_block_fails(engine: TemplateEngine) -> None:
    with pytest.raises(RenderFailed) as caught:
        engine.render_block("email/opened.txt.j2", "subject", {})

    assert caught.value.reason == "block 'subject' not found"
    assert caught.value.template == "templates/email/opened.txt.j2"


def test_render_block_reports_the_template_line(engine: TemplateEngine) -> None:
    with pytest.raises(RenderFailed) as caught:
        engine.render_block("email/opened.txt.j2", "body", {})

    assert (caught.value.template, caught.value.line) == ("templates/email/opened.txt.j2", 3)
    assert caught.value.reason == "'title' is undefined"


def test_blocks_include_inherited_ones(engine: TemplateEngine) -> None:
    assert engine.blocks("email/opened.txt.j2") == frozenset({"headline", "body"})
    assert engine.blocks("email/resolved.txt.j2") == frozenset()


# --- errors name the template and line -------------------------------------------------


def test_undefined_variable_is_named_with_template_and_line(
    engine: TemplateEngine, plan: Path
) -> None:
    write(plan, "email/opened.txt.j2", "Hello\n\nThe problem:\n{{ impact }}\n")

    with pytest.raises(RenderFailed) as caught:
        engine.render("email/opened.txt.j2", {})

    error = caught.value
    assert (error.template, error.line) == ("plan-templates/email/opened.txt.j2", 4)
    assert error.reason == "'impact' is undefined"
    assert str(error) == "plan-templates/email/opened.txt.j2 line 4: 'impact' is undefined"


def test_undefined_variable_in_a_layout_names_the_layout(engine: TemplateEngine) -> None:
    with pytest.raises(RenderFailed) as caught:
        engine.render("email/opened.txt.j2", {"org": "Acme", "title": "Login"})

    assert (caught.value.template, caught.value.line) == ("templates/email/layout.txt.j2", 5)
    assert caught.value.reason == "'impact' is undefined"


def test_syntax_error_names_file_and_line(engine: TemplateEngine, plan: Path) -> None:
    write(plan, "email/opened.txt.j2", "line one\n{% if title %}\nno end\n")

    with pytest.raises(RenderFailed) as caught:
        engine.render("email/opened.txt.j2", {"title": "x"})

    assert caught.value.template == "plan-templates/email/opened.txt.j2"
    assert caught.value.line == 3
    assert caught.value.reason.startswith("syntax error: ")
    assert "endif" in caught.value.reason


def test_check_syntax_reports_broken_reachable_templates(
    plan: Path, shipped: Path, engine: TemplateEngine
) -> None:
    write(shipped, "email/updated.txt.j2", "fine\n{{ title }\n")  # broken and shadowed
    write(plan, "email/updated.txt.j2", "fine\n{{ title }}\n")
    write(plan, "email/severity_changed.txt.j2", "ok\nok\n{% for x in %}{% endfor %}\n")
    write(plan, "notes.txt", "{{ not a template")

    problems = engine.check_syntax()

    assert [(p.path, p.line) for p in problems] == [
        ("plan-templates/email/severity_changed.txt.j2", 3)
    ]
    assert all(
        isinstance(p, TemplateProblem) and p.reason.startswith("syntax error") for p in problems
    )


def test_check_syntax_is_empty_when_everything_compiles(engine: TemplateEngine) -> None:
    assert engine.check_syntax() == []


def test_missing_template_fails(engine: TemplateEngine) -> None:
    with pytest.raises(RenderFailed) as caught:
        engine.render("email/nope.txt.j2", {})

    assert str(caught.value) == "email/nope.txt.j2: template not found"


def test_missing_include_names_the_including_line(engine: TemplateEngine, plan: Path) -> None:
    error = failure(engine, plan, "first\n{% include 'parts/nope.txt.j2' %}")

    assert (error.template, error.line) == ("plan-templates/probe.txt.j2", 2)
    assert error.reason == "template not found: parts/nope.txt.j2"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a\n{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
        ("a\n{{ 1 + 'x' }}", "TypeError: unsupported operand type(s) for +: 'int' and 'str'"),
        ("a\n{{ 2.0 ** 5000 }}", "OverflowError: "),
    ],
)
def test_other_exceptions_become_render_failed(
    engine: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    error = failure(engine, plan, text)

    assert error.line == 2
    assert error.reason.startswith(reason)


# --- the sandbox ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ ''.__class__ }}", "refused: access to attribute '__class__' of 'str'"),
        (
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "refused: access to attribute '__class__' of 'str'",
        ),
        ("{{ ''|attr('__class__') }}", "refused: access to attribute '__class__' of 'str'"),
        (
            r"{{ (''|attr('\x5f\x5fclass\x5f\x5f')) }}",
            "refused: access to attribute '__class__' of 'str'",
        ),
        ("{{ cycler.__init__.__globals__ }}", "refused: access to attribute '__init__'"),
        (
            "{{ self._TemplateReference__context }}",
            "refused: access to attribute '_TemplateReference__context'",
        ),
        ("{{ namespace.__init__.__globals__ }}", "refused: access to attribute '__init__'"),
        ("{{ lipsum.__globals__ }}", "'lipsum' is undefined"),
        ("{{ joiner.__call__.__self__ }}", "refused: access to attribute '__call__'"),
        ("{{ '{0.__class__}'.format('') }}", "refused: access to attribute '__class__'"),
    ],
)
def test_escapes_are_refused_and_leak_nothing(
    engine: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    error = failure(engine, plan, text)

    assert error.reason.startswith(reason)
    assert "<class" not in str(error)
    assert "<function" not in str(error)
    assert "__builtins__" not in str(error)


def test_mutating_a_list_is_refused(engine: TemplateEngine, plan: Path) -> None:
    error = failure(engine, plan, "{% set x = [] %}{{ x.append(1) }}")

    assert error.reason == "refused: access to attribute 'append' of 'list' object is unsafe."


def test_values_cannot_be_mutated(engine: TemplateEngine, plan: Path) -> None:
    changes: list[str] = ["one"]
    settings = {"org": "Acme"}

    appended = failure(engine, plan, "{{ changes.append('two') }}", "a.txt.j2", changes=changes)
    updated = failure(
        engine, plan, "{{ settings.update(org='Evil') }}", "u.txt.j2", settings=settings
    )

    assert appended.reason.startswith("refused: access to attribute 'append' of 'list'")
    assert updated.reason.startswith("refused: access to attribute 'update' of 'dict'")

    assert changes == ["one"]
    assert settings == {"org": "Acme"}


def test_huge_string_repetition_is_refused(engine: TemplateEngine, plan: Path) -> None:
    error = failure(engine, plan, "{{ 'a' * 1000000000 }}")

    assert error.reason == "refused: repetition would produce 1000000000 items, more than 200000"


def test_huge_list_repetition_is_refused(engine: TemplateEngine, plan: Path) -> None:
    assert failure(engine, plan, "{{ (1000000 * [1, 2])|length }}").reason.startswith(
        "refused: repetition would produce 2000000 items"
    )


def test_small_repetition_and_powers_still_work(engine: TemplateEngine, plan: Path) -> None:
    write(plan, "ok.txt.j2", "{{ 'ab' * 3 }} {{ [0] * 2 }} {{ 2 ** 10 }} {{ 7 * 6 }} {{ 2 ** -1 }}")

    assert engine.render("ok.txt.j2", {}) == "ababab [0, 0] 1024 42 0.5"


@pytest.mark.parametrize("text", ["{{ 9 ** 9 ** 9 }}", "{{ 9 ** (9 ** 9) }}", "{{ 10 ** 1000 }}"])
def test_huge_powers_are_refused(engine: TemplateEngine, plan: Path, text: str) -> None:
    assert failure(engine, plan, text).reason == "refused: exponentiation result exceeds 128 bits"


def test_huge_integer_products_are_refused(engine: TemplateEngine, plan: Path) -> None:
    text = "{% set n = 2 ** 100 %}{{ n * n }}"

    assert failure(engine, plan, text).reason == "refused: multiplication result exceeds 128 bits"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ 'a'|center(10 ** 9) }}", "refused: center width 1000000000 exceeds 200000"),
        ("{{ 'a'.ljust(10 ** 9) }}", "refused: ljust width 1000000000 exceeds 200000"),
        ("{{ ('a'|safe).rjust(10 ** 9) }}", "refused: rjust width 1000000000 exceeds 200000"),
        (
            "{{ ('a' * 100000)|replace('a', 'aaa') }}",
            "refused: replace result exceeds 200000 characters",
        ),
        (
            "{{ ('a' * 100000).replace('a', 'aaa') }}",
            "refused: replace result exceeds 200000 characters",
        ),
    ],
)
def test_string_operations_with_huge_results_are_refused(
    engine: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    assert failure(engine, plan, text).reason == reason


def test_doubling_through_a_namespace_is_refused(engine: TemplateEngine, plan: Path) -> None:
    text = (
        "{% set ns = namespace(s='a') %}"
        "{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    )

    # ~ adds up its operands first, so the double is not even built.
    assert failure(engine, plan, text).reason == "refused: ~ result exceeds 200000 characters"


def test_doubling_through_macro_recursion_is_refused(engine: TemplateEngine, plan: Path) -> None:
    text = (
        "{% macro grow(s, n) %}{% if n %}{{ grow(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
        "{{ grow('a', 64) }}"
    )

    assert failure(engine, plan, text).reason == "refused: ~ result exceeds 200000 characters"


def test_a_namespace_value_longer_than_the_limit_is_refused(
    engine: TemplateEngine, plan: Path
) -> None:
    text = "{% set ns = namespace(s=long) %}{{ ns.s|length }}"

    assert failure(engine, plan, text, long="a" * 200_001).reason == (
        "refused: namespace value 's' is longer than the limit of 200000"
    )


def test_a_macro_argument_longer_than_the_limit_is_refused(
    engine: TemplateEngine, plan: Path
) -> None:
    text = "{% macro show(s) %}{{ s|length }}{% endmacro %}{{ show(long) }}"

    assert failure(engine, plan, text, long="a" * 200_001).reason == (
        "refused: a macro argument is longer than the limit of 200000"
    )


def test_range_keeps_the_sandbox_limit(engine: TemplateEngine, plan: Path) -> None:
    error = failure(engine, plan, "{% for i in range(10 ** 6) %}{% endfor %}")

    assert error.reason.startswith("OverflowError: Range too big.")


# --- formatting and joining are measured before they are built ------------------------

FORMAT_WIDTH = "refused: format width or precision 1000000000 exceeds 200000"
PRINTF_WIDTH = "refused: format width 1000000000 exceeds 200000"
JOIN_TOO_LONG = "refused: join result exceeds 200000 characters"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ '{:>1000000000}'.format('a') }}", FORMAT_WIDTH),
        ("{{ '{:.1000000000f}'.format(1.0) }}", FORMAT_WIDTH),
        ("{{ '{:{}}'.format('a', 1000000000) }}", FORMAT_WIDTH),
        ("{{ '{:>{w}}'.format('a', w='1000000000') }}", FORMAT_WIDTH),
        ("{{ '{x:{y}}'.format_map({'x': 'a', 'y': 1000000000}) }}", FORMAT_WIDTH),
        ("{{ ('{:>1000000000}'|safe).format('a') }}", FORMAT_WIDTH),
        (
            "{{ ('{:' ~ '9' * 5000 ~ '}').format('a') }}",
            "refused: format width or precision 99999999999999999999... (5000 digits)"
            " exceeds 200000",
        ),
        (
            "{{ ('{0}' * 60000).format('a' * 199999) }}",
            "refused: format result exceeds 200000 characters",
        ),
    ],
)
def test_str_format_is_refused_before_a_huge_field_or_result_is_built(
    engine: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    assert failure(engine, plan, text).reason == reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ '%1000000000s' % 'a' }}", PRINTF_WIDTH),
        ("{{ '%.1000000000f' % 1.0 }}", "refused: format precision 1000000000 exceeds 200000"),
        ("{{ '%*s' % (1000000000, 'a') }}", PRINTF_WIDTH),
        ("{{ '%.*f' % (1000000000, 1.0) }}", "refused: format precision 1000000000 exceeds 200000"),
        ("{{ '%-*s' % (-1000000000, 'a') }}", "refused: format width -1000000000 exceeds 200000"),
        ("{{ '%(a)1000000000s' % {'a': 'x'} }}", PRINTF_WIDTH),
        ("{{ '%1000000000s'|format('a') }}", PRINTF_WIDTH),
        ("{{ '%(a)1000000000s'|format(a='x') }}", PRINTF_WIDTH),
        ("{{ ('%1000000000s'|safe) % 'a' }}", PRINTF_WIDTH),
        (
            "{{ ('%s' * 60000) % (('a' * 199999,) * 60000) }}",
            "refused: % formatting result exceeds 200000 characters",
        ),
        (
            "{{ ('%s' * 60000)|format(*(('a' * 199999,) * 60000)) }}",
            "refused: % formatting result exceeds 200000 characters",
        ),
    ],
)
def test_printf_formatting_is_refused_before_a_huge_result_is_built(
    engine: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    assert failure(engine, plan, text).reason == reason


@pytest.mark.parametrize(
    "text",
    [
        "{{ (['a' * 199999] * 199999)|join }}",
        "{{ (['a' * 100000] * 2)|join('-') }}",
        "{{ range(100000)|map('string')|join('xyz') }}",
        "{{ ', '.join(['a' * 199999] * 199999) }}",
        "{{ ('-'|safe).join(['a' * 100000] * 2) }}",
        "{{ ''.join(['a' * 199999, 'a' * 199999]|map('upper')) }}",
    ],
)
def test_joins_are_refused_before_a_huge_result_is_built(
    engine: TemplateEngine, plan: Path, text: str
) -> None:
    assert failure(engine, plan, text).reason == JOIN_TOO_LONG


def test_join_by_attribute_counts_the_joined_attributes(engine: TemplateEngine, plan: Path) -> None:
    users = [{"name": "a" * 150000}, {"name": "b" * 150000}]

    error = failure(engine, plan, "{{ users|join(attribute='name') }}", users=users)

    assert error.reason == JOIN_TOO_LONG


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (r"{{ ('a\n' * 99999)|indent(1000) }}", "refused: indent result exceeds 200000 characters"),
        (
            r"{{ ('a\n' * 99999)|indent('x' * 1000) }}",
            "refused: indent result exceeds 200000 characters",
        ),
        (
            r"{{ ('\t' * 199999).expandtabs(1000) }}",
            "refused: expandtabs result exceeds 200000 characters",
        ),
    ],
)
def test_indent_and_expandtabs_are_refused_before_a_huge_result_is_built(
    engine: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    assert failure(engine, plan, text).reason == reason


def test_a_refused_format_names_the_template_and_line(engine: TemplateEngine, plan: Path) -> None:
    error = failure(engine, plan, "first\nsecond {{ '%1000000000s' % 'a' }}")

    assert (error.template, error.line) == ("plan-templates/probe.txt.j2", 2)
    assert str(error) == f"plan-templates/probe.txt.j2 line 2: {PRINTF_WIDTH}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ '{:>5}'.format('a') }}", "    a"),
        ("{{ '{:^7.2f}'.format(3.14159) }}", " 3.14  "),
        ("{{ '{0}-{0}-{1}'.format('x', 'y') }}", "x-x-y"),
        ("{{ '{:,}'.format(1234567) }}", "1,234,567"),
        ("{{ '{:{}}'.format('a', 3) }}|", "a  |"),
        ("{{ '{x}{y:>3}'.format_map({'x': 1, 'y': 2}) }}", "1  2"),
        ("{{ '{:%Y-%m-%d}'.format(day) }}", "2024-05-01"),
        ("{{ ('<b>{:>5}</b>'|safe).format('<') }}", "<b>    &lt;</b>"),
        ("{{ '%05d' % 42 }}", "00042"),
        ("{{ '%-4s|%.2f|%*d' % ('ab', 3.14159, 4, 7) }}", "ab  |3.14|   7"),
        ("{{ '%(n)03d%%' % {'n': 7} }}", "007%"),
        ("{{ 17 % 5 }}", "2"),
        ("{{ '%s, %s!'|format('Hello', 'World') }}", "Hello, World!"),
        ("{{ '%(a)s'|format(a='x') }}", "x"),
        ("{{ ['a', 'b', 'c']|join(', ') }}", "a, b, c"),
        ("{{ [1, 2, 3]|map('string')|join('-') }}", "1-2-3"),
        ("{{ users|join(', ', attribute='name') }}", "Ann, Bo"),
        ("{{ '/'.join(['x', 'y']|map('upper')) }}", "X/Y"),
        (r"{{ 'a\nb'|indent(2, first=true) }}", "  a\n  b"),
        (r"{{ 'a\tb'.expandtabs(4) }}", "a   b"),
    ],
)
def test_small_formats_and_joins_still_work(
    engine: TemplateEngine, plan: Path, text: str, expected: str
) -> None:
    write(plan, "ok.txt.j2", text)
    values = {"day": date(2024, 5, 1), "users": [{"name": "Ann"}, {"name": "Bo"}]}

    assert engine.render("ok.txt.j2", values) == expected


def test_formats_and_joins_up_to_the_limit_are_rendered(plan: Path, shipped: Path) -> None:
    engine = TemplateEngine([plan, shipped], max_output_chars=1000)
    write(
        plan,
        "full.txt.j2",
        "{{ '{:>1000}'.format('a')|length }} {{ ('%1000s' % 'a')|length }}"
        " {{ (['a' * 500] * 2)|join|length }}",
    )

    assert engine.render("full.txt.j2", {}) == "1000 1000 1000"
    error = failure(engine, plan, "{{ (['a' * 500] * 2)|join('-') }}")
    assert error.reason == "refused: join result exceeds 1000 characters"


# --- time and output budgets ----------------------------------------------------------


def test_loops_without_output_stop_at_the_time_budget(plan: Path, shipped: Path) -> None:
    engine = TemplateEngine([plan, shipped], time_budget=timedelta(milliseconds=50))
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

    error = failure(engine, plan, text)

    assert error.reason == "render took longer than the time budget of 50 ms"
    assert (error.template, error.line) == ("plan-templates/probe.txt.j2", 1)


def test_the_time_budget_applies_per_render(plan: Path, shipped: Path) -> None:
    engine = TemplateEngine([plan, shipped], time_budget=timedelta(milliseconds=50))
    failure(
        engine,
        plan,
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )

    assert engine.render("email/resolved.txt.j2", {"title": "Login"}) == "Resolved: Login"


def test_output_past_the_limit_stops_the_render(engine: TemplateEngine, plan: Path) -> None:
    error = failure(engine, plan, "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}")

    assert error.reason == "output exceeds 200000 characters"
    assert error.template == "plan-templates/probe.txt.j2"


def test_output_up_to_the_limit_is_rendered(plan: Path, shipped: Path) -> None:
    engine = TemplateEngine([plan, shipped], max_output_chars=1000)
    write(plan, "big.txt.j2", "{% for i in range(10) %}{{ 'x' * 100 }}{% endfor %}")

    assert engine.render("big.txt.j2", {}) == "x" * 1000
    error = failure(engine, plan, "{% for i in range(10) %}{{ 'x' * 100 }}{% endfor %}!")
    assert error.reason == "output exceeds 1000 characters"


# --- escaping and filters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("email/note.html.j2", "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"),
        ("email/note.html", "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"),
        ("email/note.txt.j2", "<p><b>Tom & Jerry</b></p>"),
    ],
)
def test_autoescape_applies_to_html_templates_only(
    engine: TemplateEngine, plan: Path, name: str, expected: str
) -> None:
    write(plan, name, "<p>{{ title }}</p>")

    assert engine.render(name, {"title": "<b>Tom & Jerry</b>"}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("we are on it", "we are on it."),
        ("Fixed!", "Fixed!"),
        ("Is it back?", "Is it back?"),
        ("Done.", "Done."),
        ("", ""),
        ("  spaced out  ", "spaced out."),
    ],
)
def test_sentence_ends_text_with_a_full_stop(text: str, expected: str) -> None:
    assert sentence(text) == expected


def test_sentence_filter_in_templates_escapes_once(engine: TemplateEngine, plan: Path) -> None:
    write(plan, "s.html.j2", "{{ impact|sentence }} {{ ''|sentence }}|")
    write(plan, "s.txt.j2", "{{ impact|sentence }}")

    assert engine.render("s.html.j2", {"impact": "Tom & Jerry"}) == "Tom &amp; Jerry. |"
    assert engine.render("s.txt.j2", {"impact": "Tom & Jerry"}) == "Tom & Jerry."


# --- the text of containers, and filters that grow, are measured before they are built -----

LIMIT = 1000  # small, so a bomb the checks missed would build about a megabyte, not gigabytes
BIG_LIST = "['a' * 999] * 999"  # a thousand references to one string: a megabyte of text


class Untouchable(list[str]):
    """A list whose text must never be built: its ``repr`` (and so ``str``) raises.

    The size checks walk a list without calling its ``repr``; Python's ``str``, ``format``,
    ``%``, ``pprint`` and Markup's escaping all call it.
    """

    def __repr__(self) -> str:
        raise AssertionError("the text of the list was built")


@pytest.fixture
def small(plan: Path, shipped: Path) -> TemplateEngine:
    return TemplateEngine([plan, shipped], max_output_chars=LIMIT)


def rendered(engine: TemplateEngine, plan: Path, text: str, name: str = "ok.txt.j2") -> str:
    write(plan, name, text)
    return engine.render(name, {"users": [{"n": 1, "name": "Ann"}, {"n": 2, "name": "Bo"}]})


def text_refusal(kind: str, where: str) -> str:
    return f"refused: the text of a {kind} {where} exceeds {LIMIT} characters"


@pytest.mark.parametrize("name", ["probe.txt.j2", "probe.html.j2"])
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"{{{{ {BIG_LIST} }}}}", text_refusal("list", "to print")),
        ("{{ big }}", text_refusal("Untouchable", "to print")),
        ("{{ {'k': big} }}", text_refusal("dict", "to print")),
        ("{{ (big,) }}", text_refusal("tuple", "to print")),
        ("{{ {'k': big}.items() }}", text_refusal("dict_items", "to print")),
        ("{% set ns = namespace(x=big) %}{{ ns }}", text_refusal("Namespace", "to print")),
        ("{{ big ~ '' }}", f"refused: ~ result exceeds {LIMIT} characters"),
        ("{{ [big]|join(', ') }}", f"refused: join result exceeds {LIMIT} characters"),
        ("{{ ('-'|safe).join([big]) }}", f"refused: join result exceeds {LIMIT} characters"),
        ("{{ '{}'.format(big) }}", f"refused: format result exceeds {LIMIT} characters"),
        ("{{ '{!r:.5}'.format(big) }}", f"refused: format result exceeds {LIMIT} characters"),
        (
            "{{ '{x}'.format_map({'x': big}) }}",
            f"refused: format result exceeds {LIMIT} characters",
        ),
        ("{{ '%s' % (big,) }}", f"refused: % formatting result exceeds {LIMIT} characters"),
        ("{{ '%.3r' % (big,) }}", f"refused: % formatting result exceeds {LIMIT} characters"),
        ("{{ '%(x)s'|format(x=big) }}", f"refused: % formatting result exceeds {LIMIT} characters"),
        ("{{ big|pprint }}", text_refusal("Untouchable", "for the pprint filter")),
        ("{{ {'k': big}|xmlattr }}", f"refused: xmlattr result exceeds {LIMIT} characters"),
        ("{{ [('k', big)]|urlencode }}", f"refused: urlencode result exceeds {LIMIT} characters"),
    ],
)
def test_the_text_of_a_large_container_is_never_built(
    small: TemplateEngine, plan: Path, text: str, reason: str, name: str
) -> None:
    big = Untouchable(["a" * 999] * 999)

    assert failure(small, plan, text, name, big=big).reason == reason


@pytest.mark.parametrize(
    "usage",
    [
        "string", "e", "escape", "forceescape", "safe", "upper", "lower", "capitalize", "title",
        "trim", "striptags", "center(10)", "wordcount", "replace('a', 'b')", "urlize",
        "sentence", "format", "indent", "wordwrap", "urlencode",
    ],
)  # fmt: skip
def test_filters_that_turn_a_container_into_text_measure_it_first(
    small: TemplateEngine, plan: Path, usage: str
) -> None:
    name = usage.partition("(")[0]
    namespace = "{% set ns = namespace(x=big) %}"  # urlencode quotes what is not iterable

    error = failure(small, plan, f"{namespace}{{{{ ns|{usage} }}}}", big=Untouchable(["a"] * 999))

    assert error.reason == text_refusal("Namespace", f"for the {name} filter")


def test_a_cycle_prints_as_python_prints_it(small: TemplateEngine, plan: Path) -> None:
    text = "{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}"

    assert rendered(small, plan, text) == "<Namespace {'me': <Namespace {...}>}>"


def test_deep_nesting_is_measured_without_recursion(small: TemplateEngine, plan: Path) -> None:
    text = (
        "{% set ns = namespace(x=[]) %}"
        "{% for i in range(3000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"
    )

    assert failure(small, plan, text).reason == text_refusal("list", "to print")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ [1, 'a', none, (2,), {'k': [true]}] }}", "[1, 'a', None, (2,), {'k': [True]}]"),
        ("{{ range(150)|list }}", str(list(range(150)))),  # 640 characters: under the limit
        ("{{ {'b': 1}.items() }} {{ (1, 2) }}", "dict_items([('b', 1)]) (1, 2)"),
        ("{{ [1, 2]|string|length }} {{ [1, 2]|upper }}", "6 [1, 2]"),
        ("{{ [1, 2] ~ '!' }} {{ 'a' ~ 1 ~ none }}", "[1, 2]! a1None"),
        ("{{ [[1], [2]]|join('-') }}", "[1]-[2]"),
        ("{{ '{} {!r}'.format([1], 'x') }} {{ '%s %r' % ([1], 'x') }}", "[1] 'x' [1] 'x'"),
    ],
)
def test_small_containers_still_print(
    small: TemplateEngine, plan: Path, text: str, expected: str
) -> None:
    assert rendered(small, plan, text) == expected


def test_a_container_just_past_the_limit_is_refused(small: TemplateEngine, plan: Path) -> None:
    assert failure(small, plan, "{{ range(250)|list }}").reason == text_refusal("list", "to print")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"{{{{ ({BIG_LIST})|tojson }}}}", f"refused: tojson result exceeds {LIMIT} characters"),
        (
            "{{ (range(100)|list)|tojson(999) }}",
            f"refused: tojson result exceeds {LIMIT} characters",
        ),
        ("{{ [1]|tojson(10 ** 9) }}", f"refused: tojson indent 1000000000 exceeds {LIMIT}"),
        (
            "{{ {('k' * 500): [0] * 100}|pprint }}",  # each of 100 lines indented by 505
            f"refused: pprint result exceeds {LIMIT} characters",
        ),
        (
            "{{ ('a ' * 400)|wordwrap(1, wrapstring='x' * 999) }}",
            f"refused: wordwrap result exceeds {LIMIT} characters",
        ),
        (
            "{{ ('a' * 999)|wordwrap(1, wrapstring='<br>') }}",
            f"refused: wordwrap result exceeds {LIMIT} characters",
        ),
        (
            "{{ [1]|batch(10 ** 9, 0)|list }}",
            f"refused: batch size 1000000000 with fill_with exceeds {LIMIT}",
        ),
        ("{{ [1]|slice(10 ** 9)|list }}", f"refused: slice count 1000000000 exceeds {LIMIT}"),
        (
            "{{ [1]|slice(slices=10 ** 9, fill_with=0)|list }}",
            f"refused: slice count 1000000000 exceeds {LIMIT}",
        ),
        ("{{ ([[0] * 999] * 999)|sum(start=[]) }}", f"refused: sum result exceeds {LIMIT} items"),
        (
            "{{ ('www.a.com ' * 50)|urlize(rel='x' * 999) }}",
            f"refused: urlize result exceeds {LIMIT} characters",
        ),
        (
            "{{ dict.fromkeys(range(100)|map('string'), 'a' * 999)|xmlattr }}",
            f"refused: xmlattr result exceeds {LIMIT} characters",
        ),
        (
            "{{ ([('a', 'b' * 999)] * 999)|urlencode }}",
            f"refused: urlencode result exceeds {LIMIT} characters",
        ),
    ],
)
def test_growing_filters_are_refused_before_a_huge_result_is_built(
    small: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    assert failure(small, plan, text).reason == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ {'b': [1, 2], 'a': none}|tojson }}", '{"a": null, "b": [1, 2]}'),
        ("{{ {'a': [1]}|tojson(2) }}", '{\n  "a": [\n    1\n  ]\n}'),
        ("{{ '<a>'|tojson }}", '"\\u003ca\\u003e"'),
        ("{{ {'b': [1, 2], 'a': 'x'}|pprint }}", "{'a': 'x', 'b': [1, 2]}"),
        ("{{ 'one two three four'|wordwrap(9) }}", "one two\nthree\nfour"),
        ("{{ 'one two three'|wordwrap(7, wrapstring='<br>') }}", "one two<br>three"),
        ("{{ 'ab cd\n\nef'|wordwrap(2) }}", "ab\ncd\n\nef"),
        ("{{ 'abcdef'|wordwrap(4, false) }}", "abcdef"),
        ("{{ [1, 2, 3, 4, 5]|batch(2, 0)|list }}", "[[1, 2], [3, 4], [5, 0]]"),
        ("{{ [1, 2, 3]|batch(10 ** 9)|list }}", "[[1, 2, 3]]"),
        ("{{ [1, 2, 3, 4, 5]|slice(2, 0)|list }}", "[[1, 2, 3], [4, 5, 0]]"),
        ("{{ [[1], [2, 3]]|sum(start=[]) }} {{ users|sum(attribute='n') }}", "[1, 2, 3] 3"),
        (
            "{{ 'see www.example.com'|urlize(target='_blank', rel='x') }}",
            'see <a href="https://www.example.com" rel="noopener x" target="_blank">'
            "www.example.com</a>",
        ),
        ("{{ {'class': 'a', 'no': none}|xmlattr }}", ' class="a"'),
        ("{{ users|map(attribute='name')|list|xmlattr if false else 'skip' }}", "skip"),
        ("{{ {'a': 'b c'}|urlencode }} {{ [('k', 1)]|urlencode }}", "a=b+c k=1"),
    ],
)
def test_small_uses_of_growing_filters_still_work(
    small: TemplateEngine, plan: Path, text: str, expected: str
) -> None:
    assert rendered(small, plan, text) == expected


def test_wordwrap_and_pprint_up_to_the_limit_are_rendered(
    small: TemplateEngine, plan: Path
) -> None:
    text = "{{ ('word ' * 150)|wordwrap(9)|length }} {{ (range(120)|list)|pprint|length }}"

    # 150 five-letter lines (the spaces become newlines, the last one goes), and pprint's
    # one item a line once the list passes 80 columns.
    assert rendered(small, plan, text) == f"{150 * 5 - 1} {len(pprint.pformat(list(range(120))))}"


# --- what a template captures, concatenates or adds is counted before it is joined ---------

CAPTURED = f"refused: captured template output exceeds {LIMIT} characters"


@pytest.mark.parametrize(
    "text",
    [
        "{% macro m() %}{% for i in range(999) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
        "{% set x %}{% for i in range(999) %}{{ s }}{% endfor %}{% endset %}{{ x|length }}",
        "{% filter length %}{% for i in range(999) %}{{ s }}{% endfor %}{% endfilter %}",
        "{% macro box() %}{{ caller()|length }}{% endmacro %}"
        "{% call box() %}{% for i in range(999) %}{{ s }}{% endfor %}{% endcall %}",
        "{% if false %}{% block b %}{% for i in range(999) %}{{ s }}{% endfor %}{% endblock %}"
        "{% endif %}{{ self.b()|length }}",
    ],
    ids=["macro", "set block", "filter block", "call block", "block reference"],
)
def test_captured_output_is_refused_before_it_is_joined(
    small: TemplateEngine, plan: Path, text: str
) -> None:
    error = failure(small, plan, "{% set s = 'a' * 999 %}" + text)

    assert error.reason == CAPTURED


@pytest.mark.parametrize(
    "text",
    [
        "{% import 'parts/loop.txt.j2' as m %}{{ m.n }}",
        "{% include 'parts/loop.txt.j2' without context %}",
    ],
)
def test_the_output_of_an_imported_template_is_bounded(
    small: TemplateEngine, plan: Path, text: str
) -> None:
    write(
        plan,
        "parts/loop.txt.j2",
        "{% set n = 1 %}{% for i in range(999) %}{{ 'a' * 999 }}{% endfor %}",
    )

    error = failure(small, plan, text)

    assert error.reason == f"refused: the output of an imported template exceeds {LIMIT} characters"
    assert (error.template, error.line) == ("plan-templates/probe.txt.j2", 1)


def test_captured_and_imported_output_within_the_limit_works(
    small: TemplateEngine, plan: Path
) -> None:
    write(plan, "parts/lib.txt.j2", "{% macro hi(n) %}Hi {{ n }}{% endmacro %}lib body")
    text = (
        "{% import 'parts/lib.txt.j2' as lib %}{% set x %}{{ 'a' * 400 }}{% endset %}"
        "{% macro box() %}[{{ caller() }}]{% endmacro %}"
        "{{ lib.hi('Ann') }}|{{ lib }}|{% include 'parts/lib.txt.j2' without context %}|"
        "{{ x|length }}|{% call box() %}in{% endcall %}|{% filter upper %}up{% endfilter %}"
    )

    assert rendered(small, plan, text) == "Hi Ann|lib body|lib body|400|[in]|UP"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "{{ ('a' * 600 + 'a' * 600)|length }}",
            f"refused: addition would produce 1200 items, more than {LIMIT}",
        ),
        (
            "{{ ([0] * 600 + [0] * 600)|length }}",
            f"refused: addition would produce 1200 items, more than {LIMIT}",
        ),
        (
            "{% set s = 'a' * 400 %}{{ (s ~ s ~ s)|length }}",
            f"refused: ~ result exceeds {LIMIT} characters",
        ),
        (
            "{{ ('a' * 999).translate({97: 'bb'}) }}",
            f"refused: translate result exceeds {LIMIT} characters",
        ),
        ("{{ 'a'.encode().center(10 ** 9) }}", f"refused: center width 1000000000 exceeds {LIMIT}"),
        ("{{ 'a'.encode().zfill(10 ** 9) }}", f"refused: zfill width 1000000000 exceeds {LIMIT}"),
        (
            "{{ ('a' * 999).encode().replace('a'.encode(), 'bb'.encode()) }}",
            f"refused: replace result exceeds {LIMIT} characters",
        ),
        (
            "{{ ('\t' * 999).encode().expandtabs(8) }}",
            f"refused: expandtabs result exceeds {LIMIT} characters",
        ),
        (
            "{{ '%1000000000s'.encode() % 'a'.encode() }}",
            f"refused: format width 1000000000 exceeds {LIMIT}",
        ),
        (
            "{{ ('%b' * 400).encode() % ((('a' * 999).encode(),) * 400) }}",
            f"refused: % formatting result exceeds {LIMIT} characters",
        ),
        (
            "{{ ''.encode().join([('a' * 999).encode()] * 999) }}",
            f"refused: join result exceeds {LIMIT} characters",
        ),
    ],
)  # fmt: skip
def test_growing_operations_and_bytes_are_refused_before_they_are_built(
    small: TemplateEngine, plan: Path, text: str, reason: str
) -> None:
    assert failure(small, plan, text).reason == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ 'a' + 'b' }} {{ [1] + [2] }} {{ (1,) + (2,) }} {{ 1 + 2.5 }}", "ab [1, 2] (1, 2) 3.5"),
        ("{{ ('a' * 500 + 'a' * 500)|length }}", "1000"),
        ("{{ 'abc'.translate({97: 'xy', 98: none}) }}", "xyc"),
        ("{{ 'a-b'.encode().replace('-'.encode(), ', '.encode()).decode() }}", "a, b"),
        ("{{ ('%sb' % 'a'.encode()) }} {{ ('%b!'.encode() % 'a'.encode()).decode() }}", "b'a'b a!"),
    ],
)
def test_small_additions_translations_and_bytes_still_work(
    small: TemplateEngine, plan: Path, text: str, expected: str
) -> None:
    assert rendered(small, plan, text) == expected


# --- the measures themselves (size_limits) ------------------------------------------------

# Text repr writes as it is: printable ASCII without quotes or backslashes.
PRINTABLE = st.text(
    alphabet=st.characters(
        codec="ascii", categories=["L", "N", "P", "Zs"], exclude_characters="'\"\\"
    )
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), PRINTABLE)
CONTAINERS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(PRINTABLE, inner, max_size=4),
        st.frozensets(st.integers(), max_size=4),
    ),
    max_leaves=30,
)
ANY_TEXT = st.recursive(
    st.one_of(SCALARS, st.text(), st.binary()),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


@given(CONTAINERS)
def test_text_length_is_exact_for_printable_values(value: object) -> None:
    assert text_length(value, 10**9) == len(str(value))
    assert repr_length(value, 10**9) == len(repr(value))


@given(ANY_TEXT)
def test_text_length_never_counts_more_than_the_text_has(value: object) -> None:
    assert text_length(value, 10**9) <= len(str(value))
    assert repr_length(value, 10**9) <= len(repr(value))


def test_the_walk_stops_soon_after_the_budget() -> None:
    huge = [["a" * 10] * 10**6] * 10**6  # 10**12 items of text, but only two lists

    assert 100 < text_length(huge, 100) <= 120


def test_cycles_and_deep_nesting_are_measured() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    deep: list[object] = []
    for _ in range(100_000):  # far deeper than repr could go
        deep = [deep]

    assert repr_length(cycle, 1000) == len(repr(cycle)) == len("[[...]]")
    assert repr_length({"k": cycle}, 1000) == len(repr({"k": cycle}))
    assert 1000 < text_length(deep, 1000) <= 1002


def test_values_a_template_cannot_build_count_their_own_repr() -> None:
    day = date(2024, 5, 1)

    assert text_length(day, 1000) == 0  # printed on its own: left to the output limit
    assert text_length([day, day], 1000) == len(str([day, day]))


@given(CONTAINERS)
def test_pretty_and_json_text_match_the_standard_library(value: object) -> None:
    assert pretty(value, 10**9) == pprint.pformat(value)
    if not isinstance(value, frozenset) and "frozenset" not in repr(value):
        for options in ({"sort_keys": True}, {"sort_keys": True, "indent": 2}):
            assert json_text(value, 10**9, **options) == json.dumps(value, **options)


@given(
    st.text(alphabet=" -\nab"),
    st.integers(1, 12),
    st.booleans(),
    st.sampled_from(["\n", "<br>", ""]),
    st.booleans(),
)
def test_wrapped_matches_jinja_s_wordwrap(
    text: str, width: int, break_long_words: bool, wrapstring: str, break_on_hyphens: bool
) -> None:
    jinja = do_wordwrap(Environment(), text, width, break_long_words, wrapstring, break_on_hyphens)

    assert jinja == wrapped(
        text,
        width=width,
        break_long_words=break_long_words,
        wrapstring=wrapstring,
        break_on_hyphens=break_on_hyphens,
        max_chars=10**9,
    )
