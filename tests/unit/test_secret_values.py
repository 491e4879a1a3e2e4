"""Which configured values count as secrets, and scrubbing them from text."""

from __future__ import annotations

from pydantic import SecretStr

from shared.secret_values import SCRUBBED, configured_secrets, scrub
from shared.settings import Settings
from tests.support.plans import make_plan

PLAN = make_plan(
    audiences={
        "team": {"slack": [{"name": "#ops", "url_env": "TEAM_SLACK"}]},
    },
    routes=[{"audiences": ["team"]}],
)


def test_every_secret_setting_and_the_plans_variables_are_secrets() -> None:
    settings = Settings(
        ops_token=SecretStr("ops-secret-1"),
        smtp_password=SecretStr("smtp-pass-2"),
        pagerduty_routing_keys=("routing-key-3", "routing-key-4"),
        smtp_username="not-a-secret",
    )
    environ = {"TEAM_SLACK": "https://hooks.slack.com/services/T000/B000/XXXXsecretpath"}

    secrets = configured_secrets(settings, PLAN, environ)

    for value in ("ops-secret-1", "smtp-pass-2", "routing-key-3", "routing-key-4"):
        assert value in secrets
    assert environ["TEAM_SLACK"] in secrets
    assert "XXXXsecretpath" in secrets  # a URL's long path segments go on their own too
    assert "not-a-secret" not in secrets
    assert list(secrets) == sorted(secrets, key=len, reverse=True)


def test_scrub_replaces_the_longest_secret_first() -> None:
    secrets = ("abc-long-secret", "abc")

    assert scrub("x abc-long-secret y abc", secrets) == f"x {SCRUBBED} y {SCRUBBED}"
    assert scrub("nothing here", secrets) == "nothing here"
