"""Size checks for what a template builds, each made before the value exists. Pure.

:class:`SizeLimits` holds the output limit and refuses, with
:class:`~jinja2.exceptions.SecurityError`, an operation whose result would pass it:
repetition and integer growth, string operations with widths or growing replacements,
``str.format`` specs, printf-style ``%``, joins, ``~`` and ``+``, and the text of a
container turned into a string. The text of a container is measured by :func:`text_length`,
which walks it (iteratively, so deep nesting is no problem; cycles print as ``[...]`` and
are counted so) and stops as soon as the count passes the budget, so measuring a huge
value costs no more than measuring one just over the limit.

The measures are lower bounds within a small factor: a string counts its characters and
its quotes, not the escapes ``repr``, JSON or HTML may add (at most about ten characters
for one). Inside a container, a value of a type a template cannot build (a pydantic model,
a date) is measured by its own ``repr``, once however often it appears; on its own it is
not measured (its ``str`` is its own business, and the output limit still applies).

What cannot be measured before it runs is built here instead, stopping at the limit:
:func:`pretty` (the ``pprint`` filter, whose indentation grows with nesting and key
length), :func:`json_text` (``tojson``, whose ``indent`` repeats per level) and
:func:`wrapped` (``wordwrap``, whose line count only the wrapping knows). Template output
captured into a value (macros, call, set and filter blocks, imported templates) goes
into a :class:`BoundedText`, which refuses the chunk that passes the limit.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import textwrap
from collections import Counter
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass
from itertools import chain
from pprint import PrettyPrinter
from typing import Any, Final, TypeGuard

from jinja2.exceptions import SecurityError
from jinja2.utils import Namespace

MAX_INTEGER_BITS: Final = 128
"""Integer ``*`` and ``**`` refuse results estimated above this (about 38 decimal digits)."""

# String methods (and filters of the same name) whose integer arguments are output widths.
_WIDTH_OPERATIONS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent"})
_SIZED: Final = (str, bytes, list, tuple, dict, set, frozenset)
_DIGITS: Final = re.compile(r"\d+")
# A printf conversion after ``%`` and its optional ``(key)``: flags, width, precision,
# length modifier (ignored by Python) and type; the type is missing at the end of the text.
_PRINTF_CONVERSION: Final = re.compile(
    r"[-+ #0]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?[hlL]?(?P<kind>.)?", re.DOTALL
)
_PRINTF_TEXT_KINDS: Final = frozenset("sra")  # precision truncates these instead of padding
_PRINTF_BYTES_TEXT_KINDS: Final = _PRINTF_TEXT_KINDS | {"b"}
_PRINTF_REPR_KINDS: Final = frozenset("ra")
# Every word urlize can turn into a link holds one of these (``www.``, ``.com``, ``http:``,
# ``mailto:``, an address's ``@``, an extra scheme's ``:``).
_LINK_MARKS: Final = (".", "@", ":")
# Integers up to this size are written out to be measured (Python refuses to write an int
# of more than 4300 digits anyway).
_EXACT_INTEGER_BITS: Final = 4096


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int)


def _argument(options: Sequence[Any], named: Mapping[str, Any], index: int, key: str) -> Any:
    """A call's argument given by position ``index`` or by name ``key``; None if absent."""
    return options[index] if index < len(options) else named.get(key)


# --- the text of a value ----------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """How ``repr`` writes a container: around its items, which it separates by two characters."""

    opening: int
    closing: int
    items: Iterator[object]
    cycle: int  # the length of what repr writes for a container already being written


def _namespace_attributes(namespace: Namespace) -> Mapping[str, Any] | None:
    # Namespace hides its dict behind __getattribute__; its repr prints that dict.
    try:
        attributes = object.__getattribute__(namespace, "_Namespace__attrs")
    except AttributeError:
        return None
    return attributes if isinstance(attributes, Mapping) else None


def _set_shape(value: set[object] | frozenset[object]) -> _Shape:
    """``{1, 2}``, ``set()``, ``frozenset({1, 2})``, ``frozenset()``."""
    name = len(type(value).__name__)
    if not value:
        return _Shape(name + 1, 1, iter(()), 0)
    if isinstance(value, set):
        return _Shape(1, 1, iter(value), 5)
    return _Shape(name + 2, 2, iter(value), 5)


def _shape(value: object) -> _Shape | None:
    """The container ``value`` is, as repr writes it; None for anything else."""
    if isinstance(value, list | tuple | dict):
        closing = 2 if isinstance(value, tuple) and len(value) == 1 else 1  # (item,)
        items = chain.from_iterable(value.items()) if isinstance(value, dict) else iter(value)
        return _Shape(1, closing, items, 5)
    if isinstance(value, set | frozenset):
        return _set_shape(value)
    if isinstance(value, KeysView | ValuesView | ItemsView):  # dict_keys([...]) and so on
        return _Shape(len(type(value).__name__) + 2, 2, iter(value), 5)
    attributes = _namespace_attributes(value) if isinstance(value, Namespace) else None
    if attributes is None:
        return None
    return _Shape(12, 2, chain.from_iterable(attributes.items()), 17)  # <Namespace {...}>


def _integer_digits(number: int) -> int:
    """At least the number of characters ``str(number)`` has."""
    bits = abs(number).bit_length()
    if bits <= _EXACT_INTEGER_BITS:
        return len(str(number))
    return (bits - 1) * 30103 // 100000 + 1 + (number < 0)  # 2 ** (bits - 1) has this many


def _scalar_length(value: object) -> int | None:
    """The length of a string, bytes or number as ``str`` writes it; None for anything else."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, bool) or value is None:
        return len(str(value))
    if isinstance(value, int):
        return _integer_digits(value)
    if isinstance(value, float):
        return len(repr(value))
    return None


def _leaf_repr_length(value: object, measured: dict[int, int]) -> int:
    if isinstance(value, str):
        return len(value) + 2  # the quotes
    if isinstance(value, bytes):
        return len(value) + 3
    scalar = _scalar_length(value)
    if scalar is not None:
        return scalar
    # Something a template cannot build: its own repr, once per object.
    if id(value) not in measured:
        measured[id(value)] = len(repr(value))
    return measured[id(value)]


class _Frame:
    """A container being walked: its items left, and whether one was counted yet."""

    __slots__ = ("identity", "items", "started")

    def __init__(self, items: Iterator[object], identity: int) -> None:
        self.items = items
        self.identity = identity
        self.started = False


_END: Final = object()


def _walk(value: object, budget: int) -> int:
    """At least ``len(repr(value))``, counting no further than just past ``budget``.

    Every item adds at least one character, so the walk takes at most about ``budget``
    steps, whatever the value holds and however often it holds it.
    """
    total = 0
    measured: dict[int, int] = {}
    frames: list[_Frame] = []
    being_written: set[int] = set()
    pending: object = value
    while True:
        if pending is not _END:
            shape = _shape(pending)
            if shape is None:
                total += _leaf_repr_length(pending, measured)
            elif id(pending) in being_written:
                total += shape.cycle
            else:
                total += shape.opening + shape.closing
                frames.append(_Frame(shape.items, id(pending)))
                being_written.add(id(pending))
            if total > budget:
                return total
        if not frames:
            return total
        frame = frames[-1]
        pending = next(frame.items, _END)
        if pending is _END:
            frames.pop()
            being_written.discard(frame.identity)
        elif frame.started:
            total += 2  # the separator before every item but the first: ", " or ": "
        else:
            frame.started = True


def text_length(value: object, budget: int) -> int:
    """At least ``len(str(value))``; stops counting once past ``budget``.

    Strings, bytes, numbers and containers (lists, tuples, dicts, sets, dict views,
    namespaces) are measured; anything else counts 0 here: a template cannot build it,
    and its own ``str`` is left to the output limit.
    """
    scalar = _scalar_length(value)
    if scalar is not None:
        return scalar
    return _walk(value, budget) if _shape(value) is not None else 0


def repr_length(value: object, budget: int) -> int:
    """At least ``len(repr(value))``; stops counting once past ``budget``."""
    return _walk(value, budget)


# --- building under the limit -----------------------------------------------------------


@dataclass
class _Tally:
    """Characters written so far, refused once past ``max_chars`` (plus ``slack``)."""

    max_chars: int
    what: str
    slack: int = 0
    size: int = 0

    def add(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.max_chars + self.slack:
            raise SecurityError(f"{self.what} exceeds {self.max_chars} characters")


class BoundedText(list[str]):
    """Chunks of text that refuse the one taking their total past ``max_chars``.

    Compiled templates append to it once per output node, so the count is kept inline.
    Chunks given as a tuple or list exist already and are counted together; any other
    iterable is counted chunk by chunk, so it stops at the one that passes the limit.
    """

    __slots__ = ("max_chars", "size", "what")

    def __init__(self, max_chars: int, what: str) -> None:  # starts empty: no list.__init__
        self.max_chars = max_chars
        self.what = what
        self.size = 0

    def append(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.max_chars:
            raise SecurityError(f"{self.what} exceeds {self.max_chars} characters")
        list.append(self, text)

    def extend(self, texts: Iterable[str]) -> None:
        if not isinstance(texts, tuple | list):
            for text in texts:  # what append() does, inline
                self.size += len(text)
                if self.size > self.max_chars:
                    raise SecurityError(f"{self.what} exceeds {self.max_chars} characters")
                list.append(self, text)
            return
        self.size += sum(map(len, texts))
        if self.size > self.max_chars:
            raise SecurityError(f"{self.what} exceeds {self.max_chars} characters")
        list.extend(self, texts)

    def text(self) -> str:
        return "".join(self)


class _BoundedStream(io.StringIO):
    """A text stream that refuses the write taking it past ``max_chars``."""

    def __init__(self, max_chars: int, what: str, slack: int = 0) -> None:
        super().__init__()
        self._tally = _Tally(max_chars, what, slack)

    def write(self, text: str) -> int:
        self._tally.add(text)
        return super().write(text)


def joined(parts: Iterable[str], max_chars: int, what: str) -> str:
    """``"".join(parts)``, refused once the parts add up past ``max_chars``."""
    collected = BoundedText(max_chars, what)
    try:
        collected.extend(parts)
    finally:
        close = getattr(parts, "close", None)
        if close is not None:
            close()
    return collected.text()


def pretty(value: object, max_chars: int) -> str:
    """``pprint.pformat(value)``, refused before its text passes ``max_chars``.

    pprint first builds the repr of the value (measured before), then writes it out line
    by line, indented by the column each item starts at; those writes are counted.
    """
    if repr_length(value, max_chars) > max_chars:
        raise SecurityError(_text_refusal(value, "for the pprint filter", max_chars))
    stream = _BoundedStream(max_chars, "pprint result", slack=1)  # the newline pprint() ends with
    PrettyPrinter(stream=stream).pprint(value)
    return stream.getvalue()[:-1]  # pformat() does not write that newline


def json_text(value: object, max_chars: int, **options: Any) -> str:
    """``json.dumps(value, **options)``, refused once the JSON passes ``max_chars``.

    The JSON is encoded piece by piece. With ``indent``, a nested level's indentation is
    written before the next level's is built, so no piece outgrows twice the limit.
    """
    indent = options.get("indent")
    if _is_int(indent) and indent > max_chars:
        raise SecurityError(f"tojson indent {indent} exceeds {max_chars}")
    return joined(json.JSONEncoder(**options).iterencode(value), max_chars, "tojson result")


def wrapped(
    text: str,
    *,
    width: int,
    break_long_words: bool,
    wrapstring: str,
    break_on_hyphens: bool,
    max_chars: int,
) -> str:
    """What Jinja's ``wordwrap`` filter returns, refused before it joins past ``max_chars``.

    Each line (a paragraph) is wrapped on its own, as the filter does; the wrapped lines
    and the wrapstrings between them are counted before anything is joined.
    """
    paragraphs: list[list[str]] = []
    total = -len(wrapstring)
    for line in text.splitlines():
        lines = textwrap.wrap(
            line,
            width=width,
            expand_tabs=False,
            replace_whitespace=False,
            break_long_words=break_long_words,
            break_on_hyphens=break_on_hyphens,
        )
        total += sum(map(len, lines)) + max(len(lines) - 1, 0) * len(wrapstring)
        total += len(wrapstring)  # before this paragraph (the first's is taken off above)
        if total > max_chars:
            raise SecurityError(f"wordwrap result exceeds {max_chars} characters")
        paragraphs.append(lines)
    return wrapstring.join([wrapstring.join(lines) for lines in paragraphs])


# --- string operations ------------------------------------------------------------------


def _occurrences(subject: str | bytes, part: object) -> int | None:
    """How often ``part`` occurs in ``subject`` (length + 1 if empty); None if not its kind."""
    if isinstance(subject, bytes):
        return subject.count(part) if isinstance(part, bytes) else None
    return subject.count(part) if isinstance(part, str) else None


def _replaced_length(subject: str | bytes, options: Sequence[Any], named: Mapping[str, Any]) -> int:
    old, new, count = (
        _argument(options, named, i, k) for i, k in enumerate(("old", "new", "count"))
    )
    texts = isinstance(old, str) and isinstance(new, str)
    if not (texts or (isinstance(old, bytes) and isinstance(new, bytes))) or len(new) <= len(old):
        return len(subject)
    found = _occurrences(subject, old)
    if found is None:
        return len(subject)
    if _is_int(count) and count >= 0:
        found = min(found, count)
    return len(subject) + found * (len(new) - len(old))


def _indented_length(subject: str | bytes, options: Sequence[Any], named: Mapping[str, Any]) -> int:
    """At most what ``subject|indent(width, first)`` produces (blank lines stay unindented)."""
    width = _argument(options, named, 0, "width")
    width = 4 if width is None else width
    indention = len(width) if isinstance(width, str) else max(width, 0) if _is_int(width) else 0
    lines = len(subject.splitlines()) + (1 if _argument(options, named, 1, "first") else 0)
    return len(subject) + lines * indention


def _expanded_length(subject: str | bytes, options: Sequence[Any], named: Mapping[str, Any]) -> int:
    """At most what ``subject.expandtabs(tabsize)`` produces: a tab grows to tabsize at most."""
    tabsize = _argument(options, named, 0, "tabsize")
    tabsize = 8 if tabsize is None else tabsize
    tabs = subject.count(b"\t") if isinstance(subject, bytes) else subject.count("\t")
    return len(subject) + tabs * (max(tabsize - 1, 0) if _is_int(tabsize) else 0)


def _translated_length(
    subject: str | bytes, options: Sequence[Any], named: Mapping[str, Any]
) -> int:
    """What ``subject.translate(table)`` produces: each character's replacement, added up.

    A table maps an ordinal to a string (any length), an ordinal or None; looked up once
    per distinct character. Bytes tables map byte to byte, so bytes keep their length.
    """
    table = _argument(options, named, 0, "table")
    if isinstance(subject, bytes) or not hasattr(table, "__getitem__"):
        return len(subject)
    total = 0
    for character, count in Counter(subject).items():
        try:
            replacement = table[ord(character)]
        except LookupError:
            replacement = character
        total += count * (len(replacement) if isinstance(replacement, str) else 1)
    return total


_ESTIMATED_RESULTS: Final[
    Mapping[str, Callable[[str | bytes, Sequence[Any], Mapping[str, Any]], int]]
] = {
    "replace": _replaced_length,
    "indent": _indented_length,
    "expandtabs": _expanded_length,
    "translate": _translated_length,
}


# --- printf-style formatting ------------------------------------------------------------


@dataclass(frozen=True)
class _PrintfConversion:
    key: str | None
    width: str | None
    precision: str | None
    kind: str


def _printf_conversions(template: str) -> Iterator[_PrintfConversion]:
    """The conversions of a printf-style template, read as ``str % values`` reads them.

    Stops where Python's own parsing would fail (an unclosed key, a ``%`` at the end).
    """
    start = template.find("%")
    while start != -1:
        position, key = start + 1, None
        if template.startswith("(", position):  # a mapping key; Python allows nested parens
            depth, end = 1, position + 1
            while end < len(template) and depth:
                depth += {"(": 1, ")": -1}.get(template[end], 0)
                end += 1
            if depth:
                return
            key, position = template[position + 1 : end - 1], end
        match = _PRINTF_CONVERSION.match(template, position)
        if match is None or match["kind"] is None:
            return
        yield _PrintfConversion(key, match["width"], match["precision"], match["kind"])
        start = template.find("%", match.end())


def _shown(number: int | str) -> str:
    """A width for an error message, shortened when it is absurdly long."""
    if isinstance(number, str):
        return number if len(number) <= 20 else f"{number[:20]}... ({len(number)} digits)"
    return str(number) if number.bit_length() <= 64 else f"of {number.bit_length()} bits"


def _text_refusal(value: object, where: str, max_chars: int) -> str:
    return f"the text of a {type(value).__name__} {where} exceeds {max_chars} characters"


# --- filter inputs ----------------------------------------------------------------------

# Filters that take a container without turning it into text, or that measure it themselves.
# Every other filter's input is measured as text first (Jinja's own filters of that kind
# call str(), soft_str() or escape() on it; a filter added later is measured by default).
CONTAINER_FILTERS: Final = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "filesizeformat",
        "first", "float", "groupby", "int", "items", "join", "last", "length", "list",
        "map", "max", "min", "pprint", "random", "reject", "rejectattr", "reverse",
        "round", "select", "selectattr", "slice", "sort", "sum", "tojson", "truncate",
        "unique", "urlencode", "xmlattr",
    }
)  # fmt: skip

AttributeGetter = Callable[[Any], Callable[[Any], Any]]
"""Makes the getter of an attribute (``join(attribute=...)``) that reads it as the sandbox does."""


class _Pairs:
    """Key-value pairs, listed once, handed to ``xmlattr`` in place of what gave them."""

    def __init__(self, pairs: list[Any]) -> None:
        self._pairs = pairs

    def items(self) -> list[Any]:
        return self._pairs


# --- the limits -------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeLimits:
    """Refusals of values longer than ``max_chars``, each made before the value is built."""

    max_chars: int

    def bound(self, value: object, what: str) -> None:
        """Refuse a created string or collection longer than the output limit."""
        if isinstance(value, _SIZED) and len(value) > self.max_chars:
            raise SecurityError(f"{what} is longer than the limit of {self.max_chars}")

    def text(self, value: object, where: str) -> None:
        """Refuse turning a non-string ``value`` into text longer than the limit."""
        if not isinstance(value, str) and text_length(value, self.max_chars) > self.max_chars:
            raise SecurityError(_text_refusal(value, where, self.max_chars))

    def size(self, number: int | str, what: str) -> int:
        """A width or precision (an int, or a run of digits) refused above the output limit."""
        if isinstance(number, str):
            digits = number.lstrip("0")
            # More digits than the limit has is too big; int() would refuse thousands of them.
            too_long = len(digits) > len(str(self.max_chars))
            value = self.max_chars + 1 if too_long else int(digits or "0")
        else:
            value = abs(number)
        if value > self.max_chars:
            raise SecurityError(f"{what} {_shown(number)} exceeds {self.max_chars}")
        return value

    def product(self, left: Any, right: Any) -> None:
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INTEGER_BITS:
                raise SecurityError(f"multiplication result exceeds {MAX_INTEGER_BITS} bits")
            return
        for sequence, times in ((left, right), (right, left)):
            if (
                isinstance(sequence, _SIZED)
                and _is_int(times)
                and len(sequence) * times > self.max_chars
            ):
                raise SecurityError(
                    f"repetition would produce {len(sequence) * times} items,"
                    f" more than {self.max_chars}"
                )

    def addition(self, left: Any, right: Any) -> None:
        """Refuse ``left + right`` of two strings or sequences adding up past the limit."""
        if isinstance(left, _SIZED) and isinstance(right, _SIZED):
            total = len(left) + len(right)
            if total > self.max_chars:
                raise SecurityError(
                    f"addition would produce {total} items, more than {self.max_chars}"
                )

    def power(self, base: Any, exponent: Any) -> None:
        if not (_is_int(base) and _is_int(exponent)) or abs(base) <= 1 or exponent <= 0:
            return
        if exponent * math.log2(abs(base)) > MAX_INTEGER_BITS:
            raise SecurityError(f"exponentiation result exceeds {MAX_INTEGER_BITS} bits")

    def before(
        self, name: str, subject: Any, options: Sequence[Any], named: Mapping[str, Any]
    ) -> None:
        """Refuse a string operation whose result would obviously exceed the output limit."""
        if name in _WIDTH_OPERATIONS:
            for option in (*options, *named.values()):
                if _is_int(option) and option > self.max_chars:
                    raise SecurityError(f"{name} width {option} exceeds {self.max_chars}")
        estimate = _ESTIMATED_RESULTS.get(name)
        if (
            estimate is not None
            and isinstance(subject, str | bytes)
            and estimate(subject, options, named) > self.max_chars
        ):
            raise SecurityError(f"{name} result exceeds {self.max_chars} characters")

    def spec(self, spec: str) -> None:
        """Refuse a ``str.format`` spec holding a number (a width or precision) too large.

        Every run of digits counts, so specs of other types (``{:%Y}`` for a date) are safe too.
        """
        for digits in _DIGITS.findall(spec):
            self.size(digits, "format width or precision")

    def field(self, built: int, value: object, conversion: str | None = None) -> None:
        """Refuse one ``str.format`` field whose text would take the result past the limit.

        ``built`` is what the fields before it produced; ``conversion`` is its ``!r``,
        ``!a`` or ``!s``, applied before the field is formatted.
        """
        if isinstance(value, str) and conversion in {None, "s"}:
            return  # formatting a string builds nothing its spec does not allow
        left = self.max_chars - built
        measure = repr_length if conversion in {"r", "a"} else text_length
        if measure(value, left) > left:
            raise SecurityError(f"format result exceeds {self.max_chars} characters")

    def printf(self, template: str | bytes, values: object) -> None:
        """Refuse ``template % values`` if its widths, precisions and texts pass the limit.

        A ``%s``, ``%r`` or ``%a`` of a container counts the whole text the container
        turns into (it is built before a precision cuts it).
        """
        text_kinds = _PRINTF_TEXT_KINDS
        if isinstance(template, bytes):
            text_kinds = _PRINTF_BYTES_TEXT_KINDS  # %b inserts bytes as they are
            template = template.decode("latin-1")  # the conversions are ASCII
        positional = iter(values if isinstance(values, tuple) else (values,))
        total = 0
        for conversion in _printf_conversions(template):
            width = self._printf_size(conversion.width, positional, "format width")
            precision = self._printf_size(conversion.precision, positional, "format precision")
            if conversion.kind == "%":
                continue
            if conversion.key is None:
                value = next(positional, None)
            else:
                value = values.get(conversion.key) if isinstance(values, Mapping) else None
            if conversion.kind in text_kinds:
                left = self.max_chars - total
                measure = repr_length if conversion.kind in _PRINTF_REPR_KINDS else text_length
                length = measure(value, left)
                if isinstance(value, str | bytes) and precision is not None:
                    length = min(length, precision)
            else:
                length = precision or 0
            total += max(width or 0, length)
            if total > self.max_chars:
                raise SecurityError(f"% formatting result exceeds {self.max_chars} characters")

    def _printf_size(self, written: str | None, positional: Iterator[Any], what: str) -> int | None:
        """A width or precision: digits, or ``*`` for the next value (Python checks its type)."""
        if written != "*":
            return None if written is None else self.size(written, what)
        value = next(positional, None)
        return self.size(value, what) if _is_int(value) else None

    def join(self, separator: str | bytes, items: Iterable[Any], *, converts: bool) -> None:
        """Refuse a join whose items' texts and separators pass the limit.

        ``converts``: the join turns every item into text (the filter, ``Markup.join``);
        ``str.join`` does not, and fails on an item that is not a string.
        """
        total = 0
        for index, item in enumerate(items):
            if converts or isinstance(item, str | bytes):
                total += text_length(item, self.max_chars - total)
            total += len(separator) if index else 0
            if total > self.max_chars:
                raise SecurityError(f"join result exceeds {self.max_chars} characters")

    def concat(self, operands: Iterable[Any]) -> None:
        """Refuse ``a ~ b ~ ...`` whose operands' texts add up past the limit."""
        total = 0
        for operand in operands:
            total += text_length(operand, self.max_chars - total)
            if total > self.max_chars:
                raise SecurityError(f"~ result exceeds {self.max_chars} characters")

    def total(self, items: Iterable[Any], start: Any) -> None:
        """Refuse ``sum(items, start)`` adding strings or sequences up past the limit."""
        size = len(start) if isinstance(start, _SIZED) else 0
        for item in items:
            if isinstance(item, _SIZED):
                size += len(item)
                if size > self.max_chars:
                    raise SecurityError(f"sum result exceeds {self.max_chars} items")

    def batch(self, size: Any, fill_with: Any) -> None:
        """Refuse ``|batch(size, fill_with)`` padding its last batch past the limit."""
        if fill_with is not None and _is_int(size) and size > self.max_chars:
            raise SecurityError(
                f"batch size {_shown(size)} with fill_with exceeds {self.max_chars}"
            )

    def slices(self, count: Any) -> None:
        """Refuse ``|slice(count)`` making more lists than the limit."""
        if _is_int(count) and count > self.max_chars:
            raise SecurityError(f"slice count {_shown(count)} exceeds {self.max_chars}")

    def urlize(self, text: str, target: Any, rel: Any) -> None:
        """Refuse ``|urlize`` whose ``target`` and ``rel``, repeated per link, pass the limit."""
        extra = sum(len(value) for value in (target, rel) if isinstance(value, str))
        if not extra:
            return
        links = sum(text.count(mark) for mark in _LINK_MARKS)
        if len(text) + links * extra > self.max_chars:
            raise SecurityError(f"urlize result exceeds {self.max_chars} characters")

    def pairs(self, pairs: Iterable[Any], name: str) -> None:
        """Refuse ``|xmlattr`` or ``|urlencode`` whose keys and values' texts pass the limit.

        Pairs that are not two items are skipped: the filter fails on them itself.
        """
        total = 0
        for pair in pairs:
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                continue
            for part in pair:
                total += text_length(part, self.max_chars - total) + 2
            if total > self.max_chars:
                raise SecurityError(f"{name} result exceeds {self.max_chars} characters")

    def filter_input(
        self,
        name: str,
        value: Any,
        options: Sequence[Any],
        named: Mapping[str, Any],
        attribute_getter: AttributeGetter,
    ) -> Any:
        """Check what filter ``name`` builds from ``value`` before it runs.

        Returns what the filter gets instead of ``value``: the value itself, or what the
        check read from it (a generator is read once: ``join``, ``sum``, ``urlencode``;
        ``xmlattr`` calls ``items()``).
        """
        if name not in CONTAINER_FILTERS:
            self.text(value, f"for the {name} filter")
        if name in {"join", "sum"}:
            return self._added_up(name, value, options, named, attribute_getter)
        if name == "urlencode":
            return self._url_pairs(value)
        if name == "xmlattr":
            return self._attribute_pairs(value)
        given = functools.partial(_argument, options, named)
        if name == "format":  # printf-style: value % (named or options)
            self.printf(str(value), named or tuple(options))
        elif name == "batch":
            self.batch(given(0, "linecount"), given(1, "fill_with"))
        elif name == "slice":
            self.slices(given(0, "slices"))
        elif name == "urlize" and isinstance(value, str):
            self.urlize(value, given(2, "target"), given(3, "rel"))
        else:
            self.before(name, value, options, named)
        return value

    def _added_up(
        self,
        name: str,
        value: Any,
        options: Sequence[Any],
        named: Mapping[str, Any],
        attribute_getter: AttributeGetter,
    ) -> list[Any]:
        """The items ``value|join(d, attribute)`` or ``value|sum(attribute, start)`` reads."""
        items = list(value)
        given = functools.partial(_argument, options, named)
        attribute = given(1, "attribute") if name == "join" else given(0, "attribute")
        read = items if attribute is None else map(attribute_getter(attribute), items)
        if name == "join":
            separator = given(0, "d")
            self.join(str("" if separator is None else separator), read, converts=True)
        else:
            self.total(read, given(1, "start"))
        return items

    def _url_pairs(self, value: Any) -> Any:
        """What ``value|urlencode`` quotes: a string, or the pairs of a dict or an iterable."""
        if isinstance(value, str) or not isinstance(value, Iterable):
            self.text(value, "for the urlencode filter")
            return value
        listed = value if isinstance(value, dict) else list(value)
        self.pairs(listed.items() if isinstance(listed, dict) else listed, "urlencode")
        return listed

    def _attribute_pairs(self, value: Any) -> Any:
        """What ``value|xmlattr`` writes: the pairs ``value.items()`` gives."""
        if isinstance(value, dict):
            self.pairs(value.items(), "xmlattr")
            return value
        items = getattr(value, "items", None)  # the filter calls it as directly as this
        if not callable(items):
            return value  # the filter fails on it
        pairs = list(items())
        self.pairs(pairs, "xmlattr")
        return _Pairs(pairs)
