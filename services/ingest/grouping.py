"""Which incident an alert belongs to: its source's own group, or configured labels.

Each source names a group (Alertmanager's ``groupKey``, PagerDuty's
``dedup_key``, ...). With ``CLARION_GROUP_BY`` set (say ``service``), alerts of
any source that carry all those labels group by their values instead, so
Grafana and Alertmanager alerts about one service become one incident.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from shared.contracts import Alert

LABEL_GROUP_PREFIX = "labels"


def label_group_key(alert: Alert, labels: Sequence[str]) -> str | None:
    """The group key from ``labels``' values; None when the alert lacks one of them."""
    if not labels or any(not alert.labels.get(name) for name in labels):
        return None
    values = {name: alert.labels[name] for name in labels}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return f"{LABEL_GROUP_PREFIX}:{digest}"


def group_alerts(alerts: Sequence[Alert], labels: Sequence[str] = ()) -> dict[str, list[Alert]]:
    """Alerts by group key, in first-seen order, regrouped by ``labels`` where they apply."""
    groups: dict[str, list[Alert]] = {}
    for alert in alerts:
        key = label_group_key(alert, labels)
        if key is not None and key != alert.group_key:
            alert = alert.model_copy(update={"group_key": key})  # noqa: PLW2901
        groups.setdefault(alert.group_key, []).append(alert)
    return groups
