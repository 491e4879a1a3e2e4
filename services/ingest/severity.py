"""Each source's severity words, normalized to Clarion's four levels (SEV1..SEV4).

A source module declares a :class:`SeverityMap`: its own words on top of the
:data:`COMMON_WORDS` most tools share, and the level for a word it doesn't know.
Operators override words per source, or for every source with ``"*"``, through
the plan's ``source_severities``; :func:`configured` applies those overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from shared.contracts import Severity

ALL_SOURCES: Final = "*"

COMMON_WORDS: Final[Mapping[str, Severity]] = MappingProxyType(
    {
        **dict.fromkeys(
            ("critical", "crit", "page", "emergency", "fatal", "disaster", "p1", "sev1"),
            Severity.CRITICAL,
        ),
        **dict.fromkeys(("high", "error", "err", "major", "severe", "p2", "sev2"), Severity.ERROR),
        **dict.fromkeys(
            ("warning", "warn", "minor", "medium", "average", "p3", "sev3"), Severity.WARNING
        ),
        **dict.fromkeys(
            ("info", "informational", "notice", "low", "none", "ok", "debug", "p4", "p5", "sev4"),
            Severity.INFO,
        ),
    }
)


@dataclass(frozen=True)
class SeverityMap:
    """Words (matched case-insensitively, trimmed) to severities, and a fallback."""

    words: Mapping[str, Severity] = field(default_factory=lambda: COMMON_WORDS)
    default: Severity = Severity.WARNING

    def of(self, word: str | None) -> Severity:
        """The severity ``word`` names; :attr:`default` when it is missing or unknown."""
        if not word:
            return self.default
        return self.words.get(word.strip().lower(), self.default)

    def with_words(self, extra: Mapping[str, Severity]) -> SeverityMap:
        """This map with ``extra`` words added (they win over existing ones)."""
        merged = {**self.words, **{k.strip().lower(): v for k, v in extra.items()}}
        return SeverityMap(MappingProxyType(merged), self.default)


def configured(
    source: str, base: SeverityMap, overrides: Mapping[str, Mapping[str, Severity]]
) -> SeverityMap:
    """``base`` with the operator's ``"*"`` overrides, then the ``source`` ones, applied."""
    result = base
    for scope in (ALL_SOURCES, source):
        if scope in overrides:
            result = result.with_words(overrides[scope])
    return result
