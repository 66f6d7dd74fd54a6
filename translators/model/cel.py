"""The part of CEL that Telemetry ``accessLogging[].filter.expression`` users write, parsed into
a small tree that Envoy's own access-log filters can express (features/telemetry.py).

Accepted (with ``&&``, ``||``, ``!`` and parentheses)::

    response.code >= 400              comparisons: == != < <= > >=, an integer
    response.duration > duration("1s")   the same, a duration literal (ms, s, m, h)
    request.headers['x-debug'] == "1"    == or != a string (also request.headers["x"])
    'x-debug' in request.headers         presence

Anything else is refused with a message that says what is accepted: an expression Envoy
cannot evaluate must not silently log everything (or nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: What a refused expression is told.
SUPPORTED = ("supported: response.code or response.duration compared (==, !=, <, <=, >, >=) with a number or "
             "duration(\"...\"), request.headers['name'] == or != \"value\", 'name' in request.headers, "
             "joined with &&, || and !")


class CelError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Compare:
    """``response.code`` (attribute "code") or ``response.duration`` in ms ("duration")."""

    attribute: str
    op: str  # == != < <= > >=
    value: int


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str | None  # None: presence
    negated: bool = False


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Node, ...]


Node = Compare | Header | AllOf | AnyOf

_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+)|(?P<str>"[^"\\]*"|'[^'\\]*')|(?P<op>&&|\|\||==|!=|<=|>=|<|>|!|\(|\)|\[|\])
                        |(?P<name>[A-Za-z_][A-Za-z0-9_.]*))""", re.VERBOSE)
_NEGATE = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise CelError(f"unexpected {text[pos:].strip()[:20]!r}")
        out.append(m.group().strip())
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise CelError(f"expected {want or 'more'} {'at the end' if tok is None else f'before {tok!r}'}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.any_of()
        if self.peek() is not None:
            raise CelError(f"unexpected {self.peek()!r}")
        return node

    def any_of(self) -> Node:
        items = [self.all_of()]
        while self.peek() == "||":
            self.take()
            items.append(self.all_of())
        return items[0] if len(items) == 1 else AnyOf(tuple(items))

    def all_of(self) -> Node:
        items = [self.unary()]
        while self.peek() == "&&":
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else AllOf(tuple(items))

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            return negate(self.unary())
        if self.peek() == "(":
            self.take()
            node = self.any_of()
            self.take(")")
            return node
        return self.term()

    def term(self) -> Node:
        tok = self.take()
        if tok in ("response.code", "response.duration"):
            op = self.take()
            if op not in _NEGATE:
                raise CelError(f"{tok} must be compared (==, !=, <, <=, >, >=), not followed by {op!r}")
            if tok == "response.code":
                num = self.take()
                if not num.isdigit():
                    raise CelError(f"response.code is compared with a number, not {num!r}")
                value = int(num)
            else:
                value = self.duration()
            if value == 0 and op in ("<", ">="):  # never, or always: surely not what was meant
                raise CelError(f"{tok} {op} 0 is {'never' if op == '<' else 'always'} true")
            return Compare("code" if tok == "response.code" else "duration", op, value)
        if tok == "request.headers":
            self.take("[")
            name = self.string()
            self.take("]")
            op = self.take()
            if op not in ("==", "!="):
                raise CelError(f"a request header is compared with == or !=, not {op!r}")
            return Header(name.lower(), self.string(), op == "!=")
        if tok[:1] in "'\"":
            name = tok[1:-1]
            if self.take() != "in" or self.take() != "request.headers":
                raise CelError(f"a string is only accepted as {tok} in request.headers")
            return Header(name.lower(), None)
        raise CelError(f"{tok!r} is not an attribute meshpilot can translate")

    def string(self) -> str:
        tok = self.take()
        if tok[:1] not in "'\"":
            raise CelError(f"expected a string, found {tok!r}")
        return tok[1:-1]

    def duration(self) -> int:
        self.take("duration")
        self.take("(")
        text = self.string()
        self.take(")")
        m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
        if m is None:
            raise CelError(f"duration({text!r}): write a whole number of ms, s, m or h")
        return int(m.group(1)) * _UNITS[m.group(2)]


def negate(node: Node) -> Node:
    """``!node`` pushed down to the leaves (De Morgan), as Envoy's filters have no "not"."""
    if isinstance(node, Compare):
        return Compare(node.attribute, _NEGATE[node.op], node.value)
    if isinstance(node, Header):
        return Header(node.name, node.value, not node.negated)
    if isinstance(node, AllOf):
        return AnyOf(tuple(negate(n) for n in node.items))
    return AllOf(tuple(negate(n) for n in node.items))


def parse(expression: str) -> Node:
    """The tree of ``expression``; raises :class:`CelError` saying what is wrong and what is accepted."""
    try:
        return _Parser(expression).parse()
    except CelError as e:
        raise CelError(f"cannot translate {expression!r} into Envoy access-log filters: {e}; {SUPPORTED}") from None
