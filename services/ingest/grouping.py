"""Which incident an alert belongs to: its source's own group, or configured labels.

Each source names a group (Alertmanager's ``groupKey``, PagerDuty's
``dedup_key``, ...). With ``CLARION_GROUP_BY`` set (say ``service``), alerts of
any source that carry all those labels group by their values instead, so
Grafana and Alertmanager alerts about one service become one incident.

Where one source group's alerts carry different values of those labels, the
source's key points at the incident it joined last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.contracts import Alert

LABEL_GROUP_PREFIX = "labels"


def label_group_key(alert: Alert, labels: Sequence[str]) -> str | None:
    """The group key from ``labels``' values; None when the alert lacks one of them."""
    if not labels or any(not alert.labels.get(name) for name in labels):
        return None
    values = {name: alert.labels[name] for name in labels}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return f"{LABEL_GROUP_PREFIX}:{digest}"


@dataclass
class AlertGroup:
    """The alerts of one incident's group, and the sources' own keys regrouped into it.

    Ingest points those source keys at the incident too, so a later alert of the
    same source group that lacks the labels (a PagerDuty resolve, a bare generic
    resolve) still finds the incident.
    """

    key: str
    alerts: list[Alert] = field(default_factory=list)
    aliases: set[str] = field(default_factory=set)


def group_alerts(alerts: Sequence[Alert], labels: Sequence[str] = ()) -> dict[str, AlertGroup]:
    """Alerts by group key, in first-seen order, regrouped by ``labels`` where they apply."""
    groups: dict[str, AlertGroup] = {}
    for alert in alerts:
        key = label_group_key(alert, labels)
        own = alert.group_key
        if key is not None and key != own:
            alert = alert.model_copy(update={"group_key": key})  # noqa: PLW2901
        group = groups.setdefault(alert.group_key, AlertGroup(alert.group_key))
        group.alerts.append(alert)
        if own != alert.group_key:
            group.aliases.add(own)
    return groups
