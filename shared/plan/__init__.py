"""The communication plan: a validated YAML file that says who hears what, when and where."""

from shared.plan.loading import DEFAULT_PLAN, PlanError, PlanProblem, load_plan, parse_plan
from shared.plan.model import (
    INTERNAL_EVENT_KINDS,
    Audience,
    ChannelName,
    Component,
    EventKind,
    Plan,
    Route,
    SeverityPolicy,
)

__all__ = [
    "DEFAULT_PLAN",
    "INTERNAL_EVENT_KINDS",
    "Audience",
    "ChannelName",
    "Component",
    "EventKind",
    "Plan",
    "PlanError",
    "PlanProblem",
    "Route",
    "SeverityPolicy",
    "load_plan",
    "parse_plan",
]
