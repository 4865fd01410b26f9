"""A safe expression language for rule conditions and derived metrics (formulas).

``metrics.tempC > 80 and metrics.rpm < 100`` or ``clamp(100 - (tempC - 60) * 2, 0, 100)``:
numbers, strings, booleans; ``+ - * / // % **``; comparisons (chainable); ``and or not``;
``x if cond else y``; the functions ``abs min max clamp round sqrt floor ceil``. Names are
metrics (``tempC`` or ``metrics.tempC``), rule parameters, formula results, or record fields
(``device_id``, ``product_id``, ``device_ts``, ``tenant``, ``hub_id``).

The text is parsed with Python's ``ast`` module (parsing only) and compiled into nested
closures over a whitelist of node types; nothing is ever passed to ``eval``. Anything outside
the whitelist, an unknown function, or a name that is not allowed is an
:class:`ExpressionError` at load time, naming the column.

At run time a metric the record does not carry raises :class:`MissingValue`; rule evaluation
treats that as "unknown" (the rule's state does not change), not as false.

Cost model: every evaluation does a bounded amount of work. The text is at most 2,000 characters
and 200 levels deep, and each node is evaluated at most once (no loops), so the number of steps
is bounded by the text. Each value is bounded too, checked before an operation that could make a
large one and after every operation: integers of at most ``MAX_INT_BITS`` bits, exponents of at
most ``MAX_EXPONENT``, strings of at most ``MAX_STRING_CHARS`` characters, ``round`` to at most
``MAX_ROUND_DIGITS`` digits either side of the point; results are real numbers (finite),
booleans or strings, never complex. Anything else is an :class:`EvaluationError`: a rule error,
counted, never a crash or a hang.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from operators.value_repr import bounded_repr

RECORD_FIELDS = frozenset({"device_id", "product_id", "device_ts", "tenant", "hub_id"})
_MAX_LENGTH = 2000
_MAX_DEPTH = 200  # nesting levels: keeps compiling and evaluating far from the recursion limit
MAX_INT_BITS = 256  # integers: far beyond any sensor value, small enough that arithmetic stays cheap
MAX_EXPONENT = 1000
MAX_STRING_CHARS = 1000
MAX_ROUND_DIGITS = 20


class ExpressionError(ValueError):
    """An expression that cannot be compiled; the message names the position and the reason."""


class MissingValue(LookupError):
    """A referenced metric is not in the record."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class EvaluationError(ArithmeticError):
    """A runtime error inside an expression (division by zero, math domain, wrong types)."""


def _clamp(value, low, high):
    return max(low, min(high, value))


def _round(value, digits=0):
    if abs(digits) > MAX_ROUND_DIGITS:
        raise EvaluationError(f"round to {bounded_repr(digits)} digits: at most {MAX_ROUND_DIGITS} either side of the point")
    return round(value, int(digits)) if digits else round(value)


def _bounded(value):
    """The value, if it is within the cost model; else :class:`EvaluationError`."""
    kind = type(value)
    if kind is bool:
        return value
    if kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise EvaluationError(f"integer of {value.bit_length()} bits: at most {MAX_INT_BITS}")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise EvaluationError(f"result {value} is not a finite number")
        return value
    if kind is str:
        if len(value) > MAX_STRING_CHARS:
            raise EvaluationError(f"string of {len(value)} characters: at most {MAX_STRING_CHARS}")
        return value
    raise EvaluationError(f"result {bounded_repr(value)} is a {kind.__name__}, not a real number, boolean or string")


def _multiply(left, right):
    # A string repeated: check the length before Python builds it.
    for text, times in ((left, right), (right, left)):
        if isinstance(text, str) and isinstance(times, int) and len(text) * max(times, 0) > MAX_STRING_CHARS:
            raise EvaluationError(f"string of {len(text)} characters repeated {bounded_repr(times)} times: at most {MAX_STRING_CHARS} characters")
    return left * right


def _power(base, exponent):
    if isinstance(exponent, int | float) and abs(exponent) > MAX_EXPONENT:
        raise EvaluationError(f"exponent {bounded_repr(exponent)} is too large (at most {MAX_EXPONENT})")
    # An integer power's size is known before computing it.
    if type(base) is int and type(exponent) is int and abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
        raise EvaluationError(f"{bounded_repr(base)} ** {exponent} has more than {MAX_INT_BITS} bits")
    return base**exponent


FUNCTIONS: dict[str, tuple[Callable, int, int]] = {
    # name -> (function, min args, max args)
    "abs": (abs, 1, 1),
    "min": (min, 2, 16),
    "max": (max, 2, 16),
    "clamp": (_clamp, 3, 3),
    "round": (_round, 1, 2),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


@dataclass
class Scope:
    """What names an expression may use.

    Attributes:
        params: Rule parameters (numbers), resolved before metrics.
        formulas: Names of derived metrics computed before rules.
        metrics: Known metric names of the product, or None when any metric name is allowed.
        bare_metrics: Whether a bare name may mean a metric (``tempC`` for ``metrics.tempC``).
    """

    params: frozenset[str] = frozenset()
    formulas: frozenset[str] = frozenset()
    metrics: frozenset[str] | None = None
    bare_metrics: bool = True


@dataclass
class Expression:
    """A compiled expression.

    Attributes:
        text: The source text.
        metric_names: Metrics it reads (for validation and documentation).
        param_names: Parameters it reads.
    """

    text: str
    _fn: Callable = field(repr=False)
    metric_names: frozenset[str] = frozenset()
    param_names: frozenset[str] = frozenset()

    def evaluate(self, metrics: Mapping, params: Mapping | None = None, record: Mapping | None = None):
        """Evaluates against one record's metrics (and parameters and record fields).

        Raises:
            MissingValue: a referenced metric is absent.
            EvaluationError: arithmetic or type error at run time.
        """
        try:
            return self._fn(metrics, params or {}, record or {})
        except (MissingValue, EvaluationError):
            raise
        except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as exc:
            raise EvaluationError(f"{self.text!r}: {str(exc)[:200] or type(exc).__name__}") from None


class _Compiler:
    def __init__(self, text: str, scope: Scope):
        self.text = text
        self.scope = scope
        self.metric_names: set[str] = set()
        self.param_names: set[str] = set()
        self.depth = 0

    def error(self, node: ast.AST, message: str) -> ExpressionError:
        column = getattr(node, "col_offset", 0) + 1
        return ExpressionError(f"column {column}: {message}")

    def compile(self, node: ast.AST) -> Callable:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.error(node, f"{type(node).__name__.lower()} is not allowed in an expression")
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(node, f"expression is nested more than {_MAX_DEPTH} levels deep")
        try:
            return method(node)
        finally:
            self.depth -= 1

    def _Expression(self, node):  # noqa: N802 - ast node names
        return self.compile(node.body)

    def _Constant(self, node):  # noqa: N802
        value = node.value
        if not isinstance(value, bool | int | float | str):
            raise self.error(node, f"constant {bounded_repr(value)} is not a number, string or boolean")
        try:
            _bounded(value)
        except EvaluationError as exc:
            raise self.error(node, f"constant: {exc}") from None
        return lambda m, p, r: value

    def _metric(self, name: str, node) -> Callable:
        if name.startswith("__"):
            raise self.error(node, f"name {name!r} is not allowed (names starting with __ are reserved)")
        known = self.scope.metrics
        if known is not None and name not in known and name not in self.scope.formulas:
            raise self.error(node, f"unknown metric {name!r} (known: {', '.join(sorted(known | self.scope.formulas)) or 'none'})")
        self.metric_names.add(name)

        def metric(m, p, r):
            value = m.get(name)
            if value is None:
                raise MissingValue(name)
            return value

        return metric

    def _Name(self, node):  # noqa: N802
        name = node.id
        if name in ("true", "True"):
            return lambda m, p, r: True
        if name in ("false", "False"):
            return lambda m, p, r: False
        if name in self.scope.params:
            self.param_names.add(name)
            return lambda m, p, r: p[name]
        if name in RECORD_FIELDS:

            def field_value(m, p, r):
                value = r.get(name)
                if value is None:
                    raise MissingValue(name)
                return value

            return field_value
        if name in FUNCTIONS:
            raise self.error(node, f"{name} is a function; call it as {name}(...)")
        if name == "metrics":
            raise self.error(node, "write metrics.<name>")
        if not self.scope.bare_metrics and name not in self.scope.formulas:
            raise self.error(node, f"unknown name {name!r}")
        return self._metric(name, node)

    def _Attribute(self, node):  # noqa: N802
        if isinstance(node.value, ast.Name) and node.value.id == "metrics":
            return self._metric(node.attr, node)
        raise self.error(node, "only metrics.<name> may use a dot")

    def _Subscript(self, node):  # noqa: N802
        # metrics["name with-dash"] for metric names that are not identifiers.
        is_metrics = isinstance(node.value, ast.Name) and node.value.id == "metrics"
        if is_metrics and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return self._metric(node.slice.value, node)
        raise self.error(node, 'only metrics["name"] may be subscripted')

    def _UnaryOp(self, node):  # noqa: N802
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda m, p, r: not operand(m, p, r)
        if isinstance(node.op, ast.USub):
            return lambda m, p, r: _bounded(-operand(m, p, r))
        if isinstance(node.op, ast.UAdd):
            return operand
        raise self.error(node, "operator ~ is not allowed")

    def _BinOp(self, node):  # noqa: N802
        fn = _BINARY.get(type(node.op))
        if fn is None:
            raise self.error(node, f"operator {type(node.op).__name__} is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda m, p, r: _bounded(fn(left(m, p, r), right(m, p, r)))

    def _BoolOp(self, node):  # noqa: N802
        parts = [self.compile(v) for v in node.values]
        if isinstance(node.op, ast.And):

            def all_of(m, p, r):
                result = True
                for part in parts:
                    result = part(m, p, r)
                    if not result:
                        return result
                return result

            return all_of

        def any_of(m, p, r):
            result = False
            for part in parts:
                result = part(m, p, r)
                if result:
                    return result
            return result

        return any_of

    def _Compare(self, node):  # noqa: N802
        left = self.compile(node.left)
        steps = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise self.error(node, f"comparison {type(op).__name__} is not allowed (use < <= > >= == !=)")
            steps.append((fn, self.compile(comparator)))

        def compare(m, p, r):
            current = left(m, p, r)
            for fn, right in steps:
                value = right(m, p, r)
                if not fn(current, value):
                    return False
                current = value
            return True

        return compare

    def _IfExp(self, node):  # noqa: N802
        test, body, orelse = self.compile(node.test), self.compile(node.body), self.compile(node.orelse)
        return lambda m, p, r: body(m, p, r) if test(m, p, r) else orelse(m, p, r)

    def _Call(self, node):  # noqa: N802
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise self.error(node, f"unknown function {name!r} (allowed: {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise self.error(node, f"{node.func.id}() takes no keyword arguments")
        fn, low, high = FUNCTIONS[node.func.id]
        if not low <= len(node.args) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            raise self.error(node, f"{node.func.id}() takes {expected} arguments, got {len(node.args)}")
        args = [self.compile(a) for a in node.args]
        return lambda m, p, r: _bounded(fn(*[a(m, p, r) for a in args]))


def compile_expression(text: str, scope: Scope | None = None) -> Expression:
    """Compiles an expression.

    Args:
        text: The expression.
        scope: Allowed names (default: any metric, no parameters).

    Returns:
        The compiled expression.

    Raises:
        ExpressionError: syntax error or anything outside the language, with the column.
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("expression is empty")
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {_MAX_LENGTH} characters")
    # "and"/"or"/"not" are Python's; && || ! are accepted as the usual spellings.
    source = text.strip().replace("&&", " and ").replace("||", " or ")
    try:
        with warnings.catch_warnings():
            # "1and x" parses with a SyntaxWarning on stderr; the expression is ours to judge.
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"column {exc.offset or 0}: {exc.msg}") from None
    compiler = _Compiler(text, scope or Scope())
    fn = compiler.compile(tree)
    return Expression(text, fn, frozenset(compiler.metric_names), frozenset(compiler.param_names))
