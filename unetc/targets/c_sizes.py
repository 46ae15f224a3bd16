"""Sizes as C text for the C target: a concrete size prints as a literal (the kernels of a
specialised emit unroll on it), a symbolic one as SymPy's C text of its expression in H, W.

:class:`CSizePrinter` is :class:`unetc.sympy_print.CIntPrinter` (floor of a non-negative
numerator as C integer ``/``) extended with integer ``Max``/``Min`` (``unetc_max``/``unetc_min``,
static inline functions of the emitted C; SymPy's own C printer would call ``fmax`` on doubles).
Every size helper here takes and returns a Python int for concrete sizes and a SymPy expression
otherwise, so the same code path serves both emits.
"""
from __future__ import annotations

import math

import sympy

from ..sympy_print import CIntPrinter

ALIGN = 64  # bytes: every workspace buffer starts at a multiple of this


class CSizePrinter(CIntPrinter):
    """CIntPrinter whose Max/Min of integer sizes call the emitted C's unetc_max/unetc_min."""

    def _nest(self, fn: str, args) -> str:
        text = self._print(args[-1])
        for a in reversed(args[:-1]):
            text = f"{fn}({self._print(a)}, {text})"
        return text

    def _print_Max(self, expr):
        return self._nest("unetc_max", list(expr.args))

    def _print_Min(self, expr):
        return self._nest("unetc_min", list(expr.args))


def is_const(e) -> bool:
    """True when e is a number (a Python int or a SymPy number)."""
    return isinstance(e, int) or sympy.sympify(e).is_number


def plain(e):
    """A concrete size as a Python int, a symbolic one unchanged."""
    return int(e) if is_const(e) else e


def cx(e) -> str:
    """C text of a size: a literal for a number, else the parenthesised expression."""
    if isinstance(e, bool):
        return str(int(e))
    if is_const(e):
        return str(int(e))
    return f"({CSizePrinter().doprint(sympy.sympify(e))})"


def cond(c) -> bool | str:
    """A condition on sizes: a Python bool when it is decided (always the case for concrete
    sizes), else the C text of the SymPy relation (checked at run time)."""
    if isinstance(c, (bool, str)):
        return c
    c = sympy.sympify(c)
    if c in (sympy.true, sympy.false):
        return bool(c)
    return f"({CSizePrinter().doprint(c)})"


def numel(shape) -> int | sympy.Expr:
    """Number of elements of a shape (int, or a SymPy product of sizes)."""
    return plain(math.prod(shape))


def rup(n, to: int = ALIGN):
    """n rounded up to a multiple of ``to``: the floor of a non-negative numerator for a
    symbolic n (exact as C text, see :mod:`unetc.sympy_print`)."""
    if is_const(n):
        return -(-int(n) // to) * to
    return to * sympy.floor((n + to - 1) / sympy.Integer(to))


def smax(*args):
    """Max of sizes (int when every argument is a number)."""
    if all(is_const(a) for a in args):
        return max(int(a) for a in args)
    return sympy.Max(*args, evaluate=False)  # SymPy's simplification of Max costs ~10 ms each


def smin(*args):
    if all(is_const(a) for a in args):
        return min(int(a) for a in args)
    return sympy.Min(*args, evaluate=False)


def sfloordiv(a, b: int):
    """floor(a / b) of a non-negative size a."""
    return int(a) // b if is_const(a) else sympy.floor(a / sympy.Integer(b))


def choose(c, then: list[str], other: list[str]) -> list[str]:
    """Kernel steps: ``then`` where the condition c holds, else ``other``: picked now when c is
    decided, else one C ``if`` statement choosing at run time (both branches compiled)."""
    c = cond(c)
    if isinstance(c, bool):
        return then if c else other
    return [f"if {c} {{ {statements(then)} }} else {{ {statements(other)} }}"]


def statements(steps: list[str]) -> str:
    """Kernel steps as one line of C statements."""
    return " ".join(f"{s};" for s in steps)
