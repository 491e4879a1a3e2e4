"""Request bodies: the same alerts as a Clarion webhook and as Alertmanager API alerts.

Each body is a :class:`Template` built once, with a placeholder where a unique id
goes; filling it is one ``bytes.join``, so making a unique request costs the client
next to nothing. The alerts are Alertmanager's sample (tests/fixtures), relabelled:

- Clarion gets an Alertmanager webhook (version 4) of ``k`` alerts under one
  ``groupKey``: one new incident per request;
- Alertmanager gets the same ``k`` alerts as a ``POST /api/v2/alerts`` list of
  postable alerts (labels, annotations, startsAt, generatorURL), distinct labels each.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.http_load import request_bytes

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "alertmanager_webhook_v4_firing.json"
PLACEHOLDER = "@@ID@@"
CLARION_PATH = "/v1/alerts/alertmanager"
ALERTMANAGER_PATH = "/api/v2/alerts"


@dataclass(frozen=True)
class Template:
    parts: tuple[bytes, ...]

    @classmethod
    def of(cls, data: Any) -> Template:
        text = json.dumps(data, separators=(",", ":"))
        return cls(tuple(part.encode() for part in text.split(PLACEHOLDER)))

    def fill(self, ident: str) -> bytes:
        return ident.encode().join(self.parts)


def _sample_alert() -> dict[str, Any]:
    alert: dict[str, Any] = json.loads(FIXTURE.read_text())["alerts"][0]
    alert["startsAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return alert


def _labels(alert: dict[str, Any], number: int, extra: dict[str, str]) -> dict[str, str]:
    labels = dict(alert["labels"])
    labels["instance"] = f"checkout-{number}:8080"
    return labels | extra


def clarion_body(
    alerts: int, extra: dict[str, str] | None = None, *, resolved: bool = False
) -> Template:
    """An Alertmanager webhook of ``alerts`` alerts, group ``bench=<id>`` (all resolved, when
    ``resolved``)."""
    sample = _sample_alert()
    if resolved:
        sample["status"] = "resolved"
        sample["endsAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    group = {"bench": PLACEHOLDER} | (extra or {})
    body = copy.deepcopy(json.loads(FIXTURE.read_text()))
    body["alerts"] = []
    body["status"] = sample["status"]
    for n in range(alerts):
        alert = copy.deepcopy(sample)
        alert["labels"] = _labels(sample, n, group)
        alert["fingerprint"] = f"{PLACEHOLDER}-{n}"
        body["alerts"].append(alert)
    body["groupLabels"] = group
    body["commonLabels"] = {k: v for k, v in body["alerts"][0]["labels"].items() if k != "instance"}
    inner = ", ".join(f'{k}="{v}"' for k, v in group.items())
    body["groupKey"] = f"{{}}:{{{inner}}}"
    return Template.of(body)


def alertmanager_body(alerts: int, extra: dict[str, str] | None = None) -> Template:
    """The same alerts as Alertmanager's API takes them: a list of postable alerts."""
    sample = _sample_alert()
    group = {"bench": PLACEHOLDER} | (extra or {})
    return Template.of(
        [
            {
                "labels": _labels(sample, n, group),
                "annotations": sample["annotations"],
                "startsAt": sample["startsAt"],
                "generatorURL": sample["generatorURL"],
            }
            for n in range(alerts)
        ]
    )


def requests(
    host: str, port: int, path: str, template: Template, ident: Callable[[int], str]
) -> Callable[[int], bytes]:
    """Request ``n`` is ``template`` filled with ``ident(n)``, POSTed to ``path``."""
    return lambda n: request_bytes(host, port, path, template.fill(ident(n)))
