"""Chat templates come from model files, so they are untrusted code: compiled in jinja2's immutable sandbox
(no attribute escapes) and rendered within limits of time, loop steps, recursion and size, so that a
hostile or broken template is one line (a jinja2.TemplateError), never a hang or an exhausted machine.

Sizes are charged as they are made: every string or list a template builds (output pieces, `~`, binary
operators, filter and call results) comes off one budget, so repeated doubling stops after a few steps.
Operations whose result can dwarf their inputs (`'x' * n`, `**`, `center(n)`, `%`-widths, `replace`,
`join`, ...) are estimated and refused before they allocate. Loops are bounded by a step count (which
also stops nested loops over big ranges) and everything by a deadline checked in every hook.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import update_wrapper
from typing import Any, TypeGuard

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

RENDER_SECONDS = 5.0
BASE_OUTPUT_CHARS = 1 << 20  # plus twice the text of the messages: a template writes each one about once
CHARGE_FACTOR = 16  # everything built along the way may be this many times the output limit
BASE_LOOP_STEPS = 200_000  # plus a few per message
MAX_RANGE = 100_000  # as jinja2's own sandbox
MAX_INT_BITS = 100_000  # bigger integers come only from a template computing something absurd
MAX_CALL_DEPTH = 100  # macro / recursive-loop depth; deeper Python recursion can overflow a thread's C stack
MAX_JSON_INDENT = 64

# str methods whose first argument is a result width.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateLimitError(SecurityError):
    """A chat template went past a render limit."""


@dataclass
class RenderBudget:
    deadline: float
    max_output: int
    chars_total: int
    chars_left: int
    steps_left: int
    depth: int = 0

    @classmethod
    def for_input(cls, input_chars: int, messages: int) -> RenderBudget:
        max_output = BASE_OUTPUT_CHARS + 2 * input_chars
        chars = CHARGE_FACTOR * max_output
        return cls(deadline=time.monotonic() + RENDER_SECONDS, max_output=max_output, chars_total=chars,
                   chars_left=chars, steps_left=BASE_LOOP_STEPS + 64 * messages)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"it ran for more than {RENDER_SECONDS:g} s")

    def step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise TemplateLimitError(f"its loops ran more than {BASE_LOOP_STEPS:,} steps")
        if self.steps_left % 1024 == 0:
            self.tick()

    def allow(self, size: int, what: str) -> None:
        """Refuse to make something of `size` characters or items that the budget cannot pay for."""
        if size > self.chars_left:
            raise TemplateLimitError(f"{what} would make {size:,} characters or items, past the "
                                     f"{self.chars_total:,} a chat template may build in all")

    def charge(self, value: Any) -> Any:
        self.tick()
        if isinstance(value, (str, list, tuple)):
            self.allow(len(value), "a value")
            self.chars_left -= len(value)
        return value


_BUDGET: ContextVar[RenderBudget | None] = ContextVar("chat_template_budget", default=None)


def _budget() -> RenderBudget:
    budget = _BUDGET.get()
    if budget is None:
        raise RuntimeError("chat templates are rendered with render_chat_template(), which sets the limits")
    return budget


def compile_chat_template(source: str) -> jinja2.Template:
    """The template, compiled with limit checks woven in; raises jinja2.TemplateError if it is invalid."""
    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    tree = _LimitWeaver(env).visit(env.parse(source))
    return env.from_string(tree)


def render_chat_template(template: jinja2.Template, variables: dict, input_chars: int, messages: int) -> str:
    """Render within the limits (sized from the text given); raises jinja2.TemplateError past one."""
    budget = RenderBudget.for_input(input_chars, messages)
    token = _BUDGET.set(budget)
    try:
        pieces, size = [], 0
        for piece in template.generate(**variables):
            size += len(piece)
            if size > budget.max_output:
                raise TemplateLimitError(f"its output passed {budget.max_output:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _BUDGET.reset(token)


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus size, depth and time checks on operators, calls and filters."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # generates any amount of text; no chat template needs it
        self.globals["range"] = _bounded_range
        self.globals["raise_exception"] = _raise_template_error
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.filters["tojson"] = _tojson  # Jinja's own tojson HTML-escapes; templates expect plain JSON
        self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}
        # The weaver's own hooks. As filters they are plain calls (a per-piece sandbox call would cost more);
        # a template may name them too, which only charges it again.
        self.filters["_limited_iter"] = _limited_iter
        self.filters["_charged"] = _charged

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(_budget(), operator, left, right)
        return _budget().charge(super().call_binop(context, operator, left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: B902
        budget = _budget()
        budget.tick()
        _check_method_call(budget, __obj, args)
        if budget.depth >= MAX_CALL_DEPTH:
            raise TemplateLimitError(f"its macros or recursive loops went more than {MAX_CALL_DEPTH} deep")
        budget.depth += 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return budget.charge(result)


def _limited_iter(iterable: Iterable) -> Iterator:
    budget = _budget()
    budget.tick()
    for item in iterable:
        budget.step()
        yield item


def _charged(value: Any) -> Any:
    return _budget().charge(value)


class _LimitWeaver(NodeTransformer):
    """Routes every loop, output piece and `~` of a parsed template through the budget's hooks. Filters
    cannot be redefined by a template, so it cannot switch them off."""

    def __init__(self, env: jinja2.Environment):
        self.env = env

    def _wrap(self, hook: str, node: nodes.Node) -> nodes.Filter:
        return nodes.Filter(node, hook, [], [], None, None, lineno=node.lineno, environment=self.env)

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)  # transforms the children in place
        node.iter = self._wrap("_limited_iter", node.iter)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        self.generic_visit(node)
        node.nodes = [self._wrap("_charged", child) for child in node.nodes]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        return self._wrap("_charged", self.generic_visit(node))


def _check_binop(budget: RenderBudget, operator: str, left: Any, right: Any) -> None:
    budget.tick()
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError("it multiplies numbers too big for a chat template")
        elif _is_int(right) and _is_sized(left):
            budget.allow(len(left) * right, f"repeating something {right:,} times")
        elif _is_int(left) and _is_sized(right):
            budget.allow(len(right) * left, f"repeating something {left:,} times")
    elif operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0:
        if right * left.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"{left} ** {right} is too big for a chat template")
    elif operator == "+" and _is_sized(left) and _is_sized(right):
        budget.allow(len(left) + len(right), "joining two values")
    elif operator == "%" and isinstance(left, str):
        _check_percent_widths(budget, left)


def _check_method_call(budget: RenderBudget, obj: Any, args: tuple) -> None:
    """Size checks before str methods that can make far more text than they are given."""
    method = getattr(obj, "__name__", "")
    owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)  # the sandbox wraps str.format
    if not isinstance(owner, str):
        return
    if method in _WIDTH_METHODS and args and _is_int(args[0]):
        copies = owner.count("\t") + 1 if method == "expandtabs" else 1
        budget.allow(args[0] * copies + len(owner), f"{method}({args[0]})")
    elif method == "replace" and len(args) >= 2:
        _check_replace(budget, owner, args[0], args[1])
    elif method == "join" and args:
        _check_join(budget, owner, args[0])
    elif method in ("format", "format_map"):
        _check_format_widths(budget, owner)


def _limited_filter(name: str, func: Callable) -> Callable:
    check = _FILTER_CHECKS.get(name)

    # pass_context / pass_eval_context filters get jinja's context first; the checks see the filter's own args.
    lead = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    def limited(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if check is not None:
            own = check(budget, args[lead:], kwargs)
            if own is not None:  # the check materialised an iterator it had to measure
                args = (*args[:lead], *own)
        return budget.charge(func(*args, **kwargs))

    return update_wrapper(limited, func)  # keeps jinja's pass_context / pass_eval_context marks


def _check_width_arg(budget: RenderBudget, args: tuple, kwargs: dict, index: int, name: str) -> None:
    width = args[index] if len(args) > index else kwargs.get(name)
    if _is_int(width):
        budget.allow(width, f"a {name} of {width:,}")


def _check_indent(budget: RenderBudget, args: tuple, kwargs: dict) -> None:
    width = args[1] if len(args) > 1 else kwargs.get("width", 4)
    text = args[0] if args else ""
    lines = str(text).count("\n") + 1
    per_line = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    budget.allow(lines * per_line, f"indenting {lines:,} lines")


def _check_replace_filter(budget: RenderBudget, args: tuple, kwargs: dict) -> None:
    if len(args) >= 3:
        _check_replace(budget, str(args[0]), args[1], args[2])


def _check_join_filter(budget: RenderBudget, args: tuple, kwargs: dict) -> tuple | None:
    if not args:
        return None
    items = list(args[0])  # join would do the same; materialised here so it can be measured first
    separator = args[1] if len(args) > 1 else kwargs.get("d", "")
    _check_join(budget, str(separator), items)
    return (items, *args[1:])


def _check_sum(budget: RenderBudget, args: tuple, kwargs: dict) -> tuple | None:
    start = args[2] if len(args) > 2 else kwargs.get("start", 0)
    if not (_is_sized(start) and args):
        return None
    items = list(args[0])  # summing sequences concatenates them: measured first
    budget.allow(len(start) + sum(len(x) for x in items if _is_sized(x)), "summing sequences")
    return (items, *args[1:])


def _check_format_filter(budget: RenderBudget, args: tuple, kwargs: dict) -> None:
    if args and isinstance(args[0], str):
        _check_percent_widths(budget, args[0])


def _check_tojson(budget: RenderBudget, args: tuple, kwargs: dict) -> None:
    indent = args[1] if len(args) > 1 else kwargs.get("indent")
    if _is_int(indent) and indent > MAX_JSON_INDENT:
        raise TemplateLimitError(f"tojson(indent={indent}) is more than {MAX_JSON_INDENT}")


def _check_wordwrap(budget: RenderBudget, args: tuple, kwargs: dict) -> None:
    wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring")
    if isinstance(wrap, str) and args:
        budget.allow(len(str(args[0])) * (len(wrap) + 1), "wrapping with a long wrapstring")


_FILTER_CHECKS: dict[str, Callable[[RenderBudget, tuple, dict], Any]] = {
    "join": _check_join_filter,
    "center": lambda b, a, k: _check_width_arg(b, a, k, 1, "width"),
    "indent": _check_indent,
    "batch": lambda b, a, k: _check_width_arg(b, a, k, 1, "linecount"),
    "slice": lambda b, a, k: _check_width_arg(b, a, k, 1, "slices"),
    "replace": _check_replace_filter,
    "sum": _check_sum,
    "format": _check_format_filter,
    "tojson": _check_tojson,
    "wordwrap": _check_wordwrap,
}


def _check_replace(budget: RenderBudget, text: str, old: Any, new: Any) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        count = text.count(old) if old else len(text) + 1
        budget.allow(len(text) + count * (len(new) - len(old)), "replace")


def _check_join(budget: RenderBudget, separator: str, items: Any) -> None:
    if isinstance(items, (list, tuple)):
        size = len(separator) * len(items) + sum(len(x) for x in items if isinstance(x, str))
        budget.allow(size, "join")


def _check_percent_widths(budget: RenderBudget, template: str) -> None:
    for match in _PERCENT_SPEC.finditer(template):
        for width in match.groups():
            if width == "*":
                raise TemplateLimitError("a '%*' width is not allowed in a chat template")
            if width:
                _check_width_digits(budget, width)


def _check_format_widths(budget: RenderBudget, template: str) -> None:
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise TemplateLimitError("nested format specs are not allowed in a chat template")
        for width in re.findall(r"\d+", spec):
            _check_width_digits(budget, width)


def _check_width_digits(budget: RenderBudget, digits: str) -> None:
    if len(digits) > 12:  # int() of thousands of digits is itself refused by Python
        raise TemplateLimitError(f"a format width of {len(digits)} digits is too big for a chat template")
    budget.allow(int(digits), "a format width")


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimitError(f"range{args} has more than {MAX_RANGE:,} numbers")
    return numbers


def _raise_template_error(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple))
