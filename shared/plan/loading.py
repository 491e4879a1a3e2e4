"""Read a plan file: YAML in, a validated :class:`Plan` out, or errors a person can act on.

Every problem names the file, the line, the key path and what is wrong, e.g.
``plan.yaml line 14 (routes[0].channels[1]): Input should be 'email', 'sms', ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from shared.plan.model import Plan

DEFAULT_PLAN: Final = Path(__file__).resolve().parent / "default_plan.yaml"
MAX_PLAN_BYTES: Final = 1024 * 1024

Location = tuple[str | int, ...]

# "routes[0].channels: ..." at the start of a cross-check message names where it applies.
_LEADING_PATH = re.compile(
    r"^(?P<path>[A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): (?P<rest>.*)$", re.DOTALL
)
_PATH_PART = re.compile(r"\.?([A-Za-z_]\w*)|\[(\d+)\]")


@dataclass(frozen=True)
class PlanProblem:
    location: str
    line: int | None
    message: str


class PlanError(Exception):
    """The plan file is missing, unreadable or invalid. ``str()`` lists every problem."""

    def __init__(self, path: Path, problems: list[PlanProblem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = [f"{self.path}: invalid communication plan ({len(self.problems)} problem(s))"]
        for problem in self.problems:
            where = f"line {problem.line}" if problem.line is not None else "file"
            if problem.location:
                where += f" ({problem.location})"
            lines.append(f"  {self.path.name} {where}: {problem.message}")
        return "\n".join(lines)


def load_plan(path: Path | None = None) -> Plan:
    """The plan at ``path``, or the shipped default plan when ``path`` is None."""
    source = path or DEFAULT_PLAN
    text = _read(source)
    return parse_plan(text, source)


def parse_plan(text: str, source: Path) -> Plan:
    """Validate plan YAML ``text``; ``source`` names it in errors and anchors templates_dir."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise PlanError(source, [PlanProblem("", line, f"not valid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise PlanError(source, [PlanProblem("", None, f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise PlanError(source, [PlanProblem("", 1, "a plan is a mapping of keys (version, ...)")])
    duplicates = list(_duplicate_keys(root, ()))
    if duplicates:
        raise PlanError(source, duplicates)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, root) for error in exc.errors()]
        raise PlanError(source, _most_specific(problems)) from None
    return _anchored(plan, source, root)


def _read(source: Path) -> str:
    try:
        if source.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(source, [PlanProblem("", None, "larger than 1 MiB")])
        return source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(source, [PlanProblem("", None, "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise PlanError(source, [PlanProblem("", None, f"not UTF-8 text: {exc}")]) from None
    except OSError as exc:
        raise PlanError(source, [PlanProblem("", None, exc.strerror or str(exc))]) from None


def _anchored(plan: Plan, source: Path, root: yaml.Node | None) -> Plan:
    """``templates_dir`` resolved against the plan file's directory, and checked."""
    if plan.templates_dir is None:
        return plan
    directory = (source.parent / plan.templates_dir).resolve()
    if not directory.is_dir():
        line = _line_of(root, ("templates_dir",))
        problem = PlanProblem("templates_dir", line, f"{directory} is not a directory")
        raise PlanError(source, [problem])
    return plan.model_copy(update={"templates_dir": str(directory)})


def _problem(error: Any, root: yaml.Node | None) -> PlanProblem:
    location: Location = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location:
        found = _LEADING_PATH.match(message)
        if found:
            location = _parse_path(found["path"])
            message = found["rest"]
    if error["type"] == "extra_forbidden":
        message = f"unknown key {location[-1]!r}"
    return PlanProblem(_format(location), _line_of(root, location), message)


def _most_specific(problems: list[PlanProblem]) -> list[PlanProblem]:
    """Drop a problem about a list when a problem about one of its items says more."""
    return [
        p
        for p in problems
        if not any(
            q.location.startswith(f"{p.location}[") for q in problems if p.location and q is not p
        )
    ]


def _parse_path(text: str) -> Location:
    return tuple(int(index) if index else name for name, index in _PATH_PART.findall(text))


def _format(location: Location) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(root: yaml.Node | None, location: Location) -> int | None:
    """The 1-based line of the deepest node of ``location`` that exists in the YAML."""
    node = root
    line = None if root is None else root.start_mark.line + 1
    for part in location:
        child = _child(node, part)
        if child is None:
            break
        node = child
        line = child.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value if not isinstance(value, yaml.ScalarNode) or value.value else key
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        return node.value[part] if 0 <= part < len(node.value) else None
    return None


def _duplicate_keys(node: yaml.Node | None, location: Location) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                path = _format((*location, name))
                line = key.start_mark.line + 1
                problems.append(PlanProblem(path, line, f"duplicate key {name!r}"))
            seen.add(name)
            problems += _duplicate_keys(value, (*location, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*location, index))
    return problems
