"""The template engine: sandboxed, strict, and bounded in time and output size.

Templates are written by plan authors, so they are semi-trusted. They run in Jinja's
immutable sandbox (no private or internal attributes, no mutating ``list.append`` and
friends), undefined names are errors, and each render has two budgets:

* output size: chunks are counted while ``Template.generate()`` is consumed, and the render
  stops once ``max_output_chars`` is exceeded, so the oversized string is never joined;
* time: a deadline (``time.monotonic() + time_budget``) is checked for every chunk and in
  the sandbox hooks (calls, attribute and item access, intercepted operators, filters), so
  loops that print nothing still stop.

Values a template creates are bounded too, each before it is built: ``*`` may not repeat a
string or list past the output limit; integer ``*`` and ``**`` may not produce more than
``MAX_INTEGER_BITS`` bits; padding widths (``center``, ``ljust``...), ``indent``,
``expandtabs`` and ``replace`` are estimated before they run; ``str.format`` and
``format_map`` are first measured field by field, refusing a field whose spec (nested fields
filled in) has a width or precision above the limit, or a running total past it, before the
field is built; printf-style ``%`` and ``|format`` add up their widths, precisions (``*``
included) and string values first; ``join`` (filter and method) adds up its items and
separators first. A string or sequence that a call, a filter or a namespace read returns, or
that is passed to a macro, may not be longer than the output limit.

These are guards against mistakes and cheap bombs, not a memory sandbox. Still built before a
check sees them: the text of a large container (``{{ items }}``, ``|string``, ``|tojson``,
``|pprint``, a list that is one item of a join or one field of a format), ``|wordwrap`` with
a long ``wrapstring``, and ``|batch`` or ``|slice`` with huge counts. Process limits are the
real backstop.

Errors all become :class:`RenderFailed`. The template it names is the file where the error
happened (for an error in a layout, the layout), written as the search directory's name
followed by the path inside it, e.g. ``templates/email/opened.txt.j2`` for a shipped file
and ``plan-templates/email/opened.txt.j2`` for a plan's override, so an override is told
apart from the file it replaces.
"""

from __future__ import annotations

import functools
import math
import re
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import BuiltinMethodType, MethodType
from typing import Any, Final, TypeGuard

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
    select_autoescape,
)
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, Macro
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace
from markupsafe import Markup, soft_str

MAX_INTEGER_BITS: Final = 128
"""Integer ``*`` and ``**`` refuse results estimated above this (about 38 decimal digits)."""

TEMPLATE_CACHE_SIZE: Final = 256

# String methods (and filters of the same name) whose integer arguments are output widths.
_WIDTH_OPERATIONS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent"})
_SIZED: Final = (str, bytes, list, tuple, dict, set, frozenset)
_CALL_BOOKKEEPING: Final = frozenset({"_loop_vars", "_block_vars"})
_DIGITS: Final = re.compile(r"\d+")
# A printf conversion after ``%`` and its optional ``(key)``: flags, width, precision,
# length modifier (ignored by Python) and type; the type is missing at the end of the text.
_PRINTF_CONVERSION: Final = re.compile(
    r"[-+ #0]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?[hlL]?(?P<kind>.)?", re.DOTALL
)
_PRINTF_TEXT_KINDS: Final = frozenset("sra")  # precision truncates these instead of padding


class RenderFailed(Exception):
    """A template could not be rendered; ``str()`` reads ``<template> line <n>: <reason>``."""

    def __init__(self, template: str, line: int | None, reason: str) -> None:
        where = template if line is None else f"{template} line {line}"
        super().__init__(f"{where}: {reason}")
        self.template = template
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class TemplateProblem:
    path: str
    line: int | None
    reason: str


def sentence(value: object) -> str:
    """End the text with a full stop unless it already ends a sentence; empty stays empty."""
    text = soft_str(value).strip()  # keeps Markup as Markup, so nothing is escaped twice
    return text if not text or text[-1] in ".!?" else text + "."


class _OverBudget(Exception):
    def __init__(self, budget: timedelta) -> None:
        super().__init__("time budget exceeded")
        self.budget = budget


class _OutputTooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Deadline:
    at: float
    budget: timedelta

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise _OverBudget(self.budget)


# The deadline of the render running in this context; None outside a render (compiling).
_DEADLINE: ContextVar[_Deadline | None] = ContextVar("clarion_render_deadline", default=None)


def _check_deadline() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None:
        deadline.check()


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int)


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


def _argument(options: Sequence[Any], named: Mapping[str, Any], index: int, key: str) -> Any:
    """A call's argument given by position ``index`` or by name ``key``; None if absent."""
    return options[index] if index < len(options) else named.get(key)


def _replaced_length(subject: str, options: Sequence[Any], named: Mapping[str, Any]) -> int:
    old, new, count = (
        _argument(options, named, i, k) for i, k in enumerate(("old", "new", "count"))
    )
    if not (isinstance(old, str) and isinstance(new, str)) or len(new) <= len(old):
        return len(subject)
    found = len(subject) + 1 if not old else subject.count(old)
    if _is_int(count) and count >= 0:
        found = min(found, count)
    return len(subject) + found * (len(new) - len(old))


def _indented_length(subject: str, options: Sequence[Any], named: Mapping[str, Any]) -> int:
    """At most what ``subject|indent(width, first)`` produces (blank lines stay unindented)."""
    width = _argument(options, named, 0, "width")
    width = 4 if width is None else width
    indention = len(width) if isinstance(width, str) else max(width, 0) if _is_int(width) else 0
    lines = len(subject.splitlines()) + (1 if _argument(options, named, 1, "first") else 0)
    return len(subject) + lines * indention


def _expanded_length(subject: str, options: Sequence[Any], named: Mapping[str, Any]) -> int:
    """At most what ``subject.expandtabs(tabsize)`` produces: a tab grows to tabsize at most."""
    tabsize = _argument(options, named, 0, "tabsize")
    tabsize = 8 if tabsize is None else tabsize
    return len(subject) + subject.count("\t") * (max(tabsize - 1, 0) if _is_int(tabsize) else 0)


_ESTIMATED_RESULTS: Final[Mapping[str, Callable[[str, Sequence[Any], Mapping[str, Any]], int]]] = {
    "replace": _replaced_length,
    "indent": _indented_length,
    "expandtabs": _expanded_length,
}


def _shown(number: int | str) -> str:
    """A width for an error message, shortened when it is absurdly long."""
    if isinstance(number, str):
        return number if len(number) <= 20 else f"{number[:20]}... ({len(number)} digits)"
    return str(number) if number.bit_length() <= 64 else f"of {number.bit_length()} bits"


def _text_length(value: object) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


@dataclass(frozen=True)
class _Limits:
    max_chars: int

    def bound(self, value: object, what: str) -> None:
        """Refuse a created string or collection longer than the output limit."""
        if isinstance(value, _SIZED) and len(value) > self.max_chars:
            raise SecurityError(f"{what} is longer than the limit of {self.max_chars}")

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
            and isinstance(subject, str)
            and estimate(subject, options, named) > self.max_chars
        ):
            raise SecurityError(f"{name} result exceeds {self.max_chars} characters")

    def spec(self, spec: str) -> None:
        """Refuse a ``str.format`` spec holding a number (a width or precision) too large.

        Every run of digits counts, so specs of other types (``{:%Y}`` for a date) are safe too.
        """
        for digits in _DIGITS.findall(spec):
            self.size(digits, "format width or precision")

    def printf(self, template: str, values: object) -> None:
        """Refuse ``template % values`` if its widths, precisions and strings pass the limit."""
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
            if conversion.kind in _PRINTF_TEXT_KINDS:
                length = len(value) if isinstance(value, str) else 0
                length = length if precision is None else min(length, precision)
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

    def join(self, separator: str, lengths: Iterable[int]) -> None:
        """Refuse a join whose items (their ``lengths``) and separators pass the limit."""
        total = 0
        for index, length in enumerate(lengths):
            total += length + (len(separator) if index else 0)
            if total > self.max_chars:
                raise SecurityError(f"join result exceeds {self.max_chars} characters")


class _MeasuringFormatter(SandboxedFormatter):
    """Formats like the sandbox's ``str.format``, checking each field before building it.

    Used for a dry run. Fields are formatted one at a time, each spec is checked before its
    field is formatted, and the run stops once the fields add up past the limit, so no more
    than the limit plus one field (of a width within the limit) is ever built.
    """

    def __init__(self, env: _BoundedSandbox, **options: Any) -> None:
        super().__init__(env, **options)
        self._limits = env.limits
        self._total = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._limits.spec(format_spec)
        text = super().format_field(value, format_spec)
        self._total += _text_length(text)
        if self._total > self._limits.max_chars:
            raise SecurityError(f"format result exceeds {self._limits.max_chars} characters")
        return text


class _MeasuringEscapeFormatter(_MeasuringFormatter, SandboxedEscapeFormatter):
    """The measuring formatter for ``Markup.format``, which escapes every field."""


def _join_lengths(separator: str, items: Iterable[Any]) -> Iterator[int]:
    """The text lengths ``separator.join(items)`` adds up.

    ``Markup.join`` escapes, and so converts, every item; ``str.join`` fails on a non-string
    without converting it, so such an item counts nothing (and the join raises).
    """
    converts = isinstance(separator, Markup)
    for item in items:
        yield len(item) if isinstance(item, str) else len(str(item)) if converts else 0


def _join_filter_items(
    env: _BoundedSandbox, value: Any, options: Sequence[Any], named: Mapping[str, Any]
) -> list[Any]:
    """The items ``value|join(d, attribute)`` joins, listed once their total is checked."""
    items = list(value)  # a generator can be read once: the filter gets this list instead
    separator, attribute = (
        _argument(options, named, i, k) for i, k in enumerate(("d", "attribute"))
    )
    texts = items if attribute is None else map(make_attrgetter(env, attribute), items)
    env.limits.join(str("" if separator is None else separator), map(_text_length, texts))
    return items


def _guarded_filter(
    name: str, func: Callable[..., Any], env: _BoundedSandbox
) -> Callable[..., Any]:
    # Filters marked pass_context / pass_eval_context / pass_environment get that first.
    # functools.wraps copies the marker, so Jinja passes the same arguments to the guard.
    first = 1 if hasattr(func, "jinja_pass_arg") else 0
    limits = env.limits

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        if len(args) > first:
            value, options = args[first], args[first + 1 :]
            if name == "join":
                args = (*args[:first], _join_filter_items(env, value, options, kwargs), *options)
            elif name == "format":  # printf-style: soft_str(value) % (kwargs or args)
                limits.printf(soft_str(value), kwargs or tuple(options))
            else:
                limits.before(name, value, options, kwargs)
        result = func(*args, **kwargs)
        limits.bound(result, f"the result of the {name} filter")
        return result

    return guarded


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the render deadline and the size guards."""

    intercepted_binops: frozenset[str] = frozenset({"*", "**", "%"})

    def __init__(self, limits: _Limits, **options: Any) -> None:
        self.limits = limits
        super().__init__(**options)
        # Placeholder text is no use in incident messages, and lipsum(n=10**6) is slow.
        del self.globals["lipsum"]
        self.filters["sentence"] = sentence
        for name, func in list(self.filters.items()):
            self.filters[name] = _guarded_filter(name, func, self)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format`` / ``format_map``, measured by a dry run first.

        Jinja wraps these methods when they are looked up, so :meth:`call` never sees them.
        """
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        template: str = value.__self__
        by_mapping = value.__name__ == "format_map"

        @functools.wraps(sandboxed)
        def measured(*args: Any, **kwargs: Any) -> str:
            _check_deadline()
            formatter = (
                _MeasuringEscapeFormatter(self, escape=template.escape)
                if isinstance(template, Markup)
                else _MeasuringFormatter(self)
            )
            if not by_mapping:
                formatter.vformat(template, args, kwargs)
            elif len(args) == 1 and not kwargs:  # else Jinja's wrapper raises the TypeError
                formatter.vformat(template, (), args[0])
            return sandboxed(*args, **kwargs)

        return measured

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        # str methods, and Markup's wrappers of them, are bound methods of a string.
        if isinstance(obj, BuiltinMethodType | MethodType) and isinstance(obj.__self__, str):
            if obj.__name__ == "join" and len(args) == 1 and not kwargs:
                args = (list(args[0]),)  # a generator can be read once: join gets the list
                self.limits.join(obj.__self__, _join_lengths(obj.__self__, args[0]))
            else:
                self.limits.before(obj.__name__, obj.__self__, args, kwargs)
        if isinstance(obj, Macro):
            for argument in (*args, *(v for k, v in kwargs.items() if k not in _CALL_BOOKKEEPING)):
                self.limits.bound(argument, "a macro argument")
        result = super().call(context, obj, *args, **kwargs)
        self.limits.bound(result, "a call result")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        value = super().getattr(obj, attribute)
        if isinstance(obj, Namespace):
            self.limits.bound(value, f"namespace value {attribute!r}")
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        value = super().getitem(obj, argument)
        if isinstance(obj, Namespace):
            self.limits.bound(value, f"namespace value {argument!r}")
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        if operator == "*":
            self.limits.product(left, right)
        elif operator == "**":
            self.limits.power(left, right)
        elif operator == "%" and isinstance(left, str):
            self.limits.printf(left, right)
        return super().call_binop(context, operator, left, right)


class TemplateEngine:
    """Renders Jinja files found in ``search_path``; the first directory holding a name wins."""

    def __init__(
        self,
        search_path: Sequence[Path],
        *,
        max_output_chars: int = 200_000,
        time_budget: timedelta = timedelta(seconds=1),
    ) -> None:
        self._dirs = tuple(Path(directory).resolve() for directory in search_path)
        self._max_output_chars = max_output_chars
        self._time_budget = time_budget
        self._loader = FileSystemLoader(self._dirs)
        self._env = _BoundedSandbox(
            _Limits(max_output_chars),
            loader=self._loader,
            undefined=StrictUndefined,
            autoescape=select_autoescape(
                enabled_extensions=("html", "html.j2"), default_for_string=False, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=TEMPLATE_CACHE_SIZE,
        )
        self._parents: dict[str, str | None] = {}

    def render(self, name: str, values: Mapping[str, Any]) -> str:
        """The whole template ``name`` rendered with ``values``."""
        return self._run(name, lambda: self._env.get_template(name).generate(dict(values)))

    def render_block(self, name: str, block: str, values: Mapping[str, Any]) -> str:
        """One ``{% block %}`` of ``name`` (defined there or in a template it extends).

        Only the block runs: statements outside blocks (top-level ``set`` or ``import``)
        do not, so a block should import what it uses itself.
        """
        return self._run(name, lambda: self._block_chunks(name, block, dict(values)))

    def blocks(self, name: str) -> frozenset[str]:
        """The block names ``name`` defines, including those of the templates it extends."""
        try:
            return frozenset(b for template in self._chain(name) for b in template.blocks)
        except RenderFailed:
            raise
        except Exception as exc:
            raise self._failure(name, exc) from exc

    def exists(self, name: str) -> bool:
        try:
            self._loader.get_source(self._env, name)
        except TemplateNotFound:
            return False
        return True

    def first_existing(self, names: Sequence[str]) -> str | None:
        return next((name for name in names if self.exists(name)), None)

    def check_syntax(self) -> list[TemplateProblem]:
        """Compile every ``.j2`` template the search path resolves to; report what fails."""
        problems: list[TemplateProblem] = []
        for name in self._env.list_templates(filter_func=lambda n: n.endswith(".j2")):
            try:
                source, filename, _ = self._loader.get_source(self._env, name)
                self._env.compile(source, name, filename)
            except TemplateSyntaxError as exc:
                path = self._display(exc.filename) if exc.filename else name
                problems.append(TemplateProblem(path, exc.lineno, _syntax_reason(exc)))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(TemplateProblem(name, None, f"unreadable: {exc}"))
        return problems

    def _run(self, name: str, chunks: Callable[[], Iterator[str]]) -> str:
        try:
            deadline = _Deadline(
                time.monotonic() + self._time_budget.total_seconds(), self._time_budget
            )
            token = _DEADLINE.set(deadline)
            try:
                return self._collect(chunks(), deadline)
            finally:
                _DEADLINE.reset(token)
        except RenderFailed:
            raise
        except Exception as exc:
            raise self._failure(name, exc) from exc

    def _collect(self, chunks: Iterator[str], deadline: _Deadline) -> str:
        parts: list[str] = []
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > self._max_output_chars:
                    raise _OutputTooLarge
                deadline.check()
                parts.append(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return "".join(parts)

    def _block_chunks(self, name: str, block: str, values: dict[str, Any]) -> Iterator[str]:
        chain = self._chain(name)
        context = chain[0].new_context(values)
        # What an extending template does at render time: child blocks first, for super().
        for parent in chain[1:]:
            for block_name, render in parent.blocks.items():
                context.blocks.setdefault(block_name, []).append(render)
        if block not in context.blocks:
            raise RenderFailed(self._file_of(name), None, f"block {block!r} not found")
        try:
            yield from context.blocks[block][0](context)
        except Exception:
            self._env.handle_exception()  # re-raises with template file names and lines

    def _chain(self, name: str) -> tuple[Template, ...]:
        """``name`` and the templates it extends (a constant ``{% extends %}``), child first."""
        chain: list[Template] = []
        current: str | None = name
        while current is not None and current not in {t.name for t in chain}:
            chain.append(self._env.get_template(current))
            current = self._parent(current)
        return tuple(chain)

    def _parent(self, name: str) -> str | None:
        if name not in self._parents:
            source, filename, _ = self._loader.get_source(self._env, name)
            parents = (
                node.template.value
                for node in self._env.parse(source, name, filename).find_all(nodes.Extends)
                if isinstance(node.template, nodes.Const) and isinstance(node.template.value, str)
            )
            self._parents[name] = next(parents, None)
        return self._parents[name]

    def _display(self, filename: str | None) -> str:
        """``<search directory name>/<path inside it>`` for a template file."""
        if filename is None:
            return "<template>"
        path = Path(filename)
        for directory in self._dirs:
            if path.is_relative_to(directory):
                return f"{directory.name}/{path.relative_to(directory).as_posix()}"
        return filename

    def _file_of(self, name: str) -> str:
        try:
            _, filename, _ = self._loader.get_source(self._env, name)
        except TemplateNotFound:
            return name
        return self._display(filename)

    def _locate(self, exc: BaseException) -> tuple[str, int] | None:
        """The template file and line of the innermost template frame of ``exc``."""
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            path = Path(frame.filename)
            if frame.lineno is not None and any(path.is_relative_to(d) for d in self._dirs):
                return self._display(frame.filename), frame.lineno
        return None

    def _failure(self, name: str, exc: Exception) -> RenderFailed:
        if isinstance(exc, TemplateSyntaxError):
            where = self._display(exc.filename) if exc.filename else (exc.name or name)
            return RenderFailed(where, exc.lineno, _syntax_reason(exc))
        located = self._locate(exc)
        if isinstance(exc, TemplateNotFound):
            missing = exc.name if isinstance(exc.name, str) else name
            if located is None:
                return RenderFailed(missing, None, "template not found")
            return RenderFailed(*located, f"template not found: {missing}")
        template, line = located if located is not None else (self._file_of(name), None)
        return RenderFailed(template, line, self._reason(exc))

    def _reason(self, exc: Exception) -> str:
        if isinstance(exc, SecurityError):
            return f"refused: {exc}"
        if isinstance(exc, UndefinedError):
            return str(exc)
        if isinstance(exc, _OverBudget):
            milliseconds = exc.budget / timedelta(milliseconds=1)
            return f"render took longer than the time budget of {milliseconds:g} ms"
        if isinstance(exc, _OutputTooLarge):
            return f"output exceeds {self._max_output_chars} characters"
        return f"{type(exc).__name__}: {exc}"


def _syntax_reason(exc: TemplateSyntaxError) -> str:
    return f"syntax error: {exc.message or exc}"


__all__ = ["RenderFailed", "TemplateEngine", "TemplateProblem", "sentence"]
