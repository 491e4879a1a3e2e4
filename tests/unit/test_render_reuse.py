"""Rendering shares its work within one event, and the engine's shortcuts change nothing.

A Renderer makes each audience's values once per event and renders each template once
per audience (the plain text of an email and of a webhook is one rendering); every
message is the one a renderer of its own would have made. The engine calls macros and
reads an imported template's macros without the general sandbox path: what templates
get, and what they are refused, is what Jinja's own immutable sandbox gives them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from jinja2 import DictLoader, StrictUndefined, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.dispatcher.rendering.engine import RenderFailed, TemplateEngine
from services.dispatcher.rendering.messages import SHIPPED_TEMPLATES, RenderedMessage, Renderer
from services.dispatcher.rendering.size_limits import BoundedText
from services.dispatcher.rendering.values import DispatchEvent, RenderContext
from shared.contracts import Incident
from shared.plan import ChannelName, Plan
from shared.settings import Settings
from tests.support.builders import (
    make_alert_state,
    make_incident,
    make_incident_opened,
    make_incident_updated,
)
from tests.support.plans import make_plan

PUBLIC: Final = "customers"
INTERNAL: Final = "engineering"
CHANNELS: Final = (
    ChannelName.EMAIL,
    ChannelName.WEBHOOK,
    ChannelName.STATUS_PAGE,
    ChannelName.SLACK,
    ChannelName.DISCORD,
    ChannelName.CHAT_WEBHOOK,
    ChannelName.SMS,
)
SETTINGS: Final = Settings(_env_file=None)


def two_audience_plan() -> Plan:
    def audience(public: bool, tag: str) -> dict[str, Any]:
        return {
            "public": public,
            "email": [f"{tag}@example.com"],
            "sms": ["+14155550100"],
            "webhook": [{"name": f"{tag}-hook", "url": f"https://{tag}.example.com/hook"}],
            "slack": [{"name": f"#{tag}", "url_env": "SLACK_URL"}],
            "discord": [{"name": f"{tag}-discord", "url_env": "DISCORD_URL"}],
            "chat_webhook": [{"name": f"{tag}-chat", "url_env": "CHAT_URL"}],
            "status_page": public,
        }

    return make_plan(
        audiences={PUBLIC: audience(True, "customers"), INTERNAL: audience(False, "eng")},
        routes=[{"name": "everyone", "audiences": [PUBLIC, INTERNAL]}],
    )


PLAN: Final = two_audience_plan()


class CountingEngine(TemplateEngine):
    """The shipped templates' engine, counting what it renders."""

    def __init__(self) -> None:
        super().__init__([SHIPPED_TEMPLATES])
        self.renders: list[tuple[str, str | None]] = []

    def render(self, name: str, values: Mapping[str, Any]) -> str:
        self.renders.append((name, None))
        return super().render(name, values)

    def render_block(self, name: str, block: str, values: Mapping[str, Any]) -> str:
        self.renders.append((name, block))
        return super().render_block(name, block, values)


def alone(
    event: DispatchEvent, incident: Incident, audience: str, channel: ChannelName
) -> RenderedMessage:
    """The message a renderer of its own makes (nothing rendered before it)."""
    return Renderer(RenderContext.of(PLAN, SETTINGS)).render(event, incident, audience, channel)


def incident_with_alerts(**overrides: Any) -> Incident:
    alert = make_alert_state(
        labels={"alertname": "CheckoutErrors", "instance": "web-1.prod.internal"},
        description="5xx <ratio> high & rising",
        links={"runbook": "https://runbooks.example.com/checkout"},
    )
    values: dict[str, Any] = {
        "impact": "Orders <fail> & stall.",
        "service": "checkout",
        "alerts": [alert],
    }
    return make_incident(**(values | overrides))


def test_one_event_renders_each_template_once_per_audience() -> None:
    engine = CountingEngine()
    renderer = Renderer(RenderContext.of(PLAN, SETTINGS), engine)
    incident = incident_with_alerts()
    event = make_incident_opened(incident)

    for audience in (PUBLIC, INTERNAL):
        for channel in CHANNELS:
            message = renderer.render(event, incident, audience, channel)
            assert message == alone(event, incident, audience, channel)

    # Slack's message is rendered with its own (escaped) values, so it is not shared.
    shared = [r for r in engine.renders if r[0] != "slack/message.md.j2"]
    assert len(shared) == len(set(shared)) * 2  # once for each audience
    assert engine.renders.count(("message.txt.j2", None)) == 2  # email, webhook and chat


def test_audiences_do_not_share_their_words() -> None:
    renderer = Renderer(RenderContext.of(PLAN, SETTINGS))
    incident = incident_with_alerts()
    event = make_incident_opened(incident)

    public = renderer.render(event, incident, PUBLIC, ChannelName.EMAIL)
    internal = renderer.render(event, incident, INTERNAL, ChannelName.EMAIL)

    assert "runbooks.example.com" in internal.text
    assert "runbooks.example.com" not in public.text
    assert public == alone(event, incident, PUBLIC, ChannelName.EMAIL)
    assert internal == alone(event, incident, INTERNAL, ChannelName.EMAIL)


def test_slack_gets_escaped_words_after_a_channel_that_renders_them_plain() -> None:
    renderer = Renderer(RenderContext.of(PLAN, SETTINGS))
    incident = incident_with_alerts()
    event = make_incident_opened(incident)

    renderer.render(event, incident, PUBLIC, ChannelName.DISCORD)
    slack = renderer.render(event, incident, PUBLIC, ChannelName.SLACK)

    assert "Orders &lt;fail&gt; &amp; stall." in slack.text
    assert slack == alone(event, incident, PUBLIC, ChannelName.SLACK)


def test_every_event_is_rendered_afresh() -> None:
    engine = CountingEngine()
    renderer = Renderer(RenderContext.of(PLAN, SETTINGS), engine)
    first = incident_with_alerts()
    opened = make_incident_opened(first)
    changed = first.model_copy(update={"impact": "Payments are slow."})
    updated = make_incident_updated(changed, message="We found the cause.")

    renderer.render(opened, first, PUBLIC, ChannelName.WEBHOOK)
    again = renderer.render(updated, changed, PUBLIC, ChannelName.WEBHOOK)
    # An equal event in new objects is another event too: rendered again.
    copy = renderer.render(opened.model_copy(), first.model_copy(), PUBLIC, ChannelName.WEBHOOK)

    assert "Payments are slow." in again.text
    assert "We found the cause." in again.text
    assert again == alone(updated, changed, PUBLIC, ChannelName.WEBHOOK)
    assert copy == alone(opened, first, PUBLIC, ChannelName.WEBHOOK)
    assert engine.renders.count(("message.txt.j2", None)) == 3


def test_a_failed_rendering_is_not_kept(tmp_path: Path) -> None:
    (tmp_path / "webhook").mkdir()
    (tmp_path / "webhook" / "message.txt.j2").write_text("{{ nothing_by_this_name }}")
    plan = PLAN.model_copy(update={"templates_dir": str(tmp_path)})
    renderer = Renderer(RenderContext.of(plan, SETTINGS))
    incident = incident_with_alerts()
    event = make_incident_opened(incident)

    for _ in range(2):
        with pytest.raises(RenderFailed, match="'nothing_by_this_name' is undefined"):
            renderer.render(event, incident, PUBLIC, ChannelName.WEBHOOK)
    assert renderer.render(event, incident, PUBLIC, ChannelName.EMAIL).text.startswith(
        "Investigating: "
    )


# --- the engine's shortcuts, against Jinja's own immutable sandbox --------------------

LIBRARY: Final = """\
{% macro hello(name, greeting="Hello") -%}
{{ greeting }}, {{ name }}!
{%- endmacro %}
{% macro everything() -%}
{{ varargs }} {{ kwargs }}
{%- endmacro %}
{% macro box() -%}
[{{ caller() }}]
{%- endmacro %}
{% macro each(items) -%}
{% for item in items %}{{ caller(item) }}{% endfor %}
{%- endmacro %}
{% macro who() %}{{ audience }}{% endmacro %}
{% set motto = "plain words" %}
{% set _hidden = "private" %}
"""

PROBES: Final = {
    "defaults": "{{ lib.hello('you') }} {{ lib.hello('them', 'Hi') }}"
    " {{ lib.hello(greeting='Yo', name='all') }}",
    "varargs and kwargs": "{{ lib.everything(1, 2, a=3) }}",
    "call block": "{% call lib.box() %}inside{% endcall %}",
    "call block with arguments": "{% call(x) lib.each([1, 2]) %}<{{ x }}>{% endcall %}",
    "in a loop": "{% for n in range(3) %}{{ lib.hello(n) }} {% endfor %}",
    "in a block": "{% block b %}{% set x = 'block' %}{{ lib.hello(x) }}{% endblock %}",
    "with context": "{% import 'lib.j2' as ctx with context %}{{ ctx.who() }}",
    "local macro": "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro %}{{ twice('ab') }}",
    "exported value": "{{ lib.motto }}",
    "macro as a value": "{{ lib.hello is callable }} {{ [lib.hello][0]('list') }}",
    "too many arguments": "{{ lib.hello(1, 2, 3) }}",
    "unknown keyword": "{{ lib.hello('x', colour='red') }}",
    "caller twice": "{% call lib.box() %}x{% endcall %}{{ lib.box(caller=1) }}",
    "private value": "{{ lib._hidden }}",
    "dunder": "{{ lib.__dict__ }}",
    "missing macro": "{{ lib.nothing() }}",
    "macro internals": "{{ lib.hello._func }}",
}
UNSAFE: Final = ("dunder", "macro internals")


def _jinja(source: str) -> str:
    """``source`` (importing ``lib.j2`` as ``lib``) in Jinja's immutable sandbox."""
    environment = ImmutableSandboxedEnvironment(
        loader=DictLoader({"lib.j2": LIBRARY}),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        return environment.from_string(source).render(audience="customers")
    except SecurityError as exc:
        return f"refused: {exc}"
    except UndefinedError as exc:
        return str(exc)
    except Exception as exc:  # the reason is what is compared
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("source", PROBES.values(), ids=PROBES.keys())
def test_templates_get_what_jinjas_sandbox_gives_them(tmp_path: Path, source: str) -> None:
    (tmp_path / "lib.j2").write_text(LIBRARY)
    (tmp_path / "probe.txt.j2").write_text("{% import 'lib.j2' as lib %}" + source)
    engine = TemplateEngine([tmp_path])
    try:
        ours = engine.render("probe.txt.j2", {"audience": "customers"})
    except RenderFailed as exc:
        ours = exc.reason

    expected = _jinja("{% import 'lib.j2' as lib %}" + source)
    assert ours == expected


@pytest.mark.parametrize("probe", UNSAFE)
def test_internals_of_imported_templates_stay_out_of_reach(tmp_path: Path, probe: str) -> None:
    (tmp_path / "lib.j2").write_text(LIBRARY)
    (tmp_path / "probe.txt.j2").write_text("{% import 'lib.j2' as lib %}" + PROBES[probe])

    with pytest.raises(RenderFailed, match="is unsafe"):
        TemplateEngine([tmp_path]).render("probe.txt.j2", {})


def test_a_format_method_an_imported_template_exports_is_still_measured(tmp_path: Path) -> None:
    (tmp_path / "lib.j2").write_text("{% set pad = '{:>999999}'.format %}")
    (tmp_path / "probe.txt.j2").write_text("{% import 'lib.j2' as lib %}{{ lib.pad(1) }}")

    with pytest.raises(RenderFailed) as caught:
        TemplateEngine([tmp_path], max_output_chars=1000).render("probe.txt.j2", {})

    assert caught.value.reason.startswith("refused: ")


def test_a_macro_argument_and_result_are_bounded_on_the_short_path(tmp_path: Path) -> None:
    (tmp_path / "probe.txt.j2").write_text(
        "{% macro echo(s) %}{{ s }}{% endmacro %}{{ echo(long)|length }}"
    )
    engine = TemplateEngine([tmp_path], max_output_chars=1000)

    assert engine.render("probe.txt.j2", {"long": "x" * 1000}) == "1000"
    with pytest.raises(RenderFailed, match="refused: a macro argument is longer"):
        engine.render("probe.txt.j2", {"long": "x" * 1001})


# --- the bounded buffer compiled templates capture into --------------------------------


def test_chunks_added_together_are_refused_past_the_limit() -> None:
    text = BoundedText(10, "captured template output")
    text.extend(("abc", "def"))
    text.append("gh")

    with pytest.raises(SecurityError, match="captured template output exceeds 10 characters"):
        text.extend(["ij", "k"])
    assert text.text() == "abcdefgh"


def test_chunks_from_a_generator_are_refused_at_the_one_past_the_limit() -> None:
    taken: list[str] = []

    def chunks() -> Iterator[str]:
        for chunk in ("abcd", "efgh", "ijkl", "mnop"):
            taken.append(chunk)
            yield chunk

    with pytest.raises(SecurityError, match="exceeds 10 characters"):
        BoundedText(10, "imported output").extend(chunks())
    assert taken == ["abcd", "efgh", "ijkl"]
