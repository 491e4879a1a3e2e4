"""Webhook bodies for tests that need many distinct alerts of one group."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import load_fixture


def alertmanager_body(instance: int, status: str = "firing") -> dict[str, Any]:
    """The sample Alertmanager group with one alert of its own (``instance``)."""
    body = copy.deepcopy(load_fixture("alertmanager_webhook_v4_firing_single.json"))
    body["status"] = status
    alert = body["alerts"][0]
    alert["status"] = status
    alert["fingerprint"] = f"fp{instance:04d}"
    alert["labels"] = {**alert["labels"], "instance": f"host-{instance}"}
    return body
