"""Stage 3: Graph -> :class:`Report`: every shape hypothesis proved, refuted or solved exactly.

Each hypothesis ``lhs(H) == rhs(H)`` and the definedness conditions of the layers on its way
are floor-linear in H. With H = L*q + r (see :mod:`unetc.sizes`) they become, for each residue r,
one linear equation and some linear inequalities in the integer q, solved exactly. The result is
an :class:`IntSet` (exact, not sampled) of the sizes on which the hypothesis holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import ceil, floor

import sympy as sp

from .config import Config
from .graph import Equation, Graph, build, hypotheses
from .intset import IntSet
from .ops import Requirement
from .sizes import linearize, period_for

AXES = ("in_h", "in_w")


@dataclass
class Constraint:
    """The verdict on one hypothesis."""

    name: str
    layer: str
    axis: str
    status: str  # holds | violated | proved | conditional | impossible
    lhs: str
    rhs: str
    valid: IntSet
    message: str = ""


@dataclass
class Layer:
    """One row of the layer table."""

    name: str
    op: str
    inputs: list[str]
    output: str
    params: int


@dataclass
class Report:
    """Everything ``unetc check`` says about one config."""

    config: Config
    constraints: list[Constraint]
    valid: dict[str, IntSet]
    layers: list[Layer]
    concrete: dict[str, int | None]
    workspace_bytes: int | None = None  # C target workspace, for concrete valid configs

    @property
    def ok(self) -> bool:
        bad = {"violated", "impossible"}
        return (not any(c.status in bad for c in self.constraints)
                and not any(s.empty for s in self.valid.values()))


def _solve(eq: Equation, sym: sp.Symbol, reqs: list[Requirement]) -> IntSet:
    """The exact set of H >= 1 where every requirement holds and lhs == rhs."""
    exprs = [eq.lhs, eq.rhs] + [r.expr for r in reqs]
    L = period_for(exprs, sym)
    per_residue = []  # (lo, hi, lhs coeffs, rhs coeffs) with lo/hi bounds on q (hi None = inf)
    threshold = 1
    for r in range(L):
        lo: Fraction | int = ceil(Fraction(1 - r, L))
        hi: int | None = None
        for req in reqs:
            a, b = linearize(req.expr, sym, L, r)
            if a > 0:
                lo = max(lo, ceil((req.bound - b) / a))
            elif a < 0:
                bound = floor((req.bound - b) / a)
                hi = bound if hi is None else min(hi, bound)
            elif b < req.bound:
                hi = lo - 1  # never defined on this residue
        (a1, b1), (a2, b2) = linearize(eq.lhs, sym, L, r), linearize(eq.rhs, sym, L, r)
        if a1 == a2:
            if b1 != b2:
                hi = lo - 1
        else:
            q = (b2 - b1) / (a1 - a2)
            if q.denominator != 1 or not lo <= q <= (hi if hi is not None else q):
                hi = lo - 1
            else:
                lo = hi = int(q)
        per_residue.append((lo, hi))
        threshold = max(threshold, L * lo + r + 1 if hi is None else L * (hi + 1) + r)

    def member(n: int) -> bool:
        lo, hi = per_residue[n % L]
        q = n // L
        return q >= lo and (hi is None or q <= hi)

    return IntSet.from_predicate(member, threshold, L)


def _relevant(reqs: tuple[Requirement, ...], sym) -> list[Requirement]:
    return [r for r in reqs if sp.sympify(r.expr).free_symbols <= {sym}]


def _sym_of(eq: Equation, g: Graph):
    return g.h if eq.axis == "in_h" else g.w


def _concrete_verdict(eq: Equation, sym, value: int, reqs: list[Requirement], axis_set: IntSet,
                      valid: IntSet) -> tuple[str, str, str, str]:
    """(status, lhs, rhs, message) of one hypothesis at a concrete size."""
    for req in reqs:
        got = sp.sympify(req.expr).subs(sym, value)
        if got < req.bound:
            return "violated", "undefined", str(value), f"{eq.axis} = {value}: {req.message(got)}"
    lhs, rhs = sp.sympify(eq.lhs).subs(sym, value), sp.sympify(eq.rhs).subs(sym, value)
    if value in valid:
        return "holds", str(lhs), str(rhs), ""
    below, above = axis_set.nearest(value)
    near = ", ".join(str(n) for n in (below, above) if n is not None) or "none"
    return "violated", str(lhs), str(rhs), (f"{eq.axis} = {value} fails {eq.name} ({eq.layer} gives {lhs}, "
                                            f"expected {rhs}); nearest valid: {near}")


def _layers(cfg: Config) -> list[Layer]:
    """The layer table; at concrete sizes it stops at the first undefined layer."""
    g = build(cfg)
    rows = []
    for op in g.ops:
        n_params = sum(int(sp.prod(s)) for s in op.params().values())
        in_shapes = [g.shapes[t] for t in op.inputs]
        ins = [str(tuple(s)) for s in in_shapes]
        bad = [r for r in op.requirements(in_shapes) if r.expr.is_number and r.expr < r.bound]
        out = f"undefined: {bad[0].what} fails" if bad else str(tuple(g.raw[op.output]))
        rows.append(Layer(op.name, op.describe(), ins, out, n_params))
        if bad:
            break
    return rows


def check(cfg: Config, workspace: bool = True) -> Report:
    """Analyse a config: exact valid sets per hypothesis and per axis, concrete verdicts if sized,
    and (``workspace``) the C target's workspace bytes for a valid concrete config."""
    g = build(cfg, symbolic=True)
    concrete = {"in_h": cfg.in_h if isinstance(cfg.in_h, int) else None,
                "in_w": cfg.in_w if isinstance(cfg.in_w, int) else None}
    solved = []
    for eq in hypotheses(g):
        sym = _sym_of(eq, g)
        reqs = _relevant(eq.requires, sym)
        solved.append((eq, sym, reqs, _solve(eq, sym, reqs)))
    axis_sets: dict[str, IntSet] = {}
    for eq, _, _, s in solved:
        axis_sets[eq.axis] = axis_sets[eq.axis] & s if eq.axis in axis_sets else s
    constraints = []
    for eq, sym, reqs, s in solved:
        value = concrete[eq.axis]
        if value is None:
            status = "impossible" if s.empty else "proved" if s.smallest_missing() is None else "conditional"
            constraints.append(Constraint(eq.name, eq.layer, eq.axis, status, str(eq.lhs), str(eq.rhs), s))
        else:
            status, lhs, rhs, msg = _concrete_verdict(eq, sym, value, reqs, axis_sets[eq.axis], s)
            constraints.append(Constraint(eq.name, eq.layer, eq.axis, status, lhs, rhs, s, msg))
    report = Report(cfg, constraints, axis_sets, [], concrete)
    report.layers = _layers(cfg)
    if workspace and report.ok and not cfg.symbolic:
        from .specialize import specialize
        from .targets.c_target import workspace_bytes

        report.workspace_bytes = workspace_bytes(specialize(cfg, report))
    return report
