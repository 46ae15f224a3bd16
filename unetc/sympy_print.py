"""SymPy's code printers, extended only to print ``floor`` of size expressions as integer division.

Every size is floor-linear (SPEC.md): sums of integer multiples of the size symbols, integers and
floors of such sums times a rational. SymPy's own printers print ``floor(H/2)`` as
``math.floor((1/2)*H)`` / ``floor((1.0/2.0)*H)`` -- float division, inexact for large sizes. Here
``floor(a)`` is written as ``(num) // den`` (Python) or ``(num) / den`` (C), with ``den`` the least
common denominator of ``a``'s coefficients and ``num = a * den`` an integer expression.

C's ``/`` truncates towards zero: it equals floor only when ``num >= 0``. Every floor in unetc's
sizes is a conv/pool size ``floor((n + 2p - k)/s)``, whose numerator ``n + 2p - k`` is >= 0 exactly
where the layer is defined; on the checker's valid set every layer is defined, so the C text is
exact there (tests/test_symbolic_numpy.py checks it at every valid size it runs). Python's ``//``
is floor division for every sign.
"""
from __future__ import annotations

from math import lcm

import sympy as sp
from sympy.printing.c import C99CodePrinter
from sympy.printing.pycode import PythonCodePrinter


def floor_parts(arg) -> tuple[sp.Expr, int]:
    """(num, den) with arg == num / den, den >= 1 an integer and num with integer coefficients
    (ValueError when arg has a non-rational coefficient)."""
    coeffs = sp.Add.make_args(sp.expand(arg))
    den = 1
    for term in coeffs:
        c, _ = term.as_coeff_Mul()
        if not c.is_Rational:
            raise ValueError(f"floor of a non-rational expression: {arg}")
        den = lcm(den, int(c.q))
    return sp.expand(arg * den), den


class PyIntPrinter(PythonCodePrinter):
    """Python printer whose floor of a rational-linear integer expression is exact ``//``."""

    def _print_floor(self, expr):
        """floor(num/den) -> ((num) // den)."""
        num, den = floor_parts(expr.args[0])
        return self._print(num) if den == 1 else f"(({self._print(num)}) // {den})"


class CIntPrinter(C99CodePrinter):
    """C printer whose floor of a rational-linear integer expression is ``/`` on integers: exact
    only for a non-negative numerator (C truncates towards zero; see the module docstring)."""

    def _print_floor(self, expr):
        """floor(num/den) -> ((num) / den), num >= 0 on the valid set."""
        num, den = floor_parts(expr.args[0])
        return self._print(num) if den == 1 else f"(({self._print(num)}) / {den})"


def pycode(expr) -> str:
    """Python source text of an integer size expression (ints print as themselves)."""
    return PyIntPrinter().doprint(sp.sympify(expr))


def ccode(expr) -> str:
    """C source text of an integer size expression."""
    return CIntPrinter().doprint(sp.sympify(expr))
