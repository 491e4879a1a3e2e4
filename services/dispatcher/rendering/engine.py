"""The template engine: sandboxed, strict, and bounded in time and output size.

Templates are written by plan authors, so they are semi-trusted. They run in Jinja's
immutable sandbox (no private or internal attributes, no mutating ``list.append`` and
friends), undefined names are errors, and each render has two budgets:

* output size: chunks are counted while ``Template.generate()`` is consumed, and the render
  stops once ``max_output_chars`` is exceeded, so the oversized string is never joined;
* time: a deadline (``time.monotonic() + time_budget``) is checked for every chunk and in
  the sandbox hooks (calls, attribute and item access, intercepted operators, filters), so
  loops that print nothing still stop.

Values a template creates are bounded too, each before it is built (the checks are in
:mod:`~services.dispatcher.rendering.size_limits`): ``*`` and ``+`` may not make a string or
list longer than the output limit; integer ``*`` and ``**`` may not produce more than
``size_limits.MAX_INTEGER_BITS`` bits; padding widths (``center``, ``ljust``...), ``indent``,
``expandtabs``, ``replace`` and ``translate`` are estimated before they run, for bytes too;
``str.format`` and ``format_map`` are first measured field by field, refusing a field whose
spec (nested fields filled in) has a width or precision above the limit, or whose text would
take the total past it, before the field is built; printf-style ``%`` and ``|format`` add up
their widths, precisions (``*`` included) and values' texts first; ``join`` (filter and
method) and ``~`` add up their items' texts and separators first.

The text of a container (``{{ items }}``, a filter that turns its input into a string such as
``|string`` or ``|upper``, an item of a join, a field of a format, an operand of ``~``) is
measured before it is built, by a walk that stops once past the limit. ``|pprint``,
``|tojson`` and ``|wordwrap`` are built piece by piece and stop at the limit; ``|batch`` and
``|slice`` refuse counts above it, ``|sum`` of lists, ``|urlize`` with a long ``rel`` or
``target``, ``|xmlattr`` and ``|urlencode`` are added up first. Output a template captures
(macros, call, set and filter blocks, imported templates) is counted chunk by chunk. A string
or sequence that a call, a filter or a namespace read returns, or that is passed to a macro,
may not be longer than the output limit.

These are guards against mistakes and cheap bombs, not a memory sandbox. Every single
operation is bounded, though not exactly: a text estimate leaves out the escapes ``repr``,
JSON and HTML add (about ten characters for one at most), and pprint holds the repr of each
nesting level it is writing. Values kept across many operations (namespace values, each
within the limit) add up until the time budget runs out. Process limits are the real
backstop.

Errors all become :class:`RenderFailed`. The template it names is the file where the error
happened (for an error in a layout, the layout), written as the search directory's name
followed by the path inside it, e.g. ``templates/email/opened.txt.j2`` for a shipped file
and ``plan-templates/email/opened.txt.j2`` for a plan's override, so an override is told
apart from the file it replaces.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import BuiltinMethodType, MethodType
from typing import Any, Final

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
    pass_environment,
    select_autoescape,
)
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.environment import Environment, TemplateModule
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

from services.dispatcher.rendering.size_limits import (
    BoundedText,
    SizeLimits,
    joined,
    json_text,
    pretty,
    wrapped,
)

TEMPLATE_CACHE_SIZE: Final = 256

_CALL_BOOKKEEPING: Final = frozenset({"_loop_vars", "_block_vars"})


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
    """A render's end: ``at`` on the ``time.monotonic()`` clock, ``budget`` after its start."""

    at: float
    budget: timedelta


# The deadline of the render running in this context; None outside a render (compiling).
_DEADLINE: ContextVar[_Deadline | None] = ContextVar("clarion_render_deadline", default=None)


def _check_deadline() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline.at:
        raise _OverBudget(deadline.budget)


class _MeasuringFormatter(SandboxedFormatter):
    """Formats like the sandbox's ``str.format``, checking each field before building it.

    Used for a dry run. Fields are formatted one at a time; each spec is checked, and the
    text of each field (after ``!r``, ``!s`` or ``!a``) measured, before the field is built,
    and the run stops once the fields add up past the limit, so no more than the limit
    plus one field (of a width within the limit) is ever built.
    """

    def __init__(self, env: _BoundedSandbox, **options: Any) -> None:
        super().__init__(env, **options)
        self._limits = env.limits
        self._total = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:  # without one, format_field measures the value
            self._limits.field(self._total, value, conversion)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._limits.spec(format_spec)
        self._limits.field(self._total, value)
        text = super().format_field(value, format_spec)
        self._total += len(text) if isinstance(text, str) else len(str(text))
        if self._total > self._limits.max_chars:
            raise SecurityError(f"format result exceeds {self._limits.max_chars} characters")
        return text


class _MeasuringEscapeFormatter(_MeasuringFormatter, SandboxedEscapeFormatter):
    """The measuring formatter for ``Markup.format``, which escapes every field."""


def _guarded_filter(
    name: str, func: Callable[..., Any], env: _BoundedSandbox
) -> Callable[..., Any]:
    # Filters marked pass_context / pass_eval_context / pass_environment get that first.
    # functools.wraps copies the marker, so Jinja passes the same arguments to the guard.
    first = 1 if hasattr(func, "jinja_pass_arg") else 0
    limits = env.limits
    attribute_getter = functools.partial(make_attrgetter, env)

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        if len(args) > first:
            options = args[first + 1 :]
            value = limits.filter_input(name, args[first], options, kwargs, attribute_getter)
            args = (*args[:first], value, *options)
        result = func(*args, **kwargs)
        limits.bound(result, f"the result of the {name} filter")
        return result

    return guarded


@pass_environment
def _wordwrap(  # noqa: PLR0917  (the filter's arguments, positional in templates)
    environment: Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """Jinja's ``wordwrap`` filter, counting its result before joining it."""
    assert isinstance(environment, _BoundedSandbox)
    return wrapped(
        s,
        width=width,
        break_long_words=break_long_words,
        wrapstring=environment.newline_sequence if wrapstring is None else wrapstring,
        break_on_hyphens=break_on_hyphens,
        max_chars=environment.limits.max_chars,
    )


class _MeasuringCodeGenerator(CodeGenerator):
    """Jinja's code generator, with captured output bounded and ``~`` measured first.

    Output a template captures (a macro's or call block's body, a set or filter block) goes
    into ``environment.output_buffer()`` instead of a plain list, and the operands of ``~``
    pass through ``environment.concat_operands`` before they are joined.
    """

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802  (Jinja's name)
        # The same join Jinja picks, applied to the measured operands.
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"{join}(environment.concat_operands((")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write(")))")


class _BoundedTemplate(Template):
    """A template whose module (read by ``import`` and ``include ... without context``) is
    rendered into a bounded buffer rather than a list of any length."""

    def make_module(
        self,
        vars: dict[str, Any] | None = None,
        shared: bool = False,
        locals: Mapping[str, Any] | None = None,
    ) -> TemplateModule:
        environment = self.environment
        assert isinstance(environment, _BoundedSandbox)
        context = self.new_context(vars, shared, locals)
        body = BoundedText(environment.limits.max_chars, "the output of an imported template")
        body.extend(self.root_render_func(context))
        return TemplateModule(self, context, body)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the render deadline and the size guards."""

    intercepted_binops: frozenset[str] = frozenset({"*", "**", "%", "+"})
    code_generator_class = _MeasuringCodeGenerator
    template_class = _BoundedTemplate

    def __init__(self, limits: SizeLimits, **options: Any) -> None:
        self.limits = limits
        super().__init__(**options)
        self.finalize = self._printable
        self.policies["json.dumps_function"] = functools.partial(
            json_text, max_chars=limits.max_chars
        )
        # Placeholder text is no use in incident messages, and lipsum(n=10**6) is slow.
        del self.globals["lipsum"]
        self.filters["sentence"] = sentence
        self.filters["pprint"] = functools.partial(pretty, max_chars=limits.max_chars)
        self.filters["wordwrap"] = _wordwrap
        for name, func in list(self.filters.items()):
            self.filters[name] = _guarded_filter(name, func, self)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as a plain dict over the environment's.

        Every render copies them into its context, and a ``ChainMap`` (Jinja's choice, so
        later changes to the environment's globals show) is slow to copy. This
        environment's globals are complete before any template loads.
        """
        return {**self.globals, **(d or {})}

    def _printable(self, value: Any) -> Any:
        """What ``{{ value }}`` prints, once the text it turns into is measured."""
        if type(value) is not str:  # a string is printed as it is
            self.limits.text(value, "to print")
        return value

    def concat(self, parts: Iterable[str]) -> str:
        """How compiled templates join captured output (a block read by ``self.name()``).

        Output captured into a bounded buffer (a macro's body) was counted as it came.
        """
        if type(parts) is BoundedText and parts.max_chars <= self.limits.max_chars:
            return "".join(parts)
        return joined(parts, self.limits.max_chars, "captured template output")

    def output_buffer(self) -> BoundedText:
        """Where compiled templates collect the output they capture (see the code generator)."""
        return BoundedText(self.limits.max_chars, "captured template output")

    def concat_operands(self, operands: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of ``a ~ b ~ ...``, once their texts are added up."""
        _check_deadline()
        self.limits.concat(operands)
        return operands

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
        if type(obj) is Macro:
            return self._call_macro(context, obj, args, kwargs)
        # str and bytes methods, and Markup's wrappers of them, are bound methods of a string.
        if isinstance(obj, BuiltinMethodType | MethodType) and isinstance(
            obj.__self__, str | bytes
        ):
            if obj.__name__ == "join" and len(args) == 1 and not kwargs:
                args = (list(args[0]),)  # a generator can be read once: join gets the list
                separator = obj.__self__
                self.limits.join(separator, args[0], converts=isinstance(separator, Markup))
            else:
                self.limits.before(obj.__name__, obj.__self__, args, kwargs)
        if isinstance(obj, Macro):
            self._bound_macro_arguments(args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        self.limits.bound(result, "a call result")
        return result

    def _call_macro(
        self, context: Context, macro: Macro, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """What :meth:`call` does for a macro, without the general path's lookups.

        A macro is safely callable (it has no ``unsafe_callable`` or ``alters_data``, and a
        template cannot give it one), and ``Context.call`` hands it the eval context (its
        ``__call__`` is ``pass_eval_context``) and drops the loop and block variables.
        """
        if args or kwargs:
            self._bound_macro_arguments(args, kwargs)
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
        result: Any
        try:
            result = macro(context.eval_ctx, *args, **kwargs)
        except StopIteration:
            result = self.undefined(
                "value was undefined because a callable raised a StopIteration exception"
            )
        self.limits.bound(result, "a call result")
        return result

    def _bound_macro_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for argument_value in (
            *args,
            *(v for k, v in kwargs.items() if k not in _CALL_BOOKKEEPING),
        ):
            self.limits.bound(argument_value, "a macro argument")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        if type(obj) is TemplateModule and attribute[:1] != "_":
            # A macro of an imported template (``say.headline``): what the sandbox's checks
            # would let through (a public name, not a str method, of no mutable type).
            value = obj.__dict__.get(attribute)
            if type(value) is Macro:
                return value
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
        elif operator == "+":
            self.limits.addition(left, right)
        elif operator == "**":
            self.limits.power(left, right)
        elif operator == "%" and isinstance(left, str | bytes):
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
            SizeLimits(max_output_chars),
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
        return self._run(name, lambda: self._chunks(self._env.get_template(name), values))

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

    def warm(self) -> int:
        """Compile every ``.j2`` template now, so the first message to use one does not
        wait for it (about 140 ms for the shipped ones); returns how many compiled. A
        template that does not compile is left for its render to report."""
        compiled = 0
        for name in self._env.list_templates(filter_func=lambda n: n.endswith(".j2")):
            try:
                self._env.get_template(name)
            except (TemplateSyntaxError, OSError, UnicodeDecodeError):
                continue
            compiled += 1
        return compiled

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
        append = parts.append
        size = 0
        limit = self._max_output_chars
        clock, at = time.monotonic, deadline.at  # the deadline, checked for every chunk
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _OutputTooLarge
                if clock() > at:
                    raise _OverBudget(deadline.budget)
                append(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return "".join(parts)

    def _chunks(self, template: Template, values: Mapping[str, Any]) -> Iterator[str]:
        """What ``template.generate(values)`` yields, without copying ``values`` twice more
        (the new context copies them over the globals)."""
        context = template.new_context(values if isinstance(values, dict) else dict(values))
        try:
            yield from template.root_render_func(context)
        except Exception:
            self._env.handle_exception()  # re-raises with template file names and lines

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
