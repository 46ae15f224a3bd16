"""Stage 5: Config -> :class:`Specialized` (forward + backward graphs, the sizes targets print).

The graph is built once, at the size symbols H, W (:data:`unetc.graph.SIZE_SYMBOLS`, whatever the
config calls them); specialising to concrete sizes is substitution into it. A concrete axis is
substituted away (its sizes become Python ints, as targets always saw them); a symbolic axis
stays a SymPy expression in H or W, and :attr:`Specialized.valid` carries the checker's exact set
of sizes for which the emitted code is correct.

Why the spec's rewritten shapes are the real ones there: the graph records, at each hypothesis
layer, the size the spec *assumes* (e.g. H after a conv) instead of what the layer's formula
gives. On the valid set every hypothesis ``raw == assumed`` holds and every layer is defined
(the checker solves each hypothesis together with its layers' definedness conditions), so by
induction over the layers the raw sizes of the real network equal the recorded ones at every
valid size (tests/test_symbolic_numpy.py checks this against an independent integer model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from .backward import Backward, derive
from .checker import Report, check
from .config import Config
from .errors import ShapeError
from .graph import SIZE_SYMBOLS, Graph, build_at
from .intset import IntSet
from .ops import Op

AXES = ("in_h", "in_w")


@dataclass
class Specialized:
    """Everything a target needs: ops, shapes, parameter layout, and for symbolic axes their
    symbols and exact valid sets.

    ``shapes``/``params``: tuples whose entries are Python ints (channels, and every size of a
    concrete axis) or SymPy expressions in the symbols of ``symbols`` (sizes of a symbolic axis;
    on the valid set each is an integer >= 1)."""

    config: Config
    graph: Graph
    backward: Backward
    shapes: dict[str, tuple]  # every forward and backward tensor
    params: dict[str, tuple[int, ...]]  # PARAM_SHAPES order
    symbols: dict[str, sympy.Symbol] = field(default_factory=dict)  # symbolic axis -> H or W
    valid: dict[str, IntSet] = field(default_factory=dict)  # axis -> the checker's exact set
    report: Report | None = None

    @property
    def symbolic(self) -> bool:
        """True when some size stays symbolic (code must read it at call time)."""
        return bool(self.symbols)

    @property
    def forward_ops(self) -> list[Op]:
        return self.graph.ops

    @property
    def backward_ops(self) -> list[Op]:
        return self.backward.ops

    @property
    def in_shape(self) -> tuple:
        return self.shapes["x"]

    @property
    def out_shape(self) -> tuple:
        return self.shapes["y"]


def _plain(d):
    """A shape entry: Python int when it is a number, else the SymPy expression."""
    return int(d) if sympy.sympify(d).is_number else d


def _refusal(report: Report) -> str:
    """Why no code can be emitted for a config whose report is not ok."""
    bad = next((c for c in report.constraints if c.status in ("violated", "impossible")), None)
    if bad is not None and bad.message:
        return bad.message
    if bad is not None:
        return f"{bad.name} ({bad.layer} gives {bad.lhs}, expected {bad.rhs}) holds for no {bad.axis}"
    empty = [a for a in AXES if report.valid[a].empty]
    return f"no {empty[0] if empty else 'size'} satisfies every hypothesis at once"


def specialize(cfg: Config, report: Report | None = None) -> Specialized:
    """Config (symbolic or concrete sizes) -> Specialized; ShapeError (exit 1, as ``check``) when
    a concrete size fails a hypothesis or no size is valid on some axis.
    ``report`` is the config's check report when the caller already has it."""
    report = report or check(cfg)
    if not report.ok:
        raise ShapeError(f"cannot emit for this size: {_refusal(report)}")
    g = report.graph  # the graph the checker analysed, when it is at H, W: built once
    if g is None or (g.h, g.w) != SIZE_SYMBOLS or g.config != cfg:
        g = build_at(cfg, *SIZE_SYMBOLS)
    bw = derive(g)
    values = {s: v for s, v in zip(SIZE_SYMBOLS, (cfg.in_h, cfg.in_w)) if isinstance(v, int)}
    if values:
        g = g.subs(values)
        bw = bw.subs(values, g)
    g.verify()
    shapes = {t: tuple(_plain(d) for d in s) for t, s in bw.shapes.items()}
    params = {p: tuple(int(d) for d in s) for p, s in g.params.items()}
    symbols = {a: s for a, s in zip(AXES, SIZE_SYMBOLS) if s not in values}
    return Specialized(cfg, g, bw, shapes, params, symbols, {a: report.valid[a] for a in AXES}, report)


def var(tensor: str) -> str:
    """Tensor name -> Python identifier (parameter gradients contain dots)."""
    return tensor.replace(".", "_")


def op_context(op: Op, sp: Specialized) -> dict:
    """The facts a template macro needs about one op: kind, output/input variables, attributes."""
    ctx = {"kind": op.kind, "name": op.name, "out": var(op.output), "ins": [var(t) for t in op.inputs],
           "out_shape": sp.shapes[op.output], "in_shapes": [sp.shapes[t] for t in op.inputs]}
    fwd = getattr(op, "fwd", None) or op
    for attr in ("k", "s", "p", "lo", "hi", "mode"):
        if hasattr(fwd, attr) or hasattr(op, attr):
            ctx[attr] = getattr(op, attr, None) if hasattr(op, attr) else getattr(fwd, attr)
    ctx["layer"] = fwd.name  # the layer whose parameters (<layer>.weight/.bias) the op reads
    return ctx
