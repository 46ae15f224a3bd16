"""Stage 5: Config with concrete sizes -> :class:`Specialized` (forward + backward graphs, ints).

Refuses symbolic sizes and configs whose hypotheses fail, so emitted code never sees a bad shape.
"""
from __future__ import annotations

from dataclasses import dataclass

from .backward import Backward, derive
from .checker import Report, check
from .config import Config
from .errors import EmitError, ShapeError
from .graph import Graph, build
from .ops import Op


@dataclass
class Specialized:
    """Everything a target needs: ops with concrete int shapes, parameter layout, names."""

    config: Config
    graph: Graph
    backward: Backward
    shapes: dict[str, tuple[int, ...]]  # every forward and backward tensor
    params: dict[str, tuple[int, ...]]  # PARAM_SHAPES order

    @property
    def forward_ops(self) -> list[Op]:
        return self.graph.ops

    @property
    def backward_ops(self) -> list[Op]:
        return self.backward.ops

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shapes["x"]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shapes["y"]


def specialize(cfg: Config, report: Report | None = None) -> Specialized:
    """Concrete config -> Specialized; EmitError if sizes are symbolic, ShapeError (exit 1, as
    ``check``) if a hypothesis fails.
    ``report`` is the config's check report when the caller already has it."""
    if cfg.symbolic:
        raise EmitError(f"in_h/in_w are symbolic ({cfg.in_h} x {cfg.in_w}); bind them with --size HxW "
                        f"or set integers in the config")
    report = report or check(cfg, workspace=False)  # emitting needs the verdict, not the C plan
    if not report.ok:
        bad = next((c for c in report.constraints if c.status != "holds"), None)
        why = bad.message if bad else "no size satisfies every hypothesis at once"
        raise ShapeError(f"cannot emit for this size: {why}")
    g = build(cfg)
    g.verify()
    bw = derive(g)
    shapes = {t: tuple(int(d) for d in s) for t, s in bw.shapes.items()}
    params = {p: tuple(int(d) for d in s) for p, s in g.params.items()}
    return Specialized(cfg, g, bw, shapes, params)


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
