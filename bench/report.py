"""Figures, the table they make, the machine they came from, and the JSON they are kept in."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    """One line of the table: a measure, Clarion's figure and Alertmanager's where there is one."""

    scenario: str
    measure: str
    clarion: str
    alertmanager: str = ""
    ratio: str = ""  # Clarion / Alertmanager, for the reader's convenience
    target: str = ""  # the target, for context: nothing asserts it


@dataclass
class ScenarioResult:
    name: str
    figures: list[Figure] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p99 and max of durations given in seconds, in milliseconds."""
    if not seconds:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(percentile(ordered, 0.99), 2),
        "max": round(ordered[-1], 2),
    }


def ms(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def ratio(clarion: float | None, alertmanager: float | None) -> str:
    if not clarion or not alertmanager:
        return ""
    return f"{clarion / alertmanager:.2f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python_speed": python_speed(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


SPEED_LOOPS = 200_000


def python_speed(rounds: int = 3) -> float:
    """Millions of iterations per second of a fixed pure-Python loop (dict reads and writes,
    arithmetic), the best of ``rounds``: how fast this machine runs the services' kind of
    code right now. The same commit has measured a third apart on one day here; figures
    from runs whose speeds differ that much compare only side by side."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        table: dict[int, int] = {}
        for i in range(SPEED_LOOPS):
            table[i & 1023] = table.get(i & 511, 0) + i
        best = min(best, time.perf_counter() - began)
    return round(SPEED_LOOPS / best / 1e6, 2)


def table(figures: Sequence[Figure]) -> str:
    header = ("scenario", "measure", "Clarion", "Alertmanager", "C/AM", "target")
    rows = [header] + [
        (f.scenario, f.measure, f.clarion, f.alertmanager, f.ratio, f.target) for f in figures
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown(figures: Sequence[Figure]) -> str:
    """The table as Markdown, for the README."""
    lines = [
        "| Scenario | Measure | Clarion | Alertmanager | Clarion/AM | Target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {f.scenario} | {f.measure} | {f.clarion} | {f.alertmanager} | {f.ratio} | {f.target} |"
        for f in figures
    ]
    return "\n".join(lines)


def write(results: Sequence[ScenarioResult], command: str, directory: Path = RESULTS) -> Path:
    """``<scenario>.json`` for each result, and ``latest.json``: the newest of every scenario
    (scenarios not run this time keep their last result)."""
    directory.mkdir(parents=True, exist_ok=True)
    facts = machine()
    latest_path = directory / "latest.json"
    latest: dict[str, Any] = {}
    if latest_path.exists():
        latest = json.loads(latest_path.read_text())
    scenarios = dict(latest.get("scenarios", {}))
    for result in results:
        record = {
            "scenario": result.name,
            "recorded_at": facts["date"],
            "command": command,
            "machine": facts,
            "options": result.options,
            "figures": [asdict(f) for f in result.figures],
            "data": result.data,
        }
        (directory / f"{result.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        scenarios[result.name] = record
    latest = {"recorded_at": facts["date"], "machine": facts, "scenarios": scenarios}
    latest_path.write_text(json.dumps(latest, indent=2) + "\n")
    return latest_path


def recorded_figures(directory: Path = RESULTS) -> list[Figure]:
    """Every figure in ``latest.json``: the newest result of each scenario."""
    path = directory / "latest.json"
    if not path.exists():
        return []
    scenarios = json.loads(path.read_text()).get("scenarios", {})
    return [Figure(**f) for record in scenarios.values() for f in record.get("figures", [])]
