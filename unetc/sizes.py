"""Size formulas of SPEC.md (one axis) and their exact linearisation on residue classes.

Every size is a SymPy expression built from the input size symbol with +, * by constants and
``floor``. Writing H = L*q + r (L a multiple of every divisor met), each size becomes exactly
``a*q + b`` for all integers q, which turns each shape hypothesis into linear arithmetic in q.
"""
from __future__ import annotations

from fractions import Fraction
from math import gcd, lcm
from typing import Callable

import numpy as np
import sympy as sp


def out(n, k: int, s: int, p: int):
    """Conv / pool output size: floor((n + 2p - k)/s) + 1 (defined only when n + 2p >= k)."""
    return sp.floor(sp.Rational(1, s) * (n + 2 * p - k)) + 1


def out_t(n, k: int, s: int, p: int):
    """Transposed-conv output size: (n-1)*s + k - 2p (defined only when >= 1)."""
    return (n - 1) * s + k - 2 * p


class NotLinear(Exception):
    """Raised by :func:`linearize` when L does not clear a divisor; carries the divisor."""

    def __init__(self, divisor: int):
        super().__init__(divisor)
        self.divisor = divisor


def split_mul(expr) -> tuple[Fraction, sp.Expr]:
    """A product c * e of rational constants and exactly one other factor -> (c, e)."""
    const = Fraction(1)
    rest = []
    for arg in expr.args:
        if arg.is_Number:
            const *= Fraction(str(arg))
        else:
            rest.append(arg)
    if len(rest) != 1:
        raise ValueError(f"not floor-linear: {expr}")
    return const, rest[0]


def linearize(expr, sym: sp.Symbol, L: int, r: int) -> tuple[Fraction, Fraction]:
    """Return (a, b) with expr(L*q + r) == a*q + b for every integer q.

    ``expr`` may use +, * by rational constants and floor. Raises NotLinear(d) when a floor's
    argument has a q-coefficient with denominator d (retry with a multiple of L)."""
    if expr == sym:
        return Fraction(L), Fraction(r)
    if expr.is_Number:
        return Fraction(0), Fraction(str(expr))
    if expr.is_Add:
        a = b = Fraction(0)
        for arg in expr.args:
            da, db = linearize(arg, sym, L, r)
            a, b = a + da, b + db
        return a, b
    if expr.is_Mul:
        const, rest = split_mul(expr)
        a, b = linearize(rest, sym, L, r)
        return const * a, const * b
    if isinstance(expr, (sp.floor, sp.ceiling)):
        a, b = linearize(expr.args[0], sym, L, r)
        if a.denominator != 1:
            raise NotLinear(a.denominator)
        if isinstance(expr, sp.ceiling):
            return a, Fraction(-((-b.numerator) // b.denominator))
        return a, Fraction(b.numerator // b.denominator)
    raise ValueError(f"not floor-linear: {expr}")


def period_for(exprs, sym: sp.Symbol) -> int:
    """The smallest L found by multiplying up divisors so that every expr linearises on H = L*q + r.

    Whether a floor's argument has an integer q-coefficient does not depend on r, so r = 0 is
    checked only: the cost is a few passes over the expression trees, whatever L is."""
    L = 1
    while True:
        try:
            for e in exprs:
                linearize(e, sym, L, 0)
            return L
        except NotLinear as nl:
            L *= nl.divisor


INT64_SAFE = 2 ** 62  # every intermediate of a compiled evaluator stays below this in absolute value

Evaluator = Callable[[np.ndarray], np.ndarray]


def int_evaluator(expr, sym: sp.Symbol, max_x: int) -> Evaluator:
    """Compile an integer-valued floor-linear ``expr`` into an exact int64 NumPy function of an
    array of ``sym`` values with |value| <= max_x. Raises OverflowError (naming the bound) when
    an intermediate value could leave int64, ValueError when ``expr`` is not floor-linear."""
    fn, den, _ = _compile(sp.sympify(expr), sym, max_x)
    if den == 1:
        return lambda x: np.asarray(fn(x), dtype=np.int64)

    def exact(x: np.ndarray) -> np.ndarray:
        q, rem = np.divmod(np.asarray(fn(x), dtype=np.int64), den)
        if np.any(rem):
            raise ValueError(f"not integer-valued: {expr}")
        return q
    return exact


def _checked(bound: int, expr) -> int:
    if bound >= INT64_SAFE:
        raise OverflowError(f"{expr} may reach {bound}, beyond 2**62")
    return bound


def _compile(expr, sym, max_x: int) -> tuple[Callable, int, int]:
    """(fn, den, bound): expr(x) == fn(x) / den exactly, with |fn(x)| <= bound."""
    if expr == sym:
        return (lambda x: x), 1, _checked(max_x, expr)
    if expr.is_Number:
        v = Fraction(str(expr))
        num = v.numerator
        return (lambda x: num), v.denominator, _checked(abs(num), expr)
    if expr.is_Add:
        parts = [_compile(a, sym, max_x) for a in expr.args]
        den = lcm(*(d for _, d, _ in parts))
        scaled = [(f, den // d) for f, d, _ in parts]
        bound = _checked(sum(b * (den // d) for _, d, b in parts), expr)
        return (lambda x: sum(f(x) * m for f, m in scaled)), den, bound
    if expr.is_Mul:
        const, rest = split_mul(expr)
        f, d, b = _compile(rest, sym, max_x)
        g = gcd(const.numerator, const.denominator * d)
        num, den = const.numerator // g, const.denominator * d // g
        return (lambda x: f(x) * num), den, _checked(b * abs(num), expr)
    if isinstance(expr, (sp.floor, sp.ceiling)):
        f, d, b = _compile(expr.args[0], sym, max_x)
        if isinstance(expr, sp.floor):
            return (lambda x: f(x) // d), 1, b // d + 1
        return (lambda x: -((-f(x)) // d)), 1, b // d + 1
    raise ValueError(f"not floor-linear: {expr}")
