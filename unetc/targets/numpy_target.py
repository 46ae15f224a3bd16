"""NumPy target: Specialized -> {"<name>_numpy.py": source}. Decides every name and constant;
``templates/numpy.py.j2`` lays them out (one macro per op kind in ``numpy_ops.j2``).

Concrete sizes print as literals (the fast path, as before). A symbolic axis prints as SymPy's
expression of its size in the input size H or W (:class:`unetc.sympy_print.PyIntPrinter`); the
module reads H, W from x.shape at call time and first checks them against the checker's exact
valid set (``VALID_SIZES``), explaining a failure as the checker does (``py_sizes.j2``).

Batches: activations are laid out (C, N, H, W) inside the module (:func:`batched_src` adds the
batch size N, read from x at call time, to every activation shape), so that each convolution is
one matmul over the columns of all N images; forward/backward take one image (C, H, W) or a
batch (N, C, H, W) and sum parameter gradients over the batch.
"""
from __future__ import annotations

import math

import sympy

from ..graph import hypotheses
from ..ops import Requirement
from ..render import banner, render
from ..specialize import AXES, Specialized, op_context, var
from ..sympy_print import pycode

_GOT = "\x00got\x00"  # stands for the failing value inside a requirement's message


def init_bound(shape: tuple[int, ...]) -> float:
    """PyTorch's default Conv/ConvTranspose init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = weight.shape[1] * k * k (for weight and bias alike)."""
    return 1.0 / math.sqrt(shape[1] * shape[2] * shape[3])


def init_bounds(sp: Specialized) -> dict[str, str]:
    """Parameter name -> its init bound as Python source text (same for weight and bias)."""
    return {p: repr(init_bound(sp.params[p.rsplit(".", 1)[0] + ".weight"])) for p in sp.params}


def shape_src(shape: tuple) -> tuple[str, ...]:
    """A shape -> the Python source text of each entry (ints as literals, sizes in H, W)."""
    return tuple(pycode(d) for d in shape)


def batched_src(shape: tuple) -> tuple[str, ...]:
    """A (C, H, W) tensor shape -> the source text of its (C, N, H, W) layout in the generated
    kernels (N: the batch size, read from x at call time); other shapes (parameters) unchanged."""
    src = shape_src(shape)
    return (src[0], "N", *src[1:]) if len(src) == 3 else src


def _context(op, sp: Specialized) -> dict:
    """op_context with shapes as Python source text ((C, N, H, W) for activations), plus ``work``: Python source text naming
    the reusable work array for the op's output, or None when the output goes to the caller
    (y, grad_x, gradients) and must be fresh."""
    ctx = op_context(op, sp)
    ctx["out_shape"] = batched_src(ctx["out_shape"])
    ctx["in_shapes"] = [batched_src(s) for s in ctx["in_shapes"]]
    returned = {"y", sp.backward.grad_x, *sp.backward.param_grads.values()}
    ctx["work"] = "None" if op.output in returned else repr(op.output)  # Python source text
    return ctx


def _requirement(r: Requirement) -> dict:
    """A definedness condition as Python source: ``expr`` >= ``bound``, and the message around
    the failing value (the checker's text, as Python string literals)."""
    head, tail = r.message(_GOT).split(_GOT)
    return {"expr": pycode(r.expr), "bound": r.bound, "head": repr(head), "tail": repr(tail)}


def hypothesis_table(sp: Specialized) -> list[dict]:
    """The spec's hypotheses on the symbolic axes, in the checker's order, as Python source:
    ``lhs``/``rhs`` in the axis' size symbol and the requirements the checker solves them with."""
    rows = []
    for eq in hypotheses(sp.graph):
        sym = sp.symbols.get(eq.axis)
        if sym is None:
            continue
        reqs = [r for r in eq.requires if sympy.sympify(r.expr).free_symbols == {sym}]
        rows.append({"name": repr(eq.name), "layer": repr(eq.layer), "axis": repr(eq.axis), "sym": str(sym),
                     "lhs": pycode(eq.lhs), "rhs": pycode(eq.rhs), "reqs": [_requirement(r) for r in reqs]})
    return rows


def _size_context(sp: Specialized) -> dict:
    """Template context of a size-polymorphic module (empty for a concrete one)."""
    if not sp.symbolic:
        return {}
    free = [a for a in AXES if a in sp.symbols]
    valid = {a: sp.valid[a].progressions() if a in sp.symbols else [(sp.in_shape[1 + i], 0)]
             for i, a in enumerate(AXES)}
    return {"valid": {f"\"{a}\"": repr(v) for a, v in valid.items()}, "free_axes": repr(tuple(free)),
            "hyps": hypothesis_table(sp), "in_src": shape_src(sp.in_shape), "out_src": shape_src(sp.out_shape)}


def _public_shape(shape: tuple) -> tuple:
    """IN_SHAPE / OUT_SHAPE: ints, None for a size read at call time."""
    return tuple(d if isinstance(d, int) else None for d in shape)


def files(sp: Specialized, testbench: bool = False) -> dict[str, str]:
    cfg = sp.config
    bounds = init_bounds(sp)
    saved = [t for t in sp.backward.saved() if t != "x"]
    text = render("numpy.py.j2", banner=banner(cfg, "#"), cfg=cfg, params=sp.params, bounds=bounds,
                  in_shape=_public_shape(sp.in_shape), out_shape=_public_shape(sp.out_shape),
                  symbolic=sp.symbolic, sizes=_size_context(sp),
                  forward=[_context(op, sp) for op in sp.forward_ops],
                  backward=[_context(op, sp) for op in sp.backward_ops],
                  saved=[var(t) for t in saved],
                  grads={p: var(t) for p, t in sp.backward.param_grads.items()},
                  grad_x=var(sp.backward.grad_x))
    return {f"{cfg.name}_numpy.py": text}
