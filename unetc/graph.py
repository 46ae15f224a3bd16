"""Stage 2: Config -> :class:`Graph`, the forward layer graph with SymPy shapes.

Layers are built in the spec's order with the spec's names. As in the Lean spec, each layer's
output size is computed by its formula and then *rewritten* to the size the next layer expects
(full resolution H, W; low resolution D_H, D_W); each rewrite is one shape hypothesis
(``h_convH`` ...) recorded as an :class:`Equation` for the checker.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from . import sizes
from .config import Config
from .ops import Concat, Conv2d, ConvTranspose2d, MaxPool2d, Op, Relu, Requirement, Shape

HYPOTHESES = ("h_convH", "h_convW", "h_convH_down", "h_convW_down", "h_upH", "h_upW", "h_outH", "h_outW")


@dataclass(frozen=True)
class Equation:
    """A shape hypothesis ``lhs == rhs`` on one axis, made at ``layer``, defined under ``requires``."""

    name: str
    layer: str
    axis: str  # "in_h" or "in_w"
    lhs: Any
    rhs: Any
    requires: tuple[Requirement, ...]


@dataclass
class Graph:
    """Ops in execution order, tensor shapes, parameters and the hypotheses met on the way."""

    config: Config
    h: Any  # input height: SymPy symbol or Integer
    w: Any
    ops: list[Op] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)  # after the spec's rewrites
    raw: dict[str, Shape] = field(default_factory=dict)  # what each layer's formula gives
    equations: list[Equation] = field(default_factory=list)
    requirements: dict[str, list[Requirement]] = field(default_factory=dict)  # tensor -> ancestors' reqs

    @property
    def params(self) -> dict[str, Shape]:
        """All parameters in PARAM_SHAPES order (spec order), name -> shape."""
        return {k: v for op in self.ops for k, v in op.params().items()}

    def subs(self, values: dict) -> "Graph":
        """A copy with size symbols replaced (e.g. {H: 16}): shapes, raw shapes, hypotheses,
        requirements and the ops' shape attributes; concrete sizes become SymPy Integers."""
        f = Substitution(values)
        return Graph(self.config, f(self.h), f(self.w), [f.op(op) for op in self.ops],
                     {t: f.shape(s) for t, s in self.shapes.items()},
                     {t: f.shape(s) for t, s in self.raw.items()},
                     [f.equation(e) for e in self.equations],
                     {t: [f.requirement(r) for r in rs] for t, rs in self.requirements.items()})

    def verify(self) -> None:
        """Re-run every op's own check against the recorded shapes (raises ShapeError)."""
        for op in self.ops:
            op.verify([self.shapes[t] for t in op.inputs], self.shapes[op.output])


class Substitution:
    """Size symbols -> values (e.g. {H: 16}) applied to expressions, shapes, ops, requirements and
    hypotheses; memoised, since a graph repeats the same few expressions thousands of times.
    Uses ``xreplace`` (exact; a floor of a number evaluates)."""

    def __init__(self, values: dict):
        self.values, self.memo = {k: sp.sympify(v) for k, v in values.items()}, {}

    def __call__(self, e):
        if isinstance(e, int) or not self.values:
            return e  # channel counts stay Python ints
        if e not in self.memo:
            self.memo[e] = sp.sympify(e).xreplace(self.values)
        return self.memo[e]

    def shape(self, shape: Shape) -> Shape:
        return tuple(self(d) for d in shape)

    def op(self, op: Op) -> Op:
        """The op with the shapes it carries (``in_shape`` of input gradients) substituted."""
        if isinstance(getattr(op, "in_shape", None), tuple):
            return dataclasses.replace(op, in_shape=self.shape(op.in_shape))
        return op

    def requirement(self, r: Requirement) -> Requirement:
        return dataclasses.replace(r, expr=self(r.expr))

    def equation(self, e: Equation) -> Equation:
        return dataclasses.replace(e, lhs=self(e.lhs), rhs=self(e.rhs),
                                   requires=tuple(self.requirement(r) for r in e.requires))


def axis_size(value, default: str):
    """in_h/in_w value -> SymPy Integer or integer symbol."""
    if isinstance(value, int):
        return sp.Integer(value)
    return sp.Symbol(value or default, integer=True, positive=True)


SIZE_SYMBOLS = (axis_size("H", "H"), axis_size("W", "W"))  # the graph's sizes in generated code


def build(cfg: Config, symbolic: bool = False) -> Graph:
    """Build the U-Net-2 graph of SPEC.md. ``symbolic`` replaces concrete sizes by symbols H, W
    (the checker analyses every config symbolically, then tests the concrete sizes); a concrete
    axis gets a name the other axis does not use (in_h: 16, in_w: H -> H0, H;
    as :func:`unetc.cost.symbolic_graph` names them)."""
    names = [cfg.in_h, cfg.in_w]
    for i, default in ((0, "H"), (1, "W")):
        if symbolic and isinstance(names[i], int):
            names[i] = default
            while names[i] == names[1 - i]:
                names[i] += "0"
    return build_at(cfg, axis_size(names[0], "H"), axis_size(names[1], "W"))


def build_at(cfg: Config, h, w) -> Graph:
    """The graph of cfg with input sizes h, w (SymPy symbols or Integers; cfg's in_h/in_w are
    not read). :func:`specialize` builds it once at :data:`SIZE_SYMBOLS` and substitutes."""
    g = Graph(cfg, h, w)
    b, ck, cs, cp = cfg.base_c, cfg.conv_kernel, cfg.conv_stride, cfg.conv_padding
    d_h = sizes.out(h, cfg.pool_kernel, cfg.pool_stride, 0)
    d_w = sizes.out(w, cfg.pool_kernel, cfg.pool_stride, 0)
    g.shapes["x"] = (cfg.in_c, h, w)
    g.requirements["x"] = []
    full, low = ("", (h, w)), ("_down", (d_h, d_w))

    def add(op: Op, hyp: tuple[str, tuple] | None = None) -> None:
        in_shapes = [g.shapes[t] for t in op.inputs]
        raw = op.infer(in_shapes)
        reqs: list[Requirement] = []
        for r in [r for t in op.inputs for r in g.requirements[t]] + op.requirements(in_shapes):
            if not any((r.expr, r.bound) == (o.expr, o.bound) for o in reqs):
                reqs.append(r)
        out = raw
        if hyp is not None:
            prefix, suffix, (th, tw) = hyp[0], hyp[1][0], hyp[1][1]
            for axis, ax, got, want in (("in_h", "H", raw[1], th), ("in_w", "W", raw[2], tw)):
                g.equations.append(Equation(f"{prefix}{ax}{suffix}", op.name, axis, got, want, tuple(reqs)))
            out = (raw[0], th, tw)
        g.ops.append(op)
        g.shapes[op.output] = out
        g.raw[op.output] = raw
        g.requirements[op.output] = reqs

    conv = dict(k=ck, s=cs, p=cp)
    add(Conv2d("down1_1", ("x",), "z1", cin=cfg.in_c, cout=b, **conv), ("h_conv", full))
    add(Relu("s1", ("z1",), "s1"))
    add(Conv2d("down1_2", ("s1",), "z2", cin=b, cout=b, **conv), ("h_conv", full))
    add(Relu("skip1", ("z2",), "skip1"))
    add(MaxPool2d("pool", ("skip1",), "pooled", k=cfg.pool_kernel, s=cfg.pool_stride))
    add(Conv2d("down2_1", ("pooled",), "z3", cin=b, cout=2 * b, **conv), ("h_conv", low))
    add(Relu("b1", ("z3",), "b1"))
    add(Conv2d("down2_2", ("b1",), "z4", cin=2 * b, cout=2 * b, **conv), ("h_conv", low))
    add(Relu("bottleneck", ("z4",), "bottleneck"))
    add(ConvTranspose2d("upT", ("bottleneck",), "up", cin=2 * b, cout=b,
                        k=cfg.up_kernel, s=cfg.up_stride, p=cfg.up_padding), ("h_up", full))
    add(Concat("merged", ("skip1", "up"), "merged"))
    add(Conv2d("up1_1", ("merged",), "z5", cin=2 * b, cout=b, **conv), ("h_conv", full))
    add(Relu("u1", ("z5",), "u1"))
    add(Conv2d("up1_2", ("u1",), "z6", cin=b, cout=b, **conv), ("h_conv", full))
    add(Relu("u2", ("z6",), "u2"))
    add(Conv2d("out1x1", ("u2",), "y", cin=b, cout=cfg.out_c,
               k=cfg.head_kernel, s=cfg.head_stride, p=cfg.head_padding), ("h_out", full))
    return g


def hypotheses(g: Graph) -> list[Equation]:
    """The eight distinct hypotheses in spec order, each from the first layer that makes it."""
    first: dict[str, Equation] = {}
    for eq in g.equations:
        first.setdefault(eq.name, eq)
    return [first[n] for n in HYPOTHESES]
