"""Communication plans for tests: the old defaults, written as a plan, overridable by keyword.

``make_plan()`` emails ``alice@example.com`` (customers, public) about every event
of every severity and posts to the built-in status page, with updates every
30 min (SEV1), 1 h, 2 h and 4 h (SEV4), and no monitoring hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from shared.contracts import Severity
from shared.plan import Plan, parse_plan

CADENCE: Mapping[Severity, timedelta | None] = {
    Severity.CRITICAL: timedelta(minutes=30),
    Severity.ERROR: timedelta(hours=1),
    Severity.WARNING: timedelta(hours=2),
    Severity.INFO: timedelta(hours=4),
}

FAST_CADENCE: Mapping[Severity, timedelta | None] = {
    Severity.CRITICAL: timedelta(seconds=2),
    Severity.ERROR: timedelta(seconds=3),
    Severity.WARNING: timedelta(seconds=4),
    Severity.INFO: timedelta(seconds=5),
}
"""For processes on the real clock: an update every few seconds."""


def _seconds(value: timedelta | None) -> str | None:
    return None if value is None else f"{int(value.total_seconds())}s"


def plan_data(
    emails: Sequence[str] = ("alice@example.com",),
    *,
    cadence: Mapping[Severity, timedelta | None] = CADENCE,
    monitoring_hold: timedelta = timedelta(0),
    approval: Sequence[str] = (),
    auto_publish_after: timedelta = timedelta(minutes=10),
    **overrides: Any,
) -> dict[str, Any]:
    """The plan as YAML-ready data; ``overrides`` replace top-level keys."""
    customers: dict[str, Any] = {"public": True, "status_page": True}
    if emails:
        customers["email"] = list(emails)
    data: dict[str, Any] = {
        "version": 1,
        "organization": "Clarion",
        "monitoring_hold": _seconds(monitoring_hold),
        "severities": {
            s.sev: {"name": w, "update_every": _seconds(cadence[s])}
            for s, w in zip(
                Severity,
                ("a major outage", "a partial outage", "degraded performance", "a minor issue"),
                strict=True,
            )
        },
        "audiences": {"customers": customers},
        "routes": [{"name": "everyone hears everything", "audiences": ["customers"]}],
        "approval": {
            "severities": list(approval),
            "auto_publish_after": _seconds(auto_publish_after),
        },
    }
    return data | overrides


def make_plan(*args: Any, **kwargs: Any) -> Plan:
    data = plan_data(*args, **kwargs)
    return parse_plan(yaml.safe_dump(data), Path("test-plan.yaml"))


def write_plan(directory: Path, *args: Any, **kwargs: Any) -> Path:
    """The plan as a file in ``directory`` (for processes: CLARION_PLAN)."""
    path = directory / "plan.yaml"
    path.write_text(yaml.safe_dump(plan_data(*args, **kwargs)), encoding="utf-8")
    return path
