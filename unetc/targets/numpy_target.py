"""NumPy target: Specialized -> {"<name>_numpy.py": source}. Decides every name and constant;
``templates/numpy.py.j2`` lays them out (one macro per op kind in ``numpy_ops.j2``)."""
from __future__ import annotations

import math

from ..render import banner, render
from ..specialize import Specialized, op_context, var


def init_bound(shape: tuple[int, ...]) -> float:
    """PyTorch's default Conv/ConvTranspose init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = weight.shape[1] * k * k (for weight and bias alike)."""
    return 1.0 / math.sqrt(shape[1] * shape[2] * shape[3])


def init_bounds(sp: Specialized) -> dict[str, str]:
    """Parameter name -> its init bound as Python source text (same for weight and bias)."""
    return {p: repr(init_bound(sp.params[p.rsplit(".", 1)[0] + ".weight"])) for p in sp.params}


def _context(op, sp: Specialized) -> dict:
    """op_context plus ``work``: Python source text naming the reusable work array for the op's
    output, or None when the output goes to the caller (y, grad_x, gradients) and must be fresh."""
    ctx = op_context(op, sp)
    returned = {"y", sp.backward.grad_x, *sp.backward.param_grads.values()}
    ctx["work"] = "None" if op.output in returned else repr(op.output)  # Python source text
    return ctx


def files(sp: Specialized, testbench: bool = False) -> dict[str, str]:
    cfg = sp.config
    bounds = init_bounds(sp)
    saved = [t for t in sp.backward.saved() if t != "x"]
    text = render("numpy.py.j2", banner=banner(cfg, "#"), cfg=cfg, params=sp.params, bounds=bounds,
                  in_shape=sp.in_shape, out_shape=sp.out_shape,
                  forward=[_context(op, sp) for op in sp.forward_ops],
                  backward=[_context(op, sp) for op in sp.backward_ops],
                  saved=[var(t) for t in saved],
                  grads={p: var(t) for p, t in sp.backward.param_grads.items()},
                  grad_x=var(sp.backward.grad_x))
    return {f"{cfg.name}_numpy.py": text}
