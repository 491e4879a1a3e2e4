"""The reliability suite: every scenario reports one line, printed at the end of the run."""

from __future__ import annotations

import pytest

from tests.reliability.scale import FULL, OUTCOMES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    size = "full" if FULL else "quick (make test-reliability runs the full size)"
    terminalreporter.section(f"reliability: {size}")
    for outcome in OUTCOMES:
        terminalreporter.write_line(outcome.line())
