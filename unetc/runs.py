"""Config -> the exact sets of input sizes on which the real PyTorch network runs (issue 13 item 3).

PyTorch has no rewrites: it runs at a size when every layer is defined on the sizes it really
computes (:func:`unetc.cost.pytorch_shapes`) and the concat's two inputs agree. Per axis that is
the definedness inequalities plus one equation (skip size == upsampled size), solved exactly by
the checker's own machinery (:func:`unetc.checker.solve`), with the output size as a formula.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .checker import AXES, Report, solve
from .cost import first_break
from .graph import Graph, build
from .intset import IntSet
from .ops import Concat, Op, Requirement


@dataclass(frozen=True)
class AxisRuns:
    """One axis: where PyTorch runs, where every spec hypothesis holds, PyTorch's output size."""

    axis: str
    symbol: sp.Symbol
    runs: IntSet  # sizes where every layer is defined and the concat sizes agree
    spec: IntSet  # sizes where every hypothesis holds (the checker's valid set)
    output: sp.Expr  # PyTorch's output size on this axis, in ``symbol``
    breaks: tuple[str, str] | None = None  # runs empty: (first layer no size gets past, why)

    def output_values(self, limit: int = 8) -> list[int] | None:
        """The distinct output sizes when ``runs`` is a finite set of at most ``limit`` sizes."""
        if self.runs.infinite or self.runs.empty or len(self.runs.finite) > limit:
            return None
        return sorted({int(self.output.subs(self.symbol, n)) for n in self.runs.finite})


def torch_shapes(g: Graph) -> dict[str, tuple]:
    """Shapes PyTorch computes (every op's own ``infer`` on the real inputs, no rewrites), as
    :func:`unetc.cost.pytorch_shapes` without its symbolic concat check (slow on nested floors):
    the concat follows its first input; where its inputs agree is what :func:`runs` solves."""
    shapes = {"x": g.shapes["x"]}
    for op in g.ops:
        ins = [shapes[t] for t in op.inputs]
        if isinstance(op, Concat):
            shapes[op.output] = (sum(s[0] for s in ins),) + tuple(ins[0][1:])
        else:
            shapes[op.output] = tuple(op.infer(ins))
    return shapes


def _axis_reqs(g: Graph, shapes: dict, sym: sp.Symbol, upto: int | None = None) -> list[tuple[int, Requirement]]:
    """(op index, requirement) of every op's definedness on PyTorch's sizes, on ``sym`` only."""
    out, seen = [], set()
    for i, op in enumerate(g.ops[:upto]):
        for r in op.requirements([shapes[t] for t in op.inputs]):
            key = (sp.sympify(r.expr), r.bound)
            if sp.sympify(r.expr).free_symbols <= {sym} and key not in seen:
                seen.add(key)
                out.append((i, r))
    return out


def _concat(g: Graph) -> tuple[int, Concat]:
    return next((i, op) for i, op in enumerate(g.ops) if isinstance(op, Concat))


def _runs_set(g: Graph, shapes: dict, axis: str, sym, idx: int, upto: int | None = None) -> IntSet:
    """Sizes where ops[:upto] are defined (and, once reached, the concat inputs agree)."""
    reqs = [r for _, r in _axis_reqs(g, shapes, sym, upto)]
    ci, cat = _concat(g)
    if upto is None or upto > ci:
        lhs, rhs = shapes[cat.inputs[0]][idx], shapes[cat.inputs[1]][idx]
    else:
        lhs = rhs = sym
    return solve("PyTorch runs", cat.name, axis, lhs, rhs, sym, reqs)


def _first_break(g: Graph, shapes: dict, axis: str, sym, idx: int) -> tuple[str, str]:
    """For an axis where PyTorch runs at no size: the first layer that no size gets past (the
    sets of sizes getting past each layer shrink layer by layer: bisection)."""
    from .report import readable

    lo, hi = 0, len(g.ops)  # ops[:lo] pass some size, ops[:hi] none
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs_set(g, shapes, axis, sym, idx, mid).empty else (mid, hi)
    op = g.ops[hi - 1]
    if isinstance(op, Concat):
        a, b = op.inputs
        return op.name, (f"{a} gives {readable(shapes[a][idx])}, {b} gives {readable(shapes[b][idx])}: "
                         f"equal at no {axis} the layers before run at")
    return op.name, f"undefined at every {axis} that reaches it"


def runs(report: Report) -> dict[str, AxisRuns]:
    """Per axis (in_h, in_w): the exact sizes where PyTorch runs the network of ``report.config``,
    next to the checker's valid set, with PyTorch's output size as a formula."""
    g = build(report.config, symbolic=True)
    shapes = torch_shapes(g)
    s = _runs_set(g, shapes, AXES[0], g.h, 1)  # both axes share the geometry: in_w's set is in_h's
    out = {}
    for axis, sym, idx in ((AXES[0], g.h, 1), (AXES[1], g.w, 2)):
        brk = _first_break(g, shapes, axis, sym, idx) if s.empty else None
        out[axis] = AxisRuns(axis, sym, s, report.valid[axis], sp.sympify(shapes["y"][idx]), brk)
    return out


@dataclass(frozen=True)
class LayerView:
    """One row of the layer table: the spec's shapes next to what PyTorch computes."""

    op: Op
    inputs: list[tuple]  # the spec's (rewritten) input shapes
    raw: tuple  # the layer's formula on the spec's inputs
    spec: tuple  # after the spec's rewrite (what the next layer is told)
    torch: tuple | None  # what PyTorch computes; None from the layer where it fails on
    breaks: str | None = None  # at the first layer PyTorch cannot run: why


def layer_views(report: Report, axis_runs: dict[str, AxisRuns] | None = None) -> list[LayerView]:
    """The layers at the config's sizes (symbols where unbound). PyTorch's failure is located at
    the bound sizes, or, where an axis runs at no size at all, from ``axis_runs``."""
    g = build(report.config)
    shapes = torch_shapes(g)
    brk = first_break(g, shapes, {})
    if brk is None and axis_runs:
        brk = next((a.breaks for a in axis_runs.values() if a.breaks), None)
    rows, dead = [], False
    for op in g.ops:
        here = brk is not None and brk[0] == op.name
        dead = dead or here
        rows.append(LayerView(op, [g.shapes[t] for t in op.inputs], g.raw[op.output], g.shapes[op.output],
                              None if dead else shapes[op.output], brk[1] if here else None))
    return rows
