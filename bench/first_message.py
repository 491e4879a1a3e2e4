"""Scenario 2, time to first message: from the webhook POST to the customer's first message.

The three services run with a plan whose public audience has an email address, a
signed webhook (to the HTTP sink, ``/hook/clarion``) and the built-in status page.
At each rate (new incidents per second, open loop: :func:`bench.latency.open_loop`)
every request is a new Alertmanager group, so a new incident. Measured per incident:

- email: POST to the message's arrival at the SMTP sink (matched by the
  ``X-Clarion-Incident`` header);
- webhook: POST to the signed webhook's arrival at the HTTP sink (``incident.id``);
- status page: POST to the ``recorded_at`` of the status page delivery's ``sent``
  record in the delivery log (written right after the page's incident is stored;
  nothing polls the page, which would load the dispatcher that serves it).

Then the same alerts go to Alertmanager (``group_wait: 0s``, grouped by a label unique
per incident, a webhook receiver at the same sink, ``/hook/alertmanager``): POST to
the sink's receipt. Each phase waits for its messages to drain before the next.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import alertmanager as am
from bench import stages
from bench.bodies import (
    ALERTMANAGER_PATH,
    CLARION_PATH,
    PLACEHOLDER,
    alertmanager_body,
    clarion_body,
    requests,
)
from bench.environment import BenchEnv
from bench.http_load import Pool
from bench.latency import (
    DeliveryLogReader,
    Sent,
    first_arrivals,
    newest_id,
    open_loop,
    send_lag_ms,
)
from bench.report import Figure, ScenarioResult, ms, ratio, summary_ms
from bench.stages import STAGES
from shared.contracts import Severity
from shared.streams import delivery_stream
from tests.support.plans import CADENCE, write_plan

NAME = "first_message"
EMAIL = "customer@example.com"
SECRET_ENV = "CLARION_BENCH_WEBHOOK_SECRET"
LABELS = {"bench": "latency", "incident": PLACEHOLDER}


@dataclass(frozen=True)
class Options:
    rates: tuple[float, ...] = (10, 50, 200)
    duration: float = 10.0  # seconds of sending per rate
    drain_timeout: float = 180.0
    warmup: int = 40  # incidents sent (and delivered) before measuring: every worker warm
    round_trips: int = 300  # paced XADDs that calibrate the stages (bench.stages)


QUICK = Options(duration=1.0, drain_timeout=60.0, warmup=5, round_trips=50)
CALIBRATION_RATE = 50.0


def webhook_plan(
    directory: Path, hook_url: str, cadence: Mapping[Severity, timedelta | None] = CADENCE
) -> Path:
    """Customers hear by email, on a signed webhook (``hook_url``) and on the status page."""
    customers = {
        "public": True,
        "status_page": True,
        "email": [EMAIL],
        "webhook": [{"name": "bench-hook", "url": hook_url, "secret_env": SECRET_ENV}],
    }
    return write_plan(directory, (EMAIL,), cadence=cadence, audiences={"customers": customers})


def _incident_id(sent: Sent) -> str | None:
    try:
        answer = json.loads(sent.body)
    except ValueError:
        return None
    value = answer.get("incident_id") if isinstance(answer, dict) else None
    return value if isinstance(value, str) else None


class Phase:
    """One target at one rate: send, wait for the messages, compute latencies."""

    def __init__(self, env: BenchEnv, host: str, port: int, path: str, clarion: bool) -> None:
        self.env, self.clarion = env, clarion
        template = clarion_body(1, LABELS) if clarion else alertmanager_body(1, LABELS)
        self.host, self.port, self.path, self.template = host, port, path, template
        self.pool = Pool(host, port)
        self.log = DeliveryLogReader(env.redis, ("status_page", "webhook"))
        self.runs = 0

    def _key(self, tag: str, sent: Sent) -> str | None:
        """Clarion's incident id from its answer; for Alertmanager, the incident label (None
        when the request was not accepted)."""
        if not 200 <= sent.status < 300:
            return None
        return _incident_id(sent) if self.clarion else f"{tag}{sent.index}"

    async def run(self, rate: float, count: int, drain: float) -> dict[str, Any]:
        self.runs += 1
        tag = f"{'c' if self.clarion else 'a'}{self.runs}-{int(rate)}-"
        await self.log.skip_to_end()
        jobs_after = await newest_id(self.env.redis, delivery_stream("webhook"))
        smtp_after, _ = await self.env.sinks.arrivals("smtp", 10**9)
        http_after, _ = await self.env.sinks.arrivals("http", 10**9)
        make = requests(self.host, self.port, self.path, self.template, lambda n: f"{tag}{n}")
        sends = await open_loop(self.pool, make, rate, count)
        keys = {key: s for s in sends if (key := self._key(tag, s)) is not None}
        channels = {"email": "smtp", "webhook": "http"} if self.clarion else {"webhook": "http"}
        hook = "/hook/clarion" if self.clarion else "/hook/alertmanager"
        smtp: list[list[Any]] = []
        http: list[list[Any]] = []
        deadline = time.monotonic() + drain
        while True:  # read only what arrived since the last look: the sinks share the CPU
            smtp += (await self.env.sinks.arrivals("smtp", smtp_after + len(smtp)))[1]
            http += (await self.env.sinks.arrivals("http", http_after + len(http)))[1]
            arrived = {"email": first_arrivals(smtp), "webhook": first_arrivals(http, hook)}
            if self.clarion:
                await self.log.follow()
            done = all(set(keys) <= set(arrived[c]) for c in channels)
            if done and (not self.clarion or set(keys) <= set(self.log.sent["status_page"])):
                break
            if time.monotonic() > deadline:
                break
            await _pause()
        result: dict[str, Any] = {
            "rate": rate,
            "incidents": count,
            "accepted": sum(200 <= s.status < 300 for s in sends),
            "statuses": dict(sorted(Counter(str(s.status) for s in sends if s.status).items())),
            "refusals": sorted(
                {
                    s.body.decode("utf-8", "replace")[:300]
                    for s in sends
                    if s.status and not 200 <= s.status < 300
                }
            )[:3],
            "errors": sorted({s.error for s in sends if s.error})[:3],
            "send_lag_ms": send_lag_ms(sends),
            "connections": self.pool.opened,
        }
        for channel in channels:
            latencies = [
                arrived[channel][k] - s.at for k, s in keys.items() if k in arrived[channel]
            ]
            result[channel] = summary_ms(latencies)
        if self.clarion:
            page = self.log.recorded_at("status_page")
            result["status_page"] = summary_ms(
                [page[k] - s.wall for k, s in keys.items() if k in page]
            )
            result["webhook_stages"] = await self._stages(keys, arrived["webhook"], jobs_after)
        return result

    async def _stages(
        self, keys: Mapping[str, Sent], arrived: Mapping[str, float], jobs_after: str
    ) -> dict[str, Any]:
        """The webhook's path cut in stages (:mod:`bench.stages`)."""
        redis = self.env.redis
        posted = {k: s.wall for k, s in keys.items()}
        arrived_wall = {
            k: keys[k].wall + (at - keys[k].at) for k, at in arrived.items() if k in keys
        }
        found = stages.paths(
            posted,
            await stages.opened_at(redis, keys),
            await stages.queued_at(redis, "webhook", jobs_after),
            self.log.started_at("webhook"),
            arrived_wall,
        )
        return stages.breakdown(found)


async def _pause() -> None:
    await asyncio.sleep(0.25)  # a benchmark polls the sinks while messages drain


def _cell(run: dict[str, Any] | None, channel: str) -> str:
    """p50 / p99, and how many were refused by ingest or did not arrive within the drain."""
    if run is None:
        return ""
    summary, sent, accepted = run[channel], run["incidents"], run["accepted"]
    notes = [f"{sent - accepted} of {sent} refused"] if accepted < sent else []
    if summary["n"] < accepted:
        notes.append(f"{accepted - summary['n']} not arrived")
    text = f"{ms(summary['p50'])} / {ms(summary['p99'])}" if summary["n"] else "none arrived"
    return text + (f" [{', '.join(notes)}]" if notes else "")


def _figures(runs: list[dict[str, Any]]) -> list[Figure]:
    figures = []
    for clarion in (r for r in runs if r["target"] == "clarion"):
        rate = clarion["rate"]
        manager = next(
            (r for r in runs if r["target"] == "alertmanager" and r["rate"] == rate), None
        )
        at = f"{rate:g} incidents/s"
        figures.append(
            Figure(
                NAME,
                f"email p50 / p99, {at}",
                _cell(clarion, "email"),
                target="p99 ≤ 50 ms" if rate == 50 else "",
            )
        )
        figures.append(
            Figure(
                NAME,
                f"webhook p50 / p99, {at}",
                _cell(clarion, "webhook"),
                _cell(manager, "webhook"),
                ratio(clarion["webhook"]["p99"], manager["webhook"]["p99"]) if manager else "",
                "p99 ≤ 3 x AM" if rate == 50 else "",
            )
        )
        figures.append(Figure(NAME, f"status page p50 / p99, {at}", _cell(clarion, "status_page")))
        if path := _path(clarion.get("webhook_stages")):
            figures.append(Figure(NAME, f"webhook path p50, {at}: {' / '.join(STAGES)}", path))
    return figures


def _path(found: dict[str, Any] | None) -> str:
    """The stages' p50s, as one cell."""
    if not found or not all(found[stage]["n"] for stage in STAGES):
        return ""
    return " / ".join(f"{found[stage]['p50']:.1f}" for stage in STAGES) + " ms"


async def _round_trips(env: BenchEnv, rate: float, count: int) -> dict[str, Any]:
    """Valkey's write round trip at ``rate`` (:func:`bench.stages.write_round_trips`), as
    configured and, on the embedded Valkey, without fsync."""
    found: dict[str, Any] = {
        "as run": summary_ms(await stages.write_round_trips(env.redis, rate, count))
    }
    if env.embedded:
        fsync = str((await env.redis.config_get("appendfsync"))["appendfsync"])
        await env.redis.config_set("appendfsync", "no")
        try:
            found["no fsync"] = summary_ms(await stages.write_round_trips(env.redis, rate, count))
        finally:
            await env.redis.config_set("appendfsync", fsync)
        found["appendfsync"] = fsync
    return found


def _round_trip_figure(found: dict[str, Any], rate: float) -> Figure:
    fsync = found.get("appendfsync")
    cells = [
        f"{name} {ms(found[name]['p50'])} / {ms(found[name]['p99'])}"
        for name in ("as run", "no fsync")
        if name in found
    ]
    measure = f"Valkey write round trip p50 / p99, paced at {rate:g}/s"
    if fsync:
        measure += f" (appendfsync {fsync})"
    return Figure(NAME, measure, "; ".join(cells))


async def run(env: BenchEnv, binary: Path | None, options: Options) -> ScenarioResult:
    await env.reset()
    directory = env.directory(NAME)
    plan = webhook_plan(directory, f"{env.sinks.http_url}/hook/clarion")
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    system = env.system(plan, directory, **{SECRET_ENV: secret})
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        env.start(system)
        stack.callback(env.stop, system)
        phases = [("clarion", Phase(env, "127.0.0.1", system.ingest_port, CLARION_PATH, True))]
        if binary is not None:
            manager = stack.enter_context(
                am.running(binary, directory / "am", f"{env.sinks.http_url}/hook/alertmanager")
            )
            phases.append(
                ("alertmanager", Phase(env, manager.host, manager.port, ALERTMANAGER_PATH, False))
            )
        print(
            f"time to first message: {options.duration:g} s at each of "
            f"{', '.join(f'{r:g}' for r in options.rates)} new incidents/s",
            flush=True,
        )
        for _, phase in phases:
            await phase.run(10, options.warmup, options.drain_timeout)
        round_trips = await _round_trips(env, CALIBRATION_RATE, options.round_trips)
        for rate in options.rates:
            count = max(1, round(rate * options.duration))
            for target, phase in phases:
                result = {"target": target, **await phase.run(rate, count, options.drain_timeout)}
                runs.append(result)
                _print(result)
        for _, phase in phases:
            phase.pool.close()
    figures = [*_figures(runs), _round_trip_figure(round_trips, CALIBRATION_RATE)]
    data = {"runs": runs, "write_round_trips": round_trips}
    return ScenarioResult(NAME, figures, data, asdict(options))


def _print(result: dict[str, Any]) -> None:
    parts = [f"  {result['target']:<12} {result['rate']:>5g}/s n={result['incidents']:<5}"]
    for channel in ("email", "webhook", "status_page"):
        if channel in result:
            s = result[channel]
            parts.append(f"{channel} p50 {ms(s['p50'])} p99 {ms(s['p99'])} ({s['n']})")
    if path := _path(result.get("webhook_stages")):
        parts.append(f"webhook {' / '.join(STAGES)} {path}")
    parts.append(f"send lag {result['send_lag_ms']} ms")
    if result["accepted"] < result["incidents"]:
        parts.append(f"answers {result['statuses']}: {result['refusals'][:1]}")
    print("  ".join(parts), flush=True)
