"""Config -> :class:`Cost`: parameters, multiply-accumulates and memory, per layer and in total,
as SymPy formulas in the input size symbols (H, W as the config names them), evaluated when the
sizes are bound.

Shapes: the sizes PyTorch really computes, not the spec's rewritten ones. The graph's ``raw``
shapes apply each layer's formula to the spec's *rewritten* input, so they drift from PyTorch after
the first rewrite; :func:`pytorch_shapes` re-applies every op's own ``infer`` to the real inputs.
Where every hypothesis holds the two agree.

Counts (one image; no batch axis yet). Every MAC, ``other`` op and activation figure is per image
(multiply by N for a batch); parameters and parameter gradients are not:

- ``macs``: conv ``Cout·Cin·k²·Hout·Wout``, transposed conv ``Cin·Cout·k²·Hin·Win`` (products with
  padding zeros included, bias additions not: they are ``other``, "bias adds").
- ``bwd_macs``: weight gradient + input gradient, each as many MACs as the forward; the input
  gradient of down1_1 (dL/dx, computed by the spec's backward) is counted too.
- ``other``: max-pool comparisons ``(k²-1)·C·Hout·Wout``, ReLU comparisons (one per element),
  concat elements copied, conv bias adds (one per output element).
- ``activations``: elements of every layer output (z1 ... y; the input x is ``input``).
- ``train_peak``: no buffer reuse, so an upper bound of any schedule's peak: the forward tensors
  the backward reads (``Backward.saved()``: x, s1, skip1, pooled, b1, bottleneck, merged, u1, u2)
  + one gradient per forward tensor (dL/dx and dL/d of every layer output) + one gradient per
  parameter. The parameters themselves are not included (``params``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod
from typing import Any

import sympy as sp

from .backward import derive
from .config import Config
from .errors import ShapeError, UsageError
from .graph import Graph, build
from .ops import Concat, Conv2d, ConvTranspose2d, MaxPool2d, Op, Relu, Shape

DTYPE_BYTES = {"float32": 4, "float64": 8}
TOTALS = ("params", "macs", "bwd_macs", "comparisons", "copies", "bias_adds", "input", "activations",
          "activation_bytes", "train_peak", "train_peak_bytes")
PER_IMAGE = ("macs", "bwd_macs", "comparisons", "copies", "bias_adds", "input", "activations", "activation_bytes")


def symbolic_graph(cfg: Config) -> Graph:
    """``graph.build(cfg, symbolic=True)``, except that a concrete axis never takes the name of
    the other axis's symbol (in_h: 128, in_w: H gives symbols H0 and H, not one shared H)."""
    names = [cfg.in_h if isinstance(cfg.in_h, str) else "H", cfg.in_w if isinstance(cfg.in_w, str) else "W"]
    if names[0] == names[1] and not (isinstance(cfg.in_h, str) and isinstance(cfg.in_w, str)):
        i = 0 if isinstance(cfg.in_h, int) else 1
        names[i] += "0"
    return build(cfg.with_sizes(*names), symbolic=True)


def pytorch_shapes(g: Graph) -> tuple[dict[str, Shape], str | None]:
    """Shapes PyTorch computes (every op's ``infer`` on real inputs, no rewrites) -> (tensor ->
    shape, the concat whose inputs differ at every size or None). After such a concat, shapes
    follow its first input."""
    shapes: dict[str, Shape] = {"x": g.shapes["x"]}
    broken = None
    for op in g.ops:
        shapes[op.output], refused = real_infer(op, [shapes[t] for t in op.inputs])
        broken = broken or (op.name if refused else None)
    return shapes, broken


def real_infer(op, ins: list[Shape]) -> tuple[Shape, bool]:
    """(output shape PyTorch computes, whether a concat refuses its inputs at every size). A concat
    compares its inputs' sizes by their difference (no ``simplify``: that took seconds for nested
    strided floors); after a refused concat, shapes follow its first input."""
    if isinstance(op, Concat):
        refused = any((a - b).is_number and a != b
                      for a, b in zip(map(sp.sympify, ins[0][1:]), map(sp.sympify, ins[1][1:])))
        return (sum(s[0] for s in ins),) + tuple(ins[0][1:]), refused
    try:
        return tuple(op.infer(ins)), False
    except ShapeError:
        return (sum(s[0] for s in ins),) + tuple(ins[0][1:]), True


def first_break(g: Graph, shapes: dict[str, Shape], subs: dict) -> tuple[str, str] | None:
    """The first layer PyTorch cannot run at the bound sizes ``subs`` -> (layer, reason), or None."""
    for op in g.ops:
        ins = [tuple(sp.sympify(n).subs(subs) for n in shapes[t]) for t in op.inputs]
        for req in op.requirements(ins):
            got = sp.sympify(req.expr).subs(subs)
            if got.is_number and got < req.bound:
                return op.name, f"{req.what} fails (got {got})"
        if isinstance(op, Concat):
            for ax, i in (("H", 1), ("W", 2)):
                a, b = ins[0][i], ins[1][i]
                if (a - b).is_number and a != b:
                    return op.name, f"{op.inputs[0]} {ax} = {a} but {op.inputs[1]} {ax} = {b}"
    return None


@dataclass(frozen=True)
class LayerCost:
    """One layer: real output shape, params, forward/backward MACs, other ops, output elements."""

    name: str
    op: str  # e.g. "conv2d 3x3 s1 p1"
    output: Shape
    params: int
    macs: Any
    bwd_macs: Any
    other: Any
    other_kind: str  # "bias adds" | "comparisons" | "elements copied"
    elements: Any


def _layer(op: Op, ins: list[Shape], out: Shape) -> LayerCost:
    params = sum(prod(s) for s in op.params().values())
    elements = sp.expand(sp.Mul(*out))
    macs, other, kind = sp.Integer(0), elements, "comparisons"
    if isinstance(op, Conv2d):
        macs, other, kind = sp.expand(op.cout * op.cin * op.k ** 2 * out[1] * out[2]), elements, "bias adds"
    elif isinstance(op, ConvTranspose2d):
        macs, kind = sp.expand(op.cin * op.cout * op.k ** 2 * ins[0][1] * ins[0][2]), "bias adds"
    elif isinstance(op, MaxPool2d):
        other = sp.expand((op.k ** 2 - 1) * elements)
    elif isinstance(op, Concat):
        kind = "elements copied"
    elif not isinstance(op, Relu):  # pragma: no cover - every forward op kind is listed above
        raise ShapeError(f"cost: no rule for op kind {op.kind}")
    return LayerCost(op.name, op.describe(), out, params, macs, 2 * macs, other, kind, elements)


@dataclass(frozen=True)
class Cost:
    """Per-layer and total cost as formulas in ``h``, ``w``; ``subs`` binds them (see :meth:`at`)."""

    config: Config
    h: sp.Symbol
    w: sp.Symbol
    dtype_bytes: int
    layers: tuple[LayerCost, ...]
    formulas: dict[str, Any]  # TOTALS name -> SymPy expression
    graph: Graph = field(repr=False, compare=False)
    shapes: dict[str, Shape] = field(repr=False, compare=False)  # pytorch_shapes(graph)
    subs: dict = field(default_factory=dict)

    @property
    def concrete(self) -> bool:
        """True when both sizes are bound (every value is an integer)."""
        return self.h in self.subs and self.w in self.subs

    def value(self, expr) -> Any:
        """``expr`` with the bound sizes substituted (an int when concrete)."""
        v = sp.sympify(expr).subs(self.subs)
        return int(v) if v.is_Integer else v

    def total(self, name: str) -> Any:
        """One of :data:`TOTALS`, evaluated at the bound sizes."""
        return self.value(self.formulas[name])

    def at(self, h: int | None = None, w: int | None = None) -> "Cost":
        """A copy with H (and/or W) bound. Raises ShapeError naming the first layer PyTorch cannot
        run at these sizes, UsageError for sizes < 1 or two sizes for one shared symbol."""
        subs = dict(self.subs)
        for sym, v in ((self.h, h), (self.w, w)):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"cost: sizes must be integers >= 1, got {v!r}")
            if subs.get(sym, v) != v:
                raise UsageError(f"cost: {sym} is both {subs[sym]} and {v} (in_h and in_w share it)")
            subs[sym] = v
        bad = first_break(self.graph, self.shapes, subs)
        if bad:
            raise ShapeError(f"cost at {subs.get(self.h, self.h)}x{subs.get(self.w, self.w)}: "
                             f"{bad[0]}: {bad[1]}; PyTorch cannot run the network there")
        return replace(self, subs=subs)

    def _pair(self, expr) -> dict[str, Any]:
        v = self.value(expr)
        return {"formula": sp.sstr(sp.sympify(expr)), "value": v if isinstance(v, int) else None}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: symbols, per-layer and total {"formula": str, "value": int | null}."""
        per = ("macs", "bwd_macs", "other", "elements")
        return {
            "shapes": "pytorch",
            "symbols": {"in_h": str(self.h), "in_w": str(self.w)},
            "sizes": {"in_h": self.value(self.h) if self.h in self.subs else None,
                      "in_w": self.value(self.w) if self.w in self.subs else None},
            "dtype_bytes": self.dtype_bytes,
            "per_image": list(PER_IMAGE),  # scale with a batch N; train_peak(N) = N*(train_peak - params) + params
            "layers": [{"name": l.name, "op": l.op, "output": [self._shape_item(n) for n in l.output],
                        "params": l.params, "other_kind": l.other_kind,
                        **{k: self._pair(getattr(l, k)) for k in per}} for l in self.layers],
            "total": {k: self._pair(self.formulas[k]) for k in TOTALS},
        }

    def _shape_item(self, n) -> int | str:
        v = self.value(n)
        return v if isinstance(v, int) else sp.sstr(v)

    def _cell(self, expr) -> str:
        v = self.value(expr)
        return f"{v:,}" if isinstance(v, int) else sp.sstr(v)

    def table_rows(self) -> list[list[str]]:
        """Header + one row per layer + a total row: layer, op, output, params, MACs fwd, MACs bwd,
        other ops (formulas when symbolic, numbers with thousands separators when concrete)."""
        rows = [["layer", "op", "output", "params", "MACs fwd", "MACs bwd", "other"]]
        for l in self.layers:
            out = "(" + ", ".join(str(self._shape_item(n)) for n in l.output) + ")"
            other = f"{self._cell(l.other)} {l.other_kind}" if l.other != 0 else ""
            rows.append([l.name, l.op, out, f"{l.params:,}", self._cell(l.macs), self._cell(l.bwd_macs), other])
        f = self.formulas
        rows.append(["total", "", "", f"{f['params']:,}", self._cell(f["macs"]), self._cell(f["bwd_macs"]), ""])
        return rows

    def summary_rows(self) -> list[list[str]]:
        """(quantity, formula or value) rows: MACs, other ops, activation and training memory."""
        f, c = self.formulas, self._cell
        return [["macs", c(f["macs"])], ["bwd_macs", c(f["bwd_macs"])],
                ["comparisons", c(f["comparisons"])], ["copies", c(f["copies"])],
                ["bias_adds", c(f["bias_adds"])],
                ["activations", f"{c(f['activations'])} elements, {c(f['activation_bytes'])} bytes"],
                ["train_peak", f"{c(f['train_peak'])} elements, {c(f['train_peak_bytes'])} bytes"]]


def cost(cfg: Config) -> Cost:
    """The cost of ``cfg``'s network from its symbolic graph, bound at cfg's concrete sizes.
    Raises ShapeError when PyTorch cannot run the network (at any size, or at cfg's sizes)."""
    g = symbolic_graph(cfg)
    shapes, broken = pytorch_shapes(g)
    if broken:
        a, b = next(op for op in g.ops if op.name == broken).inputs
        raise ShapeError(f"cost: {broken}: {a} {tuple(shapes[a])} and {b} {tuple(shapes[b])} differ "
                         f"at every size; PyTorch cannot run the network")
    layers = tuple(_layer(op, [shapes[t] for t in op.inputs], shapes[op.output]) for op in g.ops)
    size = {t: sp.expand(sp.Mul(*s)) for t, s in shapes.items()}
    saved = sum((size[t] for t in derive(g).saved()), sp.Integer(0))
    nbytes = DTYPE_BYTES[cfg.dtype]
    f: dict[str, Any] = {
        "params": sum(l.params for l in layers),
        "macs": sp.expand(sum(l.macs for l in layers)),
        "bwd_macs": sp.expand(sum(l.bwd_macs for l in layers)),
        "comparisons": sp.expand(sum(l.other for l in layers if l.other_kind == "comparisons")),
        "copies": sp.expand(sum(l.other for l in layers if l.other_kind == "elements copied")),
        "bias_adds": sp.expand(sum(l.other for l in layers if l.other_kind == "bias adds")),
        "input": size["x"],
        "activations": sp.expand(sum(l.elements for l in layers)),
    }
    f["activation_bytes"] = nbytes * f["activations"]
    f["train_peak"] = sp.expand(saved + f["input"] + f["activations"] + f["params"])
    f["train_peak_bytes"] = nbytes * f["train_peak"]
    c = Cost(cfg, g.h, g.w, nbytes, layers, f, g, shapes)
    h = cfg.in_h if isinstance(cfg.in_h, int) else None
    w = cfg.in_w if isinstance(cfg.in_w, int) else None
    return c.at(h, w) if (h, w) != (None, None) else c
