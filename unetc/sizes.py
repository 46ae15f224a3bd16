"""Size formulas of SPEC.md (one axis) and their exact linearisation on residue classes.

Every size is a SymPy expression built from the input size symbol with +, * by constants and
``floor``. Writing H = L*q + r (L a multiple of every divisor met), each size becomes exactly
``a*q + b`` for all integers q, which turns each shape hypothesis into linear arithmetic in q.
"""
from __future__ import annotations

from fractions import Fraction

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
        const = Fraction(1)
        rest = []
        for arg in expr.args:
            if arg.is_Number:
                const *= Fraction(str(arg))
            else:
                rest.append(arg)
        if len(rest) != 1:
            raise ValueError(f"not floor-linear: {expr}")
        a, b = linearize(rest[0], sym, L, r)
        return const * a, const * b
    if isinstance(expr, sp.floor):
        a, b = linearize(expr.args[0], sym, L, r)
        if a.denominator != 1:
            raise NotLinear(a.denominator)
        return a, Fraction(b.numerator // b.denominator)
    raise ValueError(f"not floor-linear: {expr}")


def period_for(exprs, sym: sp.Symbol) -> int:
    """The smallest L found by doubling-up divisors so that every expr linearises on H = L*q + r."""
    L = 1
    while True:
        try:
            for e in exprs:
                for r in range(L):
                    linearize(e, sym, L, r)
            return L
        except NotLinear as nl:
            L *= nl.divisor
