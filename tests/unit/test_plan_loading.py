"""Loading a communication plan: what a valid plan means, and errors a person can act on.

Each invalid plan is checked against the exact problem line the user reads, which names
the file, the line and the key path.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.dispatcher.rendering.timefmt import format_timestamp
from shared.contracts import Severity
from shared.plan import (
    DEFAULT_PLAN,
    ChannelName,
    EventKind,
    Plan,
    PlanError,
    PlanProblem,
    load_plan,
)
from tests.support.builders import T0

# Line numbers below count from the first line of BASE.
BASE = """\
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
  engineering:
    email: [eng@example.invalid]
routes:
  - audiences: [customers]
"""
ENGINEERING_EMAIL = "    email: [eng@example.invalid]\n"
SLACK_WITH_INLINE_URL = (
    ENGINEERING_EMAIL
    + "    slack:\n"
    + "      - name: '#incidents'\n"
    + "        url: https://hooks.slack.com/services/T0/B0/secret\n"
)


def write(directory: Path, text: str, name: str = "plan.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problem_lines(path: Path) -> list[str]:
    """What the user reads under the heading, one line per problem."""
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    heading, *lines = str(caught.value).splitlines()
    assert heading.startswith(f"{path}: invalid communication plan")
    return lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            BASE + "colour: blue\n",
            "  plan.yaml line 16 (colour): unknown key 'colour'",
            id="unknown-key",
        ),
        pytest.param(
            BASE.replace(ENGINEERING_EMAIL, ENGINEERING_EMAIL + "    sms: ['555-0100']\n"),
            "  plan.yaml line 14 (audiences.engineering.sms[0]): '555-0100' is not a phone "
            "number in E.164 form, like +14155550100",
            id="phone-not-e164",
        ),
        pytest.param(
            BASE.replace(ENGINEERING_EMAIL, SLACK_WITH_INLINE_URL),
            "  plan.yaml line 15 (audiences.engineering.slack[0]): 'url': secrets are never "
            "written in the plan; write url_env: the name of the environment variable that "
            "holds it",
            id="inline-secret",
        ),
        pytest.param(
            BASE + "  - audiences: [customers, execs]\n",
            "  plan.yaml line 16 (routes[1].audiences): unknown audience 'execs' "
            "(customers, engineering)",
            id="unknown-audience",
        ),
        pytest.param(
            BASE + "  - audiences: [engineering]\n    channels: [email, sms]\n",
            "  plan.yaml line 17 (routes[1].channels): audience 'engineering' has no sms "
            "recipients",
            id="channel-the-audience-lacks",
        ),
        pytest.param(
            BASE + "  - match: {severities: [SEV2, SEV4]}\n    audiences: [customers]\n",
            "  plan.yaml line 17 (routes[1].audiences): SEV4 is internal only, but the route "
            "sends it to the public audience 'customers'",
            id="internal-severity-to-public",
        ),
        pytest.param(
            BASE.replace("update_every: 1h", "update_every: soon"),
            "  plan.yaml line 5 (severities.SEV2.update_every): 'soon' is not a duration; "
            "write 90s, 30m, 2h or 1d",
            id="bad-duration",
        ),
        pytest.param(
            BASE.replace("organization: Acme\n", "organization: Acme\ntimezones: [UTC, Mars]\n"),
            "  plan.yaml line 3 (timezones[1]): unknown time zone 'Mars'; use an IANA name "
            "like Europe/Paris",
            id="bad-time-zone",
        ),
        pytest.param(
            BASE + "organization: Other\n",
            "  plan.yaml line 16 (organization): duplicate key 'organization'",
            id="duplicate-key",
        ),
        pytest.param(
            BASE.replace("organization: Acme", "organization: Acme: Inc"),
            "  plan.yaml line 2: not valid YAML: mapping values are not allowed here",
            id="invalid-yaml",
        ),
        pytest.param(
            BASE.replace("  SEV3: {name: degraded performance}\n", ""),
            "  plan.yaml line 4 (severities): SEV3 missing; define SEV1 to SEV4",
            id="missing-sev3",
        ),
    ],
)
def test_an_invalid_plan_is_explained_with_file_line_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert problem_lines(write(tmp_path, text)) == [expected]


def test_the_problems_carry_location_line_and_message(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "colour: blue\n")

    with pytest.raises(PlanError) as caught:
        load_plan(path)

    assert caught.value.path == path
    assert caught.value.problems == [PlanProblem("colour", 16, "unknown key 'colour'")]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"

    assert problem_lines(path) == ["  nowhere.yaml file: no such file"]


def test_a_templates_dir_that_does_not_exist_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "templates_dir: my-templates\n")

    assert problem_lines(path) == [
        f"  plan.yaml line 16 (templates_dir): {tmp_path.resolve() / 'my-templates'} "
        "is not a directory"
    ]


def test_templates_dir_is_resolved_against_the_plan_file(tmp_path: Path) -> None:
    (tmp_path / "my-templates").mkdir()

    plan = load_plan(write(tmp_path, BASE + "templates_dir: my-templates\n"))

    assert plan.templates_dir == str(tmp_path.resolve() / "my-templates")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = BASE.replace("update_every: 1h", "update_every: soon") + "colour: blue\n"

    lines = problem_lines(write(tmp_path, text))

    assert sorted(lines) == [
        "  plan.yaml line 16 (colour): unknown key 'colour'",
        "  plan.yaml line 5 (severities.SEV2.update_every): 'soon' is not a duration; "
        "write 90s, 30m, 2h or 1d",
    ]


def test_the_shipped_default_plan_loads() -> None:
    plan = load_plan()

    assert plan == load_plan(DEFAULT_PLAN)
    assert set(plan.audiences) == {"customers", "engineering", "support", "executives"}
    assert plan.audiences["customers"].public
    assert not any(plan.audiences[name].public for name in ("engineering", "support"))
    assert plan.policy(Severity.INFO).internal_only
    assert plan.audiences["customers"].channels == (
        ChannelName.EMAIL,
        ChannelName.SMS,
        ChannelName.MASTODON,
        ChannelName.BLUESKY,
        ChannelName.X,
        ChannelName.STATUS_PAGE,
    )


def test_cadence_and_the_next_update_time_follow_the_severity() -> None:
    plan = load_plan()

    assert plan.cadence(Severity.CRITICAL) == timedelta(minutes=30)
    assert plan.cadence(Severity.ERROR) == timedelta(hours=1)
    assert plan.cadence(Severity.WARNING) is None
    assert plan.next_update_at(Severity.CRITICAL, T0) == T0 + timedelta(minutes=30)
    assert plan.next_update_at(Severity.WARNING, T0) is None
    assert format_timestamp(T0 + timedelta(hours=1), plan.zones) == "15:30 UTC, Mon 23 Nov 2026"


ROUTED = """\
version: 1
severities:
  SEV1: {name: a major outage}
  SEV2: {name: a partial outage}
  SEV3: {name: degraded performance}
  SEV4: {name: a minor issue}
audiences:
  everyone: {email: [all@example.invalid]}
routes:
  - name: severe
    match: {severities: [SEV1, SEV2]}
    events: [opened, resolved]
    audiences: [everyone]
  - name: checkout
    match: {services: [checkout]}
    audiences: [everyone]
  - name: payments component
    match: {components: [payments]}
    audiences: [everyone]
  - name: database team
    match: {labels: {team: db, env: prod}}
    audiences: [everyone]
  - name: critical checkout
    match: {severities: [SEV1], services: [checkout]}
    events: [opened]
    audiences: [everyone]
"""


def routes(
    plan: Plan,
    *,
    kind: EventKind = EventKind.OPENED,
    severity: Severity = Severity.WARNING,
    service: str | None = None,
    components: tuple[str, ...] = (),
    labels: tuple[dict[str, str], ...] = (),
) -> list[str]:
    return [r.name for r in plan.routes_for(kind, severity, service, components, labels)]


@pytest.fixture
def routed(tmp_path: Path) -> Plan:
    return load_plan(write(tmp_path, ROUTED))


def test_routes_match_by_severity_and_event(routed: Plan) -> None:
    assert routes(routed, severity=Severity.ERROR) == ["severe"]
    assert routes(routed, severity=Severity.ERROR, kind=EventKind.UPDATED) == []
    assert routes(routed, severity=Severity.WARNING) == []


def test_routes_match_by_service(routed: Plan) -> None:
    assert routes(routed, service="checkout") == ["checkout"]
    assert routes(routed, service="search") == []


def test_routes_match_by_any_listed_component(routed: Plan) -> None:
    assert routes(routed, components=("search", "payments")) == ["payments component"]
    assert routes(routed, components=("search",)) == []


def test_routes_match_when_one_alert_carries_every_label(routed: Plan) -> None:
    both = {"team": "db", "env": "prod", "instance": "db-1"}
    assert routes(routed, labels=({"team": "web"}, both)) == ["database team"]
    split = ({"team": "db", "env": "staging"}, {"team": "web", "env": "prod"})
    assert routes(routed, labels=split) == []


def test_every_condition_of_a_route_must_hold(routed: Plan) -> None:
    critical = Severity.CRITICAL
    assert routes(routed, severity=critical, service="checkout") == [
        "severe",
        "checkout",
        "critical checkout",
    ]
    assert "critical checkout" not in routes(routed, severity=Severity.ERROR, service="checkout")
    assert "critical checkout" not in routes(routed, severity=critical, service="search")
    updated = routes(routed, severity=critical, service="checkout", kind=EventKind.UPDATED)
    assert updated == ["checkout"]


def test_only_a_public_audience_takes_subscribers(tmp_path: Path) -> None:
    plan = "version: 1\naudiences:\n  team:\n    subscribers: true\n"

    [line] = problem_lines(write(tmp_path, plan))

    assert "audiences.team" in line
    assert "only a public audience takes status page subscribers" in line


def test_components_are_named_once_and_map_services(tmp_path: Path) -> None:
    twice = "version: 1\ncomponents:\n  - name: API\n  - name: api\n"
    [line] = problem_lines(write(tmp_path, twice))
    assert line.endswith("(components): API, api named more than once")

    plan = load_plan(
        write(
            tmp_path,
            "version: 1\ncomponents:\n  - name: Checkout\n    services: [checkout-api]\n"
            "  - name: Website\n",
        )
    )
    assert plan.components_of("checkout-api", ()) == ("Checkout",)
    assert plan.components_of(None, ("website",)) == ("Website",)
    assert plan.components_of("batch", ("nothing",)) == ()
