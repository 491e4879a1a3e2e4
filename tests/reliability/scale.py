"""How big the reliability scenarios run: quick inside ``make test``, full with
``make test-reliability`` (``CLARION_RELIABILITY=full``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final

FULL: Final = os.environ.get("CLARION_RELIABILITY", "quick").lower() == "full"


def sized(quick: int, full: int) -> int:
    """``full`` under ``make test-reliability``, else ``quick``."""
    return full if FULL else quick


@dataclass
class Outcome:
    """One scenario's one-line summary: what was sent, delivered, lost and duplicated."""

    scenario: str
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"{self.scenario}: sent {self.sent}, delivered {self.delivered}, "
            f"lost {self.lost}, duplicated {self.duplicated}{extra}"
        )


OUTCOMES: list[Outcome] = []
"""Every scenario's outcome, printed at the end of the run (see conftest)."""


def report(outcome: Outcome) -> Outcome:
    """Keep ``outcome`` for the end-of-run summary and return it (assert on it after)."""
    OUTCOMES.append(outcome)
    return outcome
