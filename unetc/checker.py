"""Stage 3: Graph -> :class:`Report`: every shape hypothesis proved, refuted or solved exactly.

Each hypothesis ``lhs(H) == rhs(H)`` and the definedness conditions of the layers on its way
are floor-linear in H. With H = L*q + r (see :mod:`unetc.sizes`) they become, for each residue r,
one linear equation and some linear inequalities in the integer q, solved exactly. The result is
an :class:`IntSet` (exact, not sampled) of the sizes on which the hypothesis holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .config import Config
from .errors import UsageError
from .graph import Equation, Graph, build, hypotheses
from .intset import MAX_PERIOD, MAX_SPAN, IntSet
from .ops import Requirement
from .sizes import int_evaluator, period_for

AXES = ("in_h", "in_w")
GEOMETRY_KEYS = ("pool_kernel", "pool_stride", "conv_kernel", "conv_stride", "conv_padding", "up_kernel",
                 "up_stride", "up_padding", "head_kernel", "head_stride", "head_padding")
GEOMETRY_LIMIT = 2 ** 20  # the checker refuses a kernel, stride or padding above this
LIMITS = {"geometry": GEOMETRY_LIMIT, "period": MAX_PERIOD, "span": MAX_SPAN}
LARGE_TENSOR = 2 ** 31  # a tensor with this many elements gets a warning


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
    exprs: tuple = ()  # symbolic sizes: (lhs, rhs) as SymPy expressions (for printing)


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
    workspace_bytes: int | None = None  # C target workspace: filled in by the caller, never by check()
    limits: dict[str, int] = field(default_factory=lambda: dict(LIMITS))  # the checker's own limits
    warnings: list[str] = field(default_factory=list)  # e.g. a tensor too large for 32-bit indexing
    graph: Graph | None = field(default=None, repr=False, compare=False)  # the symbolic graph analysed

    @property
    def ok(self) -> bool:
        bad = {"violated", "impossible"}
        return (not any(c.status in bad for c in self.constraints)
                and not any(s.empty for s in self.valid.values()))


def _solve(eq: Equation, sym: sp.Symbol, reqs: list[Requirement]) -> IntSet:
    """The exact set of H >= 1 where every requirement holds and lhs == rhs.

    With H = L*q + r (q >= 0, r in 0..L-1) every expression is a*q + b[r]: the slope a is the
    same for all residues and b[r] is the expression at H = r, both evaluated exactly for all
    residues at once. Each residue then allows q in an interval [lo, hi] (hi = _INF: unbounded).
    Requirements are solved on their own (smaller) periods first, then spread over L."""
    exprs = [eq.lhs, eq.rhs] + [sp.sympify(r.expr) - r.bound for r in reqs]  # requirement: >= 0
    L = period_for(exprs, sym)
    if L > MAX_PERIOD:
        raise UsageError(f"{eq.name}: {eq.axis} sizes repeat with period {L} (from the strides), "
                         f"above the checker's limit {MAX_PERIOD} (2^22)")
    per_period: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for e in exprs[2:]:
        Le, a, b = _affine(eq, e, sym)
        lo, hi = per_period.get(Le, (np.zeros(Le, np.int64), np.full(Le, _INF, np.int64)))
        if a > 0:
            lo = np.maximum(lo, -(b // a))  # a*q + b >= 0  <=>  q >= ceil(-b / a)
        elif a < 0:
            hi = np.minimum(hi, b // -a)
        else:
            hi = np.where(b < 0, -1, hi)
        per_period[Le] = lo, hi
    lo, hi = np.zeros(L, np.int64), np.full(L, _INF, np.int64)
    lo[0] = 1  # H >= 1
    for Le, (lo_e, hi_e) in per_period.items():  # H = Le*q' + s with q' = (L/Le)*q + t
        m, t = L // Le, np.arange(L // Le, dtype=np.int64)[:, None]
        lo = np.maximum(lo, (-((t - lo_e) // m)).ravel())
        hi = np.minimum(hi, np.where(hi_e == _INF, _INF, (hi_e - t) // m).ravel())
    (a1, b1), (a2, b2) = _spread(_affine(eq, eq.lhs, sym), L), _spread(_affine(eq, eq.rhs, sym), L)
    if a1 == a2:
        hi = np.where(b1 != b2, -1, hi)
    else:  # one q at most: (b2 - b1) / (a1 - a2) when it is an integer inside [lo, hi]
        num, den = b2 - b1, a1 - a2
        q = num // den
        ok = (q * den == num) & (lo <= q) & (q <= hi)
        lo, hi = np.where(ok, q, 1), np.where(ok, q, 0)
    return _dense(eq, L, lo, hi)


_INF = 2 ** 62


def _affine(eq: Equation, expr, sym) -> tuple[int, int, np.ndarray]:
    """(Le, a, b): expr's own period Le and expr(Le*q + s) == a*q + b[s] for q >= 0, 0 <= s < Le."""
    Le = period_for([expr], sym)
    try:
        f = int_evaluator(expr, sym, 2 * Le)
    except OverflowError:
        raise UsageError(f"{eq.name}: {eq.axis} sizes in {expr} exceed the checker's 64-bit range; "
                         f"keep kernels, strides and paddings <= {GEOMETRY_LIMIT}") from None
    ends = f(np.array([0, Le], dtype=np.int64))
    return Le, int(ends[1] - ends[0]), f(np.arange(Le, dtype=np.int64))


def _spread(affine: tuple[int, int, np.ndarray], L: int) -> tuple[int, np.ndarray]:
    """(Le, a, b) -> the same expression on period L (a multiple of Le): with r = Le*t + s,
    expr(L*q + r) = a*(L/Le*q + t) + b[s], laid out as an (L/Le, Le) table."""
    Le, a, b = affine
    t = np.arange(L // Le, dtype=np.int64)[:, None]
    return a * (L // Le), (a * t + b[None, :]).ravel()


def _dense(eq: Equation, L: int, lo: np.ndarray, hi: np.ndarray) -> IntSet:
    """The IntSet of {L*q + r : lo[r] <= q <= hi[r]}, from a table of the sizes below L*qmax."""
    inf = hi == _INF
    fin = (lo <= hi) & ~inf
    qmax = max(1, int(lo[inf].max()) if inf.any() else 0, int(hi[fin].max()) + 1 if fin.any() else 0)
    if L * qmax > MAX_SPAN:
        raise UsageError(f"{eq.name}: {eq.axis} needs the sizes up to {L * qmax} examined, above the "
                         f"checker's limit {MAX_SPAN} (2^23); use smaller kernels, strides or paddings")
    q = np.arange(qmax, dtype=np.int64)[:, None]
    return IntSet.from_dense(((q >= lo) & (q <= hi)).ravel(), inf)


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


def _layers(g: Graph) -> list[Layer]:
    """The layer table; at concrete sizes it stops at the first undefined layer."""
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


def _warnings(g: Graph, n_layers: int) -> list[str]:
    """At concrete sizes: the largest forward tensor when it has 2^31 elements or more."""
    sizes = {t: int(sp.prod(g.raw[op.output])) for op in g.ops[:n_layers] for t in [op.output]
             if all(isinstance(d, int) or getattr(d, "is_Integer", False) for d in g.raw[op.output])}
    if not sizes or max(sizes.values()) < LARGE_TENSOR:
        return []
    name = max(sizes, key=lambda t: sizes[t])
    return [f"tensor {name} has {sizes[name]:,} elements (>= 2^31): 32-bit indexing cannot address it"]


def _check_inputs(cfg: Config) -> None:
    """Refuse (UsageError) a value the checker cannot analyse in bounded time and memory, even
    when it reached check() without Config's validation."""
    for key in GEOMETRY_KEYS + ("in_c", "out_c", "base_c"):
        value, least = getattr(cfg, key), 0 if key.endswith("padding") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f"{key} = {value!r}: the checker needs an integer >= {least}")
        if key in GEOMETRY_KEYS and value > GEOMETRY_LIMIT:
            shown = value if value < 10 ** 15 else f"{value:.3e}"
            raise UsageError(f"{key} = {shown} is above the checker's limit {GEOMETRY_LIMIT} (2^20)")
    for key in AXES:
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, int) and value < 1):
            raise UsageError(f"{key} = {value!r}: the checker needs an integer >= 1 or a symbol name")


def check(cfg: Config) -> Report:
    """Analyse a config: exact valid sets per hypothesis and per axis, and the verdicts at concrete
    sizes. Cost bounded by :data:`LIMITS` (UsageError above them), whatever the input sizes.
    The C workspace (``Report.workspace_bytes``) is the caller's to add: the checker imports no target."""
    _check_inputs(cfg)
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
            constraints.append(Constraint(eq.name, eq.layer, eq.axis, status, str(eq.lhs), str(eq.rhs), s,
                                          exprs=(eq.lhs, eq.rhs)))
        else:
            status, lhs, rhs, msg = _concrete_verdict(eq, sym, value, reqs, axis_sets[eq.axis], s)
            constraints.append(Constraint(eq.name, eq.layer, eq.axis, status, lhs, rhs, s, msg))
    g_at = g if isinstance(cfg.in_h, str) and isinstance(cfg.in_w, str) else build(cfg)
    layers = _layers(g_at)
    return Report(cfg, constraints, axis_sets, layers, concrete, warnings=_warnings(g_at, len(layers)), graph=g)


def solve(name: str, layer: str, axis: str, lhs, rhs, sym: sp.Symbol, reqs: list[Requirement]) -> IntSet:
    """The exact set of sizes ``sym`` >= 1 where every requirement holds and ``lhs == rhs``
    (floor-linear expressions in ``sym``), by the machinery of the hypotheses; UsageError above
    :data:`LIMITS`. ``name``/``layer``/``axis`` only name the problem in messages."""
    return _solve(Equation(name, layer, axis, lhs, rhs, tuple(reqs)), sym, list(reqs))


def conflicts(r: Report, axis: str) -> list[tuple[Constraint, Constraint]]:
    """Pairs of hypotheses on ``axis`` that each hold somewhere but never together (the reason
    an axis has no valid size when none is impossible on its own); [] when no pair conflicts."""
    cs = [c for c in r.constraints if c.axis == axis and not c.valid.empty]
    return [(a, b) for i, a in enumerate(cs) for b in cs[i + 1:] if (a.valid & b.valid).empty]
