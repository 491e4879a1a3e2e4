"""Scenario: template sandbox escapes in a plan's ``templates_dir`` are refused, never run.

Each payload is written as the plan's override of the first template each message renders
(``title.txt.j2``, the status page's own title, an email's ``subject.txt.j2``), and the plan
is loaded the way services load it. The renderer must raise :class:`RenderFailed` naming
that file, ``clarion plan check`` must report
it, the dispatcher must record the deliveries failed and send nothing, and none of it
may hang: every render runs under a deadline. A payload that would run a command
would create a marker file; it must never exist.

Memory bombs the sandbox must refuse *before* building the value run in a child process
with a 768 MiB address-space limit, so a failure is a MemoryError there, not an outage here:
``str.format`` and ``%`` widths, ``|format``, ``|join`` over a repeated list, the text of a
container (printed, through ``|string``, ``|tojson``, ``|pprint``, in a join, a format field,
``%`` or ``~``), ``|wordwrap`` with a long wrapstring, ``|batch`` and ``|slice`` with huge
counts, ``|sum`` of lists, ``|urlize``, ``|xmlattr`` and ``|urlencode`` that repeat what they
are given, ``translate``, bytes methods, and output captured by a macro, a set block or an
imported template. Each would build gigabytes; each must be refused at the output limit of
200,000 characters. Legitimate uses of the same constructs near that limit still render.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from redis.asyncio import Redis

from services.dispatcher.plan_check import check_plan
from services.dispatcher.rendering.engine import RenderFailed, TemplateEngine
from services.dispatcher.rendering.messages import Renderer
from services.dispatcher.rendering.values import RenderContext
from shared.clock import ManualClock
from shared.contracts import DeliveryStatus
from shared.plan import ChannelName, Plan, load_plan
from shared.settings import Settings
from tests.reliability.hostile import Tally
from tests.reliability.scale import report, sized
from tests.support.builders import T0, make_incident, make_incident_opened
from tests.support.dispatching import ScriptedChannel, build_pipeline
from tests.support.plans import write_plan

OVERRIDE: Final = "title.txt.j2"
# The status page has its own title; an email renders its subject instead of a title.
OVERRIDES: Final = (OVERRIDE, "status_page/title.txt.j2", "email/subject.txt.j2")
SHOWN_AS: Final = frozenset(f"plan-templates/{name}" for name in OVERRIDES)
DEADLINE_SECONDS: Final = 60.0  # far above the engine's 1 s budget: only a hang trips it

# What a leaked object or file would look like in an error message.
LEAKS: Final = ("<class", "<function", "<module", "__builtins__", "root:x:0:0", "<built-in")


def payloads(marker: Path) -> dict[str, str]:
    """Sandbox escapes and bombs; those that would run a command create ``marker``."""
    touch = f"touch {marker}"
    return {
        "mro subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "cycler globals": f"{{{{ cycler.__init__.__globals__.os.popen('{touch}').read() }}}}",
        "joiner globals": f"{{{{ joiner.__init__.__globals__['os'].system('{touch}') }}}}",
        "namespace globals": "{{ namespace.__init__.__globals__['__builtins__'] }}",
        "template reference context": "{{ self._TemplateReference__context.cycler }}",
        "lipsum globals": f"{{{{ lipsum.__globals__['os'].popen('{touch}') }}}}",
        "attr filter": "{{ ''|attr('__class__')|attr('__mro__') }}",
        "attr filter, escaped name": "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
        "getitem on dunder": "{{ ''['__class__'] }}",
        "format string attribute": "{{ '{0.__class__.__mro__}'.format('') }}",
        "format_map attribute": "{{ '{x.__class__}'.format_map({'x': ''}) }}",
        "format filter attribute": "{{ '%s'|format(''.__class__) }}",
        "int base": "{{ (1).__class__.__base__.__subclasses__() }}",
        "request and config": "{{ config.items() }}{{ request.application }}",
        "range(10**9)": "{% for i in range(10**9) %}{% endfor %}",
        "string multiplication": "{{ 'x' * 10**9 }}",
        "nested multiplication": "{{ ('x' * 100000) * 100000 }}",
        "list multiplication": "{{ ([0] * 100000) * 100000 }}",
        "power": "{{ 9 ** 9 ** 9 }}",
        "busy loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
        "{% endfor %}",
        "output flood": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
        "self include": f"{{% include '{OVERRIDE}' %}}",
        "macro recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "include absolute path": "{% include '/etc/passwd' %}",
        "include traversal": "{% include '../../../../../../etc/passwd' %}",
        "mutating a list": "{% set x = [] %}{{ x.append(1) }}{{ x }}",
        "mutating a value": "{{ incident.update({'title': 'pwned'}) }}",
    }


def plan_with(directory: Path, text: str) -> Plan:
    """A plan file whose templates_dir overrides every message's title (subject) with ``text``."""
    for name in OVERRIDES:
        path = directory / "plan-templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return load_plan(write_plan(directory, templates_dir="plan-templates"))


def render_email(plan: Plan, settings: Settings) -> None:
    renderer = Renderer(RenderContext.of(plan, settings))
    renderer.render(make_incident_opened(), make_incident(), "customers", ChannelName.EMAIL)


@dataclass(frozen=True)
class Verdict:
    refused: bool
    why: str


async def verdict(plan: Plan, settings: Settings) -> Verdict:
    """Render under a deadline; refused means RenderFailed naming an override, no leak."""
    try:
        await asyncio.wait_for(asyncio.to_thread(render_email, plan, settings), DEADLINE_SECONDS)
    except RenderFailed as failed:
        leaked = [leak for leak in LEAKS if leak in str(failed)]
        if failed.template not in SHOWN_AS or leaked:
            return Verdict(False, f"{failed} (leaks {leaked})")
        return Verdict(True, failed.reason)
    except TimeoutError:
        return Verdict(False, f"still rendering after {DEADLINE_SECONDS:g} s")
    return Verdict(False, "rendered")


async def test_escapes_in_the_plan_templates_are_refused_and_never_run(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    marker = tmp_path / "escaped"
    settings = make_settings()
    tally = Tally()
    # `clarion plan check` renders every message (48 here): a second per render for the
    # busy loop. Quick runs check a few plans that way; full runs check them all.
    checked_plans = sized(3, 1000)

    for number, (name, text) in enumerate(payloads(marker).items()):
        plan = plan_with(tmp_path / f"plan-{number}", text)
        seen = await verdict(plan, settings)
        if seen.refused and (number >= checked_plans or plan_check_refuses(plan, settings)):
            tally.ok()
        else:
            tally.bad(f"{name}: {seen.why}")

    outcome = report(tally.outcome("templates: sandbox escapes in templates_dir"))
    assert not marker.exists(), "a template ran a command"
    assert outcome.lost == 0, outcome.notes


def plan_check_refuses(plan: Plan, settings: Settings) -> bool:
    """Whether ``clarion plan check`` fails every message, each naming the plan's file."""
    rows = check_plan(plan, settings).rows
    return bool(rows) and all(
        not row.ok and "plan-templates/" in " ".join(row.reasons) for row in rows
    )


@pytest.mark.integration
async def test_the_dispatcher_records_a_refused_template_and_sends_nothing(
    tmp_path: Path, redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    marker = tmp_path / "escaped"
    plan = plan_with(tmp_path / "plan", payloads(marker)["cycler globals"])
    settings = make_settings()
    email, page = ScriptedChannel(), ScriptedChannel()
    pipeline = build_pipeline(
        redis, settings, plan, ManualClock(T0), channels={"email": email, "status_page": page}
    )
    try:
        await pipeline.handle(make_incident_opened())
        records = await pipeline.log()
    finally:
        await pipeline.aclose()

    finals = {(r.channel, r.status) for r in records}
    outcome = report(
        Tally(sent=len(records), mishandled=len(email.sends) + len(page.sends)).outcome(
            "templates: a refused template through the dispatcher", f"final states {finals}"
        )
    )
    assert records
    assert finals == {("email", DeliveryStatus.FAILED), ("status_page", DeliveryStatus.FAILED)}
    assert all("render failed: plan-templates/" in (r.error or "") for r in records)
    assert not marker.exists()
    assert outcome.lost == 0


CHILD: Final = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from services.dispatcher.rendering.engine import RenderFailed, TemplateEngine

    directory = Path(sys.argv[1])
    for name, text in json.loads(sys.argv[2]).items():
        (directory / name).write_text(text, encoding="utf-8")
    engine = TemplateEngine([directory])
    resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
    try:
        text = engine.render("bomb.txt.j2", {})
    except RenderFailed as failed:
        print(json.dumps({"refused": failed.reason}))
    else:
        print(json.dumps({"rendered": len(text)}))
    """
)

BIG_LIST: Final = "['a' * 199999] * 199999"  # 199,999 references to one string: 40 GB of text
LOOP_OF_BIG: Final = "{% for i in range(100000) %}{{ s }}{% endfor %}"  # 20 GB once joined
MODULE: Final = "module.txt.j2"

MEMORY_BOMBS: Final = {
    "str.format width": "{{ '{:>1000000000}'.format('a') }}",
    "percent width": "{{ '%1000000000s' % 'a' }}",
    "format filter width": "{{ '%1000000000s'|format('a') }}",
    "join of a repeat": "{{ (['a' * 199999] * 199999)|join }}",
    "printed list": f"{{{{ {BIG_LIST} }}}}",
    "string filter": f"{{{{ ({BIG_LIST})|string }}}}",
    "escape filter": f"{{{{ ({BIG_LIST})|e }}}}",
    "tojson": f"{{{{ ({BIG_LIST})|tojson }}}}",
    "tojson indent": "{{ (range(100000)|list)|tojson(199999) }}",
    "pprint": f"{{{{ ({BIG_LIST})|pprint }}}}",
    "pprint indentation": "{{ {('k' * 100000): [0] * 25000}|pprint }}",
    "list in a join": f"{{{{ [{BIG_LIST}]|join }}}}",
    "list in a format field": f"{{{{ '{{}}'.format({BIG_LIST}) }}}}",
    "list in percent": f"{{{{ '%s' % ({BIG_LIST},) }}}}",
    "list in tilde": f"{{{{ ({BIG_LIST}) ~ '' }}}}",
    "tilde chain": "{% set s = 'a' * 199999 %}{{ s" + " ~ s" * 10000 + " }}",
    "namespace": f"{{% set ns = namespace(x={BIG_LIST}) %}}{{{{ ns }}}}",
    "wordwrap wrapstring": "{{ ('a ' * 99999)|wordwrap(1, wrapstring='x' * 199999) }}",
    "batch fill": "{{ [1]|batch(10 ** 10, 0)|list }}",
    "slice count": "{{ [1]|slice(10 ** 9)|list }}",
    "sum of lists": "{{ ([[0] * 200000] * 200000)|sum(start=[]) }}",
    "urlize rel": "{{ ('www.a.com ' * 19999)|urlize(rel='x' * 199999) }}",
    "xmlattr": "{{ dict.fromkeys(range(100000)|map('string'), 'a' * 199999)|xmlattr }}",
    "urlencode": "{{ ([('a', 'b' * 199999)] * 199999)|urlencode }}",
    "translate": "{{ ('a' * 199999).translate({97: 'b' * 199999}) }}",
    "bytes center": "{{ 'a'.encode().center(10 ** 10) }}",
    "bytes replace": "{{ ('a' * 199999).encode().replace('a'.encode(), ('b' * 199999).encode()) }}",
    "macro output": "{% set s = 'a' * 199999 %}{% macro m() %}" + LOOP_OF_BIG + "{% endmacro %}"
    "{{ m() }}",
    "set block": "{% set s = 'a' * 199999 %}{% set x %}" + LOOP_OF_BIG + "{% endset %}{{ x }}",
    "imported template": f"{{% import '{MODULE}' as m %}}{{{{ m.n }}}}",
}
# The template the "imported template" bomb imports: a new 200 kB string per iteration.
IMPORTED: Final = "{% set n = 1 %}{% for i in range(100000) %}{{ 'a' * 199999 }}{% endfor %}"


@pytest.mark.parametrize("text", MEMORY_BOMBS.values(), ids=MEMORY_BOMBS.keys())
def test_memory_bombs_are_refused_before_they_are_built(tmp_path: Path, text: str) -> None:
    files = {"bomb.txt.j2": text, MODULE: IMPORTED}
    answer = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result = json.loads(answer.stdout)
    refused = str(result.get("refused", "")).startswith("refused:")  # not a MemoryError

    line = report(
        Tally(sent=1, mishandled=0 if refused else 1).outcome(
            f"templates: memory bomb {text[:40]}", json.dumps(result)
        )
    )
    assert line.lost == 0, line.notes


# Legitimate uses of the same constructs, each producing close to (not over) the limit.
NEAR_THE_LIMIT: Final = {
    "printed list": ("{{ range(20000)|list }}", len(str(list(range(20000))))),
    "string filter": ("{{ (['ab'] * 30000)|string|length }}", "180000"),
    "tojson": ("{{ (range(30000)|list)|tojson }}", len(json.dumps(list(range(30000))))),
    "tojson indent": ("{{ (range(15000)|list)|tojson(4) }}", None),
    "pprint": ("{{ (range(25000)|list)|pprint }}", None),
    "list in a join": ("{{ [range(20000)|list, 'x']|join('; ') }}", None),
    "list in a format field": ("{{ '{}!'.format(range(20000)|list) }}", None),
    "list in percent": ("{{ '%s!' % (range(20000)|list,) }}", None),
    "list in tilde": ("{{ (range(20000)|list) ~ '!' }}", None),
    "wordwrap": ("{{ ('word ' * 30000)|wordwrap(40, wrapstring='<br>') }}", None),
    "batch": ("{{ (range(100)|batch(150000, 0)|list)[0]|length }}", "150000"),
    "slice": ("{{ (range(100)|slice(150000)|list)|length }}", "150000"),
    "sum of lists": ("{{ ([[0] * 1000] * 150)|sum(start=[])|length }}", "150000"),
    "urlize": ("{{ ('see www.example.com ' * 2000)|urlize(rel='nofollow') }}", None),
    "xmlattr": ("{{ dict.fromkeys(range(100)|map('string'), 'a' * 1900)|xmlattr }}", None),
    "translate": ("{{ ('ab' * 50000).translate({97: 'xy'}) }}", "xyb" * 50000),
    "macro output": (
        "{% macro m() %}{% for i in range(1900) %}{{ 'a' * 100 }}{% endfor %}{% endmacro %}"
        "{{ m()|length }}",
        "190000",
    ),
}


@pytest.mark.parametrize(("text", "expected"), NEAR_THE_LIMIT.values(), ids=NEAR_THE_LIMIT.keys())
def test_legitimate_uses_near_the_limit_still_render(
    tmp_path: Path, text: str, expected: int | str | None
) -> None:
    """``expected``: the text, its length, or None for "the same as Jinja's own sandbox"."""
    (tmp_path / "ok.txt.j2").write_text(text, encoding="utf-8")
    engine = TemplateEngine([tmp_path])
    text_out = engine.render("ok.txt.j2", {})
    if expected is None:
        expected = plain_jinja(text)
    elif isinstance(expected, int):
        text_out = str(len(text_out))
        expected = str(expected)

    tally = Tally(sent=1, mishandled=0 if text_out == expected else 1)
    line = report(tally.outcome(f"templates: near the limit {text[:40]}", f"{len(text_out)} chars"))
    assert text_out == expected
    assert line.lost == 0
    assert len(text_out) <= 200_000


def plain_jinja(text: str) -> str:
    """What Jinja's own immutable sandbox renders (no size checks) for ``text``."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(text).render()
