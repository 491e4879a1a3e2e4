"""Content check: does a customer message carry what good incident communication needs? Pure.

Elements: the impact, an apology (on opening and resolution), the next update time and
where to follow (until resolved), a timestamp with its time zone, a length that fits the
channel, and no monitoring jargon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import regex

from services.dispatcher.rendering.limits import ChannelLimit, url_spans

EVENTS: Final = (
    "opened",
    "updated",
    "severity_changed",
    "update_due",
    "resolved",
    "postmortem_published",
    "ack_overdue",
    "postmortem_due",
)
"""Every event kind (``shared.plan.EventKind``). The last two are internal only: fan-out
never sends them to a public audience, so a customer message about them is never checked;
they are here so expectations can name every kind."""
ELEMENTS: Final = (
    "impact",
    "apology",
    "next update",
    "where to follow",
    "timestamp",
    "length",
    "jargon",
)
_APOLOGY_EVENTS: Final = frozenset({"opened", "resolved"})
_CLOSING_EVENTS: Final = frozenset({"resolved", "postmortem_published", "postmortem_due"})

_APOLOGY: Final = regex.compile(
    r"\b(?:sorry|apologi[sz]e[sd]?|apologies|apology)\b", regex.IGNORECASE
)
_SENTENCE_END: Final = regex.compile(r"(?<=[.!?])\s+|\n+")
_UPDATE_WORD: Final = regex.compile(r"\bupdate", regex.IGNORECASE)
_RESOLVED_WORD: Final = regex.compile(r"\bresolved\b", regex.IGNORECASE)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SELECTOR: Final = regex.compile(r"\{[^{}\n]*\}")
_LABEL_DUMP: Final = regex.compile(
    r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]*(?:=~|!=|!~|=)(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s,;{}\"']+)"
)
_METRIC: Final = regex.compile(r"(?<!\w)[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+(?!\w)")
_METRIC_SUFFIXES: Final = ("_total", "_seconds", "_bytes", "_count", "_bucket", "_ratio", "_sum")
_HOST_PORT: Final = regex.compile(rf"(?<![\w.-])({_LABEL}(?:\.{_LABEL})*):\d{{1,5}}(?!\w)")
_PRIVATE_HOST: Final = regex.compile(
    rf"(?<![\w.-])(?:{_LABEL}\.)+(?:internal|local|svc|lan|corp)(?![\w-]|\.[A-Za-z0-9])",
    regex.IGNORECASE,
)
_IPV4: Final = regex.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")


@dataclass(frozen=True)
class Expectations:
    """What one rendered message must say, for the event it announces."""

    event: str
    impact: str
    timestamp: str  # formatted with its zone, e.g. "14:30 UTC, Mon 23 Nov 2026"
    next_update: str | None  # None: no cadence, so promise an update when resolved
    status_url: str
    jargon: tuple[str, ...] = ()  # terms customers must never see: label keys, hostnames

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown event {self.event!r}; expected one of {EVENTS}")
        for name in ("impact", "timestamp", "status_url"):
            if not getattr(self, name).strip():
                raise ValueError(f"expectation {name} must not be empty")


@dataclass(frozen=True)
class Finding:
    """The verdict on one element, with a reason either way."""

    element: str
    ok: bool
    reason: str


def check_message(
    text: str,
    expectations: Expectations,
    limit: ChannelLimit | None = None,
    *,
    shortened: bool = False,
) -> list[Finding]:
    """One finding per element, in the order of ``ELEMENTS``.

    ``shortened`` says the text was cut to fit its channel, so a missing impact is blamed on
    the cut. ``limit`` None means the channel has no hard length limit.
    """
    return [
        _impact(text, expectations, shortened=shortened),
        _apology(text, expectations.event),
        _next_update(text, expectations),
        _where_to_follow(text, expectations),
        _contains("timestamp", text, expectations.timestamp),
        _length(text, limit),
        _jargon(text, expectations),
    ]


def passed(findings: Iterable[Finding]) -> bool:
    """Whether every element is ok."""
    return all(finding.ok for finding in findings)


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _contains(element: str, text: str, expected: str) -> Finding:
    if _normal(expected) in _normal(text):
        return Finding(element, ok=True, reason=f'found "{expected}"')
    return Finding(element, ok=False, reason=f'no {element}: expected "{expected}"')


def _impact(text: str, expectations: Expectations, *, shortened: bool) -> Finding:
    impact = expectations.impact.strip().rstrip(".!")
    finding = _contains("impact", text, impact)
    if finding.ok or not shortened:
        return finding
    reason = f'no impact: shortening the message to fit the channel cut "{impact}"'
    return Finding("impact", ok=False, reason=reason)


def _apology(text: str, event: str) -> Finding:
    if event not in _APOLOGY_EVENTS:
        return Finding("apology", ok=True, reason="not required")
    match = _APOLOGY.search(text)
    if match:
        return Finding("apology", ok=True, reason=f'found "{match.group()}"')
    article = "an" if event[0] in "aeiou" else "a"
    reason = f"no apology: {article} {event} message must apologise (sorry/apologise/apologies)"
    return Finding("apology", ok=False, reason=reason)


def _next_update(text: str, expectations: Expectations) -> Finding:
    if expectations.event in _CLOSING_EVENTS:
        return Finding("next update", ok=True, reason=f"not required for {expectations.event}")
    if expectations.next_update is not None:
        return _contains("next update", text, expectations.next_update)
    for sentence in _SENTENCE_END.split(text):
        if _UPDATE_WORD.search(sentence) and _RESOLVED_WORD.search(sentence):
            return Finding("next update", ok=True, reason=f'promises "{sentence.strip()}"')
    reason = (
        "no next update: with no update cadence the message must promise an update "
        "when it is resolved"
    )
    return Finding("next update", ok=False, reason=reason)


def _where_to_follow(text: str, expectations: Expectations) -> Finding:
    url = expectations.status_url
    if url in text:
        return Finding("where to follow", ok=True, reason=f"found {url}")
    if expectations.event in _CLOSING_EVENTS:
        return Finding("where to follow", ok=True, reason=f"not required for {expectations.event}")
    return Finding("where to follow", ok=False, reason=f"no status page link: expected {url}")


def _length(text: str, limit: ChannelLimit | None) -> Finding:
    if limit is None:
        return Finding("length", ok=True, reason="no limit")
    figures = f"{limit.measure(text)} of {limit.limit} {limit.unit}"
    if limit.fits(text):
        return Finding("length", ok=True, reason=figures)
    return Finding("length", ok=False, reason=f"too long for {limit.channel}: {figures}")


def _jargon(text: str, expectations: Expectations) -> Finding:
    found = _jargon_found(_mask_status_urls(text, expectations.status_url), expectations.jargon)
    if not found:
        return Finding("jargon", ok=True, reason="none found")
    return Finding("jargon", ok=False, reason="found jargon: " + "; ".join(found))


def _mask_status_urls(text: str, status_url: str) -> str:
    """Blank out links to the status page, keeping every other offset in place."""
    base = status_url.rstrip("/")
    for start, end in url_spans(text):
        url = text[start:end].rstrip("/")
        if url == base or url.startswith((base + "/", base + "?", base + "#")):
            text = text[:start] + " " * (end - start) + text[end:]
    return text


def _jargon_found(text: str, terms: Iterable[str]) -> list[str]:
    """Descriptions of jargon in ``text``; a match inside a reported one is not repeated."""
    hits: list[tuple[int, int, str]] = []
    hits += [(*m.span(), f"label selector {m.group()}") for m in _SELECTOR.finditer(text)]
    hits += [(*m.span(), f"label dump {m.group()}") for m in _LABEL_DUMP.finditer(text)]
    for term in dict.fromkeys(term.strip() for term in terms if term.strip()):
        pattern = regex.compile(rf"(?<!\w){regex.escape(term)}(?!\w)")
        hits += [(*m.span(), f"term {m.group()}") for m in pattern.finditer(text)]
    hits += [(*m.span(), f"metric name {m.group()}") for m in _METRIC.finditer(text) if _metric(m)]
    hits += [
        (*m.span(), f"host and port {m.group()}")
        for m in _HOST_PORT.finditer(text)
        if regex.search(r"[A-Za-z]", m.group(1)) or _ipv4(m.group(1))
    ]
    hits += [(*m.span(), f"hostname {m.group()}") for m in _PRIVATE_HOST.finditer(text)]
    hits += [(*m.span(), f"IP address {m.group()}") for m in _IPV4.finditer(text) if _ipv4(m)]
    kept: list[tuple[int, int, str]] = []
    for start, end, description in sorted(hits, key=lambda hit: (hit[0], hit[0] - hit[1])):
        if not any(k_start <= start and end <= k_end for k_start, k_end, _ in kept):
            kept.append((start, end, description))
    return list(dict.fromkeys(description for _, _, description in kept))


def _metric(match: regex.Match[str]) -> bool:
    name = match.group().lower()
    return name.endswith(_METRIC_SUFFIXES) or name.count("_") >= 2


def _ipv4(value: regex.Match[str] | str) -> bool:
    address = value if isinstance(value, str) else value.group()
    parts = address.split(".")
    return len(parts) == 4 and all(part.isdigit() and int(part) <= 255 for part in parts)
