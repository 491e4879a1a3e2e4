"""The benchmark's cut of a first message's path into stages (bench/stages.py)."""

from __future__ import annotations

from bench.stages import STAGES, Moments, breakdown, paths


def test_an_incident_s_moments_become_its_four_stages() -> None:
    moments = Moments(
        posted=100.0, opened=100.001, queued=100.005, started=100.009, arrived=100.011
    )

    took = [round(s * 1000, 3) for s in moments.stages()]

    assert took == [1.0, 4.0, 4.0, 2.0]


def test_only_incidents_with_every_moment_known_are_cut() -> None:
    found = paths(
        posted={"a": 1.0, "b": 1.0},
        opened={"a": 1.001, "b": 1.001},
        queued={"a": 1.002},  # b's job was never read back
        started={"a": 1.003, "b": 1.003},
        arrived={"a": 1.004, "b": 1.004},
    )

    assert found == [Moments(1.0, 1.001, 1.002, 1.003, 1.004)]


def test_the_breakdown_summarises_each_stage_in_ms() -> None:
    fast = Moments(0.0, 0.001, 0.002, 0.003, 0.004)
    slow = Moments(0.0, 0.001, 0.011, 0.012, 0.013)

    summary = breakdown([fast, slow, fast])

    assert list(summary) == list(STAGES)
    assert summary["fan-out"]["n"] == 3
    assert summary["fan-out"]["p50"] == 1.0
    assert summary["fan-out"]["max"] == 10.0
    assert summary["ingest"]["max"] == 1.0
