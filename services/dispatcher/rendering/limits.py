"""Channel length rules and shortening. Pure.

Short-form channels measure text their own way: SMS in segments (GSM-7 or UCS-2),
Mastodon and Bluesky in grapheme clusters, X in weighted characters (twitter-text v3).
Where a platform's rule cannot be known exactly here (which links it recognises), the
measure errs high, never low, so a text that fits here fits there.
``fit`` shortens a message body at a word boundary so the part that must survive does.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import regex

SMS: Final = "sms"
MASTODON: Final = "mastodon"
BLUESKY: Final = "bluesky"
X: Final = "x"

GSM_SINGLE_SEPTETS: Final = 160
GSM_PART_SEPTETS: Final = 153
UCS2_SINGLE_UNITS: Final = 70
UCS2_PART_UNITS: Final = 67
MASTODON_CHARACTERS: Final = 500
BLUESKY_GRAPHEMES: Final = 300
X_WEIGHTED_CHARACTERS: Final = 280
LINK_LENGTH: Final = 23  # what Mastodon and X count for any link they recognise

# GSM 03.38 default alphabet (127 characters; 0x1B is the escape) and its extension table,
# whose characters are sent as escape + character: 2 septets.
_GSM_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

# twitter-text v3: these code points weigh 1, every other weighs 2; an emoji weighs 2 in all.
_X_LIGHT_RANGES: Final = ((0x0000, 0x10FF), (0x2000, 0x200D), (0x2010, 0x201F), (0x2032, 0x2037))

_GRAPHEME: Final = regex.compile(r"\X")
_EMOJI: Final = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}\u20e3]")
_WORD: Final = regex.compile(r"\S+")
# A URL stops at the first character outside RFC 3986 (Latin and Cyrillic letters allowed):
# ending early makes the rest count as text, which never under-counts.
_URL: Final = regex.compile(
    r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%\p{Latin}\p{Cyrillic}]+", regex.IGNORECASE
)
_URL_HOST: Final = regex.compile(r"https?://(?:[^@/?#]*@)?([^/?#:]+)", regex.IGNORECASE)
_PUBLIC_TLD: Final = regex.compile(r"[a-z]{2,63}|xn--[a-z0-9-]+")
_PRIVATE_TLDS: Final = frozenset(
    {"internal", "local", "lan", "corp", "home", "localhost", "svc", "test", "invalid", "example"}
)
_BARE_DOMAIN: Final = regex.compile(
    r"(?<![\w@./:-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}(?![\w-])", regex.IGNORECASE
)
# Mastodon counts a mention @user@domain as @user.
_MENTION: Final = regex.compile(
    r"(?<![=/\w])@([a-z0-9_]+(?:[a-z0-9_.-]*[a-z0-9_])?)(?:@[\w.-]+\w)?", regex.IGNORECASE
)
_URL_TRAILING: Final = ".,;:!?'"
_CLOSERS: Final = {")": "(", "]": "["}
_CUT_TRAILING: Final = " \t\r\n,;:.!?-\u2013\u2014\u2026"
_ELLIPSIS: Final = "\u2026"
_GSM_ELLIPSIS: Final = "..."


@dataclass(frozen=True)
class SmsInfo:
    """How an SMS is sent: its encoding, its length in septets or UTF-16 units, its parts."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    segments: int


def sms_info(text: str) -> SmsInfo:
    """Encoding, length and segment count of ``text`` sent as one SMS.

    An extension character (2 septets) or a surrogate pair (2 units) is never split
    across segments. Empty text is 1 segment of 0 units: sending it still costs one.
    """
    if _is_gsm7(text):
        septets = [2 if char in _GSM_EXTENSION else 1 for char in text]
        segments = _segments(septets, GSM_SINGLE_SEPTETS, GSM_PART_SEPTETS)
        return SmsInfo("GSM-7", sum(septets), segments)
    units = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return SmsInfo("UCS-2", sum(units), _segments(units, UCS2_SINGLE_UNITS, UCS2_PART_UNITS))


def grapheme_count(text: str) -> int:
    """User-perceived characters (extended grapheme clusters); Bluesky's measure."""
    return len(_GRAPHEME.findall(text))


def url_spans(text: str) -> list[tuple[int, int]]:
    """Where http(s) URLs are, without trailing punctuation or an unmatched closing bracket."""
    spans = []
    for match in _URL.finditer(text):
        start, end = match.span()
        while end > start:
            last = text[end - 1]
            unmatched = last in _CLOSERS and text.count(_CLOSERS[last], start, end) < text.count(
                last, start, end
            )
            if last not in _URL_TRAILING and not unmatched:
                break
            end -= 1
        spans.append((start, end))
    return spans


def mastodon_length(text: str) -> int:
    """Mastodon's count: graphemes, a URL as 23, a mention ``@user@domain`` as ``@user``."""
    pieces, position = [], 0
    for start, end in url_spans(text):
        url = text[start:end]
        pieces += [text[position:start], "x" * _link_cost(url, grapheme_count(url))]
        position = end
    pieces.append(text[position:])
    return grapheme_count(_MENTION.sub(r"@\1", "".join(pieces)))


def x_length(text: str) -> int:
    """X's weighted length (twitter-text v3) of the NFC-normalised text; a URL counts 23.

    A bare domain (``example.com``) counts at least 23: X links it when its TLD is valid.
    """
    normal = unicodedata.normalize("NFC", text)
    total, position = 0, 0
    for start, end in url_spans(normal):
        url = normal[start:end]
        total += _x_text_length(normal[position:start]) + _link_cost(url, _x_weight(url))
        position = end
    return total + _x_text_length(normal[position:])


@dataclass(frozen=True)
class ChannelLimit:
    """A channel's hard length limit and the unit it is counted in."""

    channel: str
    limit: int
    unit: str  # "segments", "characters", "graphemes" or "weighted characters"

    def __post_init__(self) -> None:
        rule = _RULES.get(self.channel)
        if rule is None:
            raise ValueError(f"no length rule for channel {self.channel!r}")
        if self.unit != rule[0]:
            raise ValueError(f"{self.channel} is counted in {rule[0]}, not {self.unit}")
        if self.limit < 1:
            raise ValueError(f"{self.channel} limit must be at least 1, got {self.limit}")

    def measure(self, text: str) -> int:
        """The length of ``text`` in this channel's unit."""
        return _RULES[self.channel][1](text)

    def fits(self, text: str) -> bool:
        """Whether ``text`` is within the limit."""
        return self.measure(text) <= self.limit


def limit_for(channel: str, *, max_sms_segments: int) -> ChannelLimit | None:
    """The limit of a short-form channel; None for channels without a hard limit here."""
    if channel == SMS:
        return ChannelLimit(SMS, max_sms_segments, "segments")
    fixed = _FIXED_LIMITS.get(channel)
    return None if fixed is None else ChannelLimit(channel, fixed, _RULES[channel][0])


class MessageTooLong(ValueError):
    """The part of a message that must survive does not fit the channel on its own."""

    def __init__(self, channel: str, measured: int, limit: int, unit: str = "units") -> None:
        super().__init__(
            f"{channel}: the text that must be kept measures {measured} {unit}, "
            f"over the limit of {limit} {unit}"
        )
        self.channel = channel
        self.measured = measured
        self.limit = limit


@dataclass(frozen=True)
class Fitted:
    """A message that fits its channel; ``shortened`` when the body was cut."""

    text: str
    shortened: bool
    measured: int
    limit: int


def fit(body: str, keep: str, limit: ChannelLimit) -> Fitted:
    """``body`` + " " + ``keep``, with the body cut at a word boundary and an ellipsis if needed.

    ``keep`` always survives verbatim. The longest fitting body prefix is chosen; only when
    not even the first word fits is it cut between graphemes. If no part of the body fits,
    the message is ``keep`` alone. Raises MessageTooLong when ``keep`` alone does not fit.
    """
    body, keep = body.strip(), keep.strip()
    whole = _join(body, keep)
    if limit.fits(whole):
        return Fitted(whole, shortened=False, measured=limit.measure(whole), limit=limit.limit)
    if not limit.fits(keep):
        raise MessageTooLong(limit.channel, limit.measure(keep), limit.limit, limit.unit)

    def build(end: int) -> str:
        return _join(_cut(body[:end], keep, limit.channel), keep)

    word_ends = [match.end() for match in _WORD.finditer(body)][:-1]
    text = _longest_fitting(word_ends, build, limit)
    if text is None:
        first_word = _WORD.match(body)  # body is not empty: an empty one always fits
        assert first_word is not None
        grapheme_ends = [match.end() for match in _GRAPHEME.finditer(first_word.group())]
        text = _longest_fitting(grapheme_ends, build, limit) or keep
    return Fitted(text, shortened=True, measured=limit.measure(text), limit=limit.limit)


def _is_gsm7(text: str) -> bool:
    return all(char in _GSM_BASIC or char in _GSM_EXTENSION for char in text)


def _segments(sizes: Sequence[int], single: int, part: int) -> int:
    """Segments needed when every segment is filled in order, no character split."""
    if sum(sizes) <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > part:
            segments, used = segments + 1, 0
        used += size
    return segments


def _link_cost(url: str, plain: int) -> int:
    """23 for a link the platform surely recognises; else the larger of 23 and its text."""
    host = _URL_HOST.match(url)
    labels = host.group(1).lower().split(".") if host else []
    recognised = (
        len(labels) >= 2
        and all(labels)
        and _PUBLIC_TLD.fullmatch(labels[-1]) is not None
        and labels[-1] not in _PRIVATE_TLDS
    )
    return LINK_LENGTH if recognised else max(LINK_LENGTH, plain)


def _x_text_length(text: str) -> int:
    total, position = 0, 0
    for match in _BARE_DOMAIN.finditer(text):
        domain_weight = max(LINK_LENGTH, _x_weight(match.group()))
        total += _x_weight(text[position : match.start()]) + domain_weight
        position = match.end()
    return total + _x_weight(text[position:])


def _x_weight(text: str) -> int:
    total = 0
    for grapheme in _GRAPHEME.findall(text):
        if _EMOJI.search(grapheme):
            total += 2
        else:
            total += sum(1 if _x_light(ord(char)) else 2 for char in grapheme)
    return total


def _x_light(code_point: int) -> bool:
    return any(low <= code_point <= high for low, high in _X_LIGHT_RANGES)


def _join(body: str, keep: str) -> str:
    return " ".join(part for part in (body, keep) if part)


def _cut(prefix: str, keep: str, channel: str) -> str:
    """A cut body ends in an ellipsis; "..." on SMS when "…" would force UCS-2."""
    prefix = prefix.rstrip(_CUT_TRAILING)
    if not prefix:
        return ""
    gsm = channel == SMS and _is_gsm7(prefix + keep)
    return prefix + (_GSM_ELLIPSIS if gsm else _ELLIPSIS)


def _longest_fitting(
    ends: Sequence[int], build: Callable[[int], str], limit: ChannelLimit
) -> str | None:
    """Binary search for the longest fitting candidate; only ever returns a tested fit."""
    best, low, high = None, 0, len(ends)
    while low < high:
        middle = (low + high) // 2
        candidate = build(ends[middle])
        if limit.fits(candidate):
            best, low = candidate, middle + 1
        else:
            high = middle
    return best


_RULES: Final[dict[str, tuple[str, Callable[[str], int]]]] = {
    SMS: ("segments", lambda text: sms_info(text).segments),
    MASTODON: ("characters", mastodon_length),
    BLUESKY: ("graphemes", grapheme_count),
    X: ("weighted characters", x_length),
}
_FIXED_LIMITS: Final = {
    MASTODON: MASTODON_CHARACTERS,
    BLUESKY: BLUESKY_GRAPHEMES,
    X: X_WEIGHTED_CHARACTERS,
}
