"""Stage 4: forward Graph -> :class:`Backward` graph, by one VJP rule per op kind (:data:`VJP`).

Walks the forward ops in reverse (the spec's "recompute intermediates, then walk back"). Each rule
takes the forward op and the name of its output's gradient and returns backward ops, each tagged
with what it is the gradient of: a forward tensor (contributions to one tensor are summed by
:class:`Add`, e.g. skip1 = max-pool backward + concat split) or a parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .graph import Graph, Substitution
from .ops import (Add, BiasGrad, Concat, Conv2d, Conv2dGradInput, Conv2dGradWeight, ConvTranspose2d,
                  ConvTranspose2dGradInput, ConvTranspose2dGradWeight, MaxPool2d, MaxPool2dGrad, Op,
                  Relu, ReluGrad, Shape, Slice)

Rule = Callable[[Op, str, Graph], list[tuple[Op, str]]]  # -> [(backward op, "tensor:<t>" | "param:<p>")]


def conv2d_vjp(op: Conv2d, dy: str, g: Graph):
    x = op.inputs[0]
    return [(Conv2dGradWeight(f"{op.name}.weight", (x, dy), f"d_{op.name}.weight", fwd=op), f"param:{op.name}.weight"),
            (BiasGrad(f"{op.name}.bias", (dy,), f"d_{op.name}.bias"), f"param:{op.name}.bias"),
            (Conv2dGradInput(op.name, (dy,), f"d_{x}__{op.name}", fwd=op, in_shape=g.shapes[x]), f"tensor:{x}")]


def conv_transpose2d_vjp(op: ConvTranspose2d, dy: str, g: Graph):
    x = op.inputs[0]
    return [(ConvTranspose2dGradWeight(f"{op.name}.weight", (x, dy), f"d_{op.name}.weight", fwd=op),
             f"param:{op.name}.weight"),
            (BiasGrad(f"{op.name}.bias", (dy,), f"d_{op.name}.bias"), f"param:{op.name}.bias"),
            (ConvTranspose2dGradInput(op.name, (dy,), f"d_{x}__{op.name}", fwd=op, in_shape=g.shapes[x]),
             f"tensor:{x}")]


def relu_vjp(op: Relu, dy: str, g: Graph):
    # the gate [z > 0] is read off the output s = relu(z): s > 0 exactly where z > 0 (also for
    # NaN: both tests are false), so the pre-activation z need not be kept for the backward pass
    z = op.inputs[0]
    return [(ReluGrad(op.name, (op.output, dy), f"d_{z}__{op.name}"), f"tensor:{z}")]


def maxpool2d_vjp(op: MaxPool2d, dy: str, g: Graph):
    x = op.inputs[0]
    return [(MaxPool2dGrad(op.name, (x, dy), f"d_{x}__{op.name}", fwd=op, mode=g.config.maxpool_backward),
             f"tensor:{x}")]


def concat_vjp(op: Concat, dy: str, g: Graph):
    a, b = op.inputs
    ca, cb = g.shapes[a][0], g.shapes[b][0]
    return [(Slice(op.name, (dy,), f"d_{a}__{op.name}", lo=0, hi=ca), f"tensor:{a}"),
            (Slice(op.name, (dy,), f"d_{b}__{op.name}", lo=ca, hi=ca + cb), f"tensor:{b}")]


VJP: dict[str, Rule] = {
    Conv2d.kind: conv2d_vjp,
    ConvTranspose2d.kind: conv_transpose2d_vjp,
    Relu.kind: relu_vjp,
    MaxPool2d.kind: maxpool2d_vjp,
    Concat.kind: concat_vjp,
}


@dataclass
class Backward:
    """Backward ops in execution order; shapes of every tensor they read or write; where the
    gradient of each parameter and of the input ends up."""

    forward: Graph
    ops: list[Op] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)
    param_grads: dict[str, str] = field(default_factory=dict)  # param name -> tensor
    grad_x: str = ""

    def subs(self, values: dict, forward: Graph) -> "Backward":
        """A copy with size symbols replaced (see :meth:`Graph.subs`); ``forward`` is the forward
        graph substituted alike."""
        f = Substitution(values)
        return Backward(forward, [f.op(op) for op in self.ops], {t: f.shape(s) for t, s in self.shapes.items()},
                        dict(self.param_grads), self.grad_x)

    def saved(self) -> list[str]:
        """Forward tensors the backward ops read (what the recompute must keep)."""
        fwd = self.forward.shapes
        return [t for t in fwd if any(t in op.inputs for op in self.ops)]


def derive(g: Graph, grad_output: str = "grad_y") -> Backward:
    """Derive the backward graph of ``g``; every backward op's shape is inferred and checked
    against the forward tensor (or parameter) it is the gradient of."""
    bw = Backward(g, shapes={**g.shapes, grad_output: g.shapes["y"]})
    grad: dict[str, str] = {"y": grad_output}
    params = g.params
    for op in reversed(g.ops):
        for bop, target in VJP[op.kind](op, grad[op.output], g):
            out_shape = bop.infer([bw.shapes[t] for t in bop.inputs])
            kind, name = target.split(":", 1)
            want = params[name] if kind == "param" else g.shapes[name]
            bop.verify([bw.shapes[t] for t in bop.inputs], want)
            bw.ops.append(bop)
            bw.shapes[bop.output] = out_shape
            if kind == "param":
                bw.param_grads[name] = bop.output
            elif name in grad:  # a second contribution: sum them
                add = Add(f"d_{name}", (grad[name], bop.output), f"d_{name}")
                bw.ops.append(add)
                bw.shapes[add.output] = add.infer([bw.shapes[grad[name]], out_shape])
                grad[name] = add.output
            else:
                grad[name] = bop.output
    bw.param_grads = {p: bw.param_grads[p] for p in params}  # PARAM_SHAPES order
    bw.grad_x = grad["x"]
    return bw
