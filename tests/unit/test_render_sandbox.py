"""TemplateEngine: plan templates override shipped ones, run sandboxed, and stay bounded."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from services.dispatcher.rendering.engine import (
    RenderFailed,
    TemplateEngine,
    TemplateProblem,
    sentence,
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

    assert failure(engine, plan, text).reason == (
        "refused: namespace value 's' is longer than the limit of 200000"
    )


def test_doubling_through_macro_recursion_is_refused(engine: TemplateEngine, plan: Path) -> None:
    text = (
        "{% macro grow(s, n) %}{% if n %}{{ grow(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
        "{{ grow('a', 64) }}"
    )

    assert failure(engine, plan, text).reason == (
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
