"""Arithmetic computations over two inputs a, b taken mod p, parsed safely.

Grammar (whitespace ignored; juxtaposition multiplies, so "ab" and "2a" work
as in the paper's notation):

    expr    := term (("+" | "-") term)*
    term    := power (("*")? power)*
    power   := atom ("^" INT)?
    atom    := "a" | "b" | INT | "(" expr ")" | "-" atom

The text is tokenised against this whitelist and evaluated by a small tree of
closures; nothing is ever passed to eval.  Evaluation works on int64 tensors
and reduces mod p after every operation, so a^3 with a ≤ 999 cannot overflow
and the result equals the exact integer value mod p (+, −, × and powers are
ring operations).
"""
from __future__ import annotations

import itertools

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

_TOKEN = re.compile(r"\s*(?:(\d+)|([ab])|([-+*^()]))")
MAX_EXPONENT = 64


class ExpressionError(ValueError):
    """The text is not a valid computation; the message points at the problem."""


@dataclass(frozen=True)
class Computation:
    """A parsed computation f(a, b) mod p."""

    text: str
    _fn: Callable[[Tensor, Tensor, int], Tensor]

    def __call__(self, a: Tensor, b: Tensor, p: int) -> Tensor:
        if not isinstance(p, int) or isinstance(p, bool) or p < 2:
            raise ValueError(f"the modulus p must be an integer >= 2, got {p!r}")
        return self._fn(a.long() % p, b.long() % p, p) % p

    def __str__(self) -> str:
        return self.text


def _tokenise(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if match is None or match.end() == pos:
            bad = stripped[pos:].lstrip()[:1]
            raise ExpressionError(f"unknown symbol {bad!r} at position {pos} in {text!r}; "
                                  "allowed: a, b, integers, + - * ^ ( )")
        number, var, op = match.groups()
        kind = "int" if number else "var" if var else "op"
        tokens.append((kind, number or var or op, match.start(match.lastindex)))
        pos = match.end()
    if not tokens:
        raise ExpressionError("the computation is empty")
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenise(text)
        self.i = 0

    def _peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None, len(self.text))

    def _take(self, value=None):
        kind, tok, pos = self._peek()
        if kind is None or (value is not None and tok != value):
            want = repr(value) if value else "more input"
            raise ExpressionError(f"expected {want} at position {pos} in {self.text!r}")
        self.i += 1
        return kind, tok, pos

    def parse(self):
        fn = self._expr()
        kind, tok, pos = self._peek()
        if kind is not None:
            raise ExpressionError(f"unexpected {tok!r} at position {pos} in {self.text!r}")
        return fn

    def _expr(self):
        fn = self._term()
        while self._peek()[1] in ("+", "-"):
            op = self._take()[1]
            left, right = fn, self._term()
            fn = ((lambda l, r: lambda a, b, p: (l(a, b, p) + r(a, b, p)) % p)(left, right) if op == "+"
                  else (lambda l, r: lambda a, b, p: (l(a, b, p) - r(a, b, p)) % p)(left, right))
        return fn

    def _starts_atom(self) -> bool:
        kind, tok, _ = self._peek()
        return kind in ("int", "var") or tok == "("

    def _term(self):
        fn = self._power()
        while self._peek()[1] == "*" or self._starts_atom():
            if self._peek()[1] == "*":
                self._take("*")
            left, right = fn, self._power()
            fn = (lambda l, r: lambda a, b, p: (l(a, b, p) * r(a, b, p)) % p)(left, right)
        return fn

    def _power(self):
        base = self._atom()
        if self._peek()[1] != "^":
            return base
        self._take("^")
        kind, tok, pos = self._take()
        if kind != "int":
            raise ExpressionError(f"the exponent at position {pos} in {self.text!r} must be a "
                                  "non-negative integer")
        exponent = int(tok)
        if exponent > MAX_EXPONENT:
            raise ExpressionError(f"exponent {exponent} exceeds {MAX_EXPONENT} in {self.text!r}")

        def power(a, b, p, base=base, exponent=exponent):
            value, result = base(a, b, p), torch.ones_like(a)
            for _ in range(exponent):
                result = (result * value) % p
            return result
        return power

    def _atom(self):
        kind, tok, pos = self._take()
        if kind == "int":
            constant = int(tok)
            return lambda a, b, p: torch.full_like(a, constant % p)
        if kind == "var":
            return (lambda a, b, p: a) if tok == "a" else (lambda a, b, p: b)
        if tok == "(":
            fn = self._expr()
            self._take(")")
            return fn
        if tok == "-":
            inner = self._atom()
            return lambda a, b, p: (-inner(a, b, p)) % p
        raise ExpressionError(f"unexpected {tok!r} at position {pos} in {self.text!r}")


#: the deepest nesting of parentheses a computation may have (the parser recurses)
MAX_NESTING = 50


def parse(text: str) -> Computation:
    """Parse a computation such as "a+a*b", "a^2+ab" or "(a-b)^2"."""
    if not isinstance(text, str):
        raise ExpressionError(f"a computation must be text, got {type(text).__name__}")
    depth = max(itertools.accumulate((c == "(") - (c == ")") for c in text), default=0)
    if depth > MAX_NESTING:
        raise ExpressionError(f"{text[:40]!r}…: parentheses nest {depth} deep; at most "
                              f"{MAX_NESTING} are allowed")
    return Computation(text.strip(), _Parser(text).parse())
