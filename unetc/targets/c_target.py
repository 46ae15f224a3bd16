"""C target: Specialized -> {"<name>.h", "<name>.c", "<name>_c.py"} (+ "<name>_main.c" with a testbench).

Python decides everything numeric: the workspace plan (64-byte aligned offsets, buffers reused
when lifetimes do not overlap, concat/slice as views, in-place ReLU-gate and gradient sums), every
loop bound and every index expression. ``templates/c_*.j2`` only lay them out: one macro per op
kind in ``c_ops.j2``, each op instance becomes one ``static void`` function with literal bounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import EmitError
from ..render import banner, render
from ..specialize import Specialized, var
from .numpy_target import init_bounds

ALIGN = 64


def _round_up(nbytes: int, to: int = ALIGN) -> int:
    """nbytes rounded up to a multiple of ``to``."""
    return -(-nbytes // to) * to


def _numel(shape) -> int:
    return math.prod(shape)


def _ctype(sp: Specialized) -> str:
    return "float" if sp.config.dtype == "float32" else "double"


def _esize(sp: Specialized) -> int:
    """Bytes per element of the config's dtype."""
    return 4 if sp.config.dtype == "float32" else 8


# ---------------------------------------------------------------- workspace plan

@dataclass
class Phase:
    """One entry point (forward, or backward = recompute + backward ops): calls and buffers."""

    ops: list  # op objects, in order
    ext: dict[str, str]  # tensor -> C pointer expression of a caller's array
    parent: dict[str, tuple[str, int]] = field(default_factory=dict)  # view -> (tensor, elem offset)
    inplace: dict[int, str] = field(default_factory=dict)  # op index -> input tensor overwritten
    skip: set = field(default_factory=set)  # op indices that are pure views (no code)
    offsets: dict[str, int] = field(default_factory=dict)  # root tensor -> byte offset
    sizes: dict[str, int] = field(default_factory=dict)  # root tensor -> bytes (rounded to ALIGN)
    peak: int = 0

    def loc(self, t: str) -> tuple[str, int]:
        off = 0
        while t in self.parent:
            t, o = self.parent[t]
            off += o
        return t, off


def plan_phase(sp: Specialized, ops: list, ext: dict[str, str], esize: int) -> Phase:
    ph = Phase(ops, ext)
    shapes = sp.shapes
    # views: concat writes its inputs in place; slice reads a channel range of its input
    for i, op in enumerate(ops):
        if op.kind == "concat" and op.output not in ext and not any(t in ext or t in ph.parent for t in op.inputs):
            a, b = op.inputs
            ph.parent[a] = (op.output, 0)
            ph.parent[b] = (op.output, _numel(shapes[a]))
            ph.skip.add(i)
        elif op.kind == "slice" and op.output not in ext:
            ph.parent[op.output] = (op.inputs[0], op.lo * _numel(shapes[op.inputs[0]][1:]))
            ph.skip.add(i)

    def region(t):
        root, off = ph.loc(t)
        return root, off, off + _numel(shapes[t])

    def overlaps(r1, r2):
        return r1[0] == r2[0] and r1[1] < r2[2] and r2[1] < r1[2]

    # in place: relu overwrites z when nothing later reads z (z then lives where relu(z) goes)
    for i, op in enumerate(ops):
        z = op.inputs[0]
        if op.kind != "relu" or z in ext or op.output in ext or any(z in o.inputs for o in ops[i + 1:]):
            continue
        if z not in ph.parent:
            ph.parent[z] = (op.output, 0)
        elif op.output not in ph.parent:
            ph.parent[op.output] = (z, 0)
        else:
            continue
        ph.inplace[i] = z
    # in place: relu_grad overwrites its dy, add accumulates into one summand, when nothing later reads it
    for i, op in enumerate(ops):
        cands = {"relu_grad": list(op.inputs[1:]), "add": list(op.inputs)}.get(op.kind, [])
        for t in cands:
            if op.output in ext or ph.loc(t)[0] in ext or shapes[t] != shapes[op.output]:
                continue
            r = region(t)
            if any(overlaps(r, region(u)) for later in ops[i + 1:] for u in later.inputs):
                continue
            if op.kind == "add" and overlaps(r, region(op.inputs[1] if t == op.inputs[0] else op.inputs[0])):
                continue
            ph.parent[op.output] = (t, 0)
            ph.inplace[i] = t
            break
    # lifetimes of root buffers: first write .. last read
    life: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for t, is_read in [(u, True) for u in op.inputs] + [(op.output, False)]:
            root = ph.loc(t)[0]
            if root in ext:
                continue
            if root not in life:
                life[root] = [i, i]
            life[root][1] = max(life[root][1], i)
    placed: list[tuple[int, int, int, int]] = []  # (start, end, offset, size)
    for root, (a, b) in sorted(life.items(), key=lambda kv: (kv[1][0], kv[0])):
        size = _round_up(_numel(shapes[root]) * esize)
        busy = sorted((o, o + s) for (a2, b2, o, s) in placed if a2 <= b and a <= b2)
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        placed.append((a, b, off, size))
        ph.offsets[root], ph.sizes[root] = off, size
        ph.peak = max(ph.peak, off + size)
    _verify(ph, sp, esize)
    return ph


def _verify(ph: Phase, sp: Specialized, esize: int) -> None:
    """Simulate the phase element by element: every read must see the value of the tensor it
    names (catches a view, in-place op or buffer reuse that clobbers a live value). A unetc bug
    raises AssertionError."""
    import numpy as np

    ids = {t: n + 1 for n, t in enumerate(sp.shapes)}
    producer = {op.output: i for i, op in enumerate(ph.ops)}
    tensors = {t for op in ph.ops for t in (*op.inputs, op.output) if ph.loc(t)[0] not in ph.ext}
    # every region boundary is a multiple of g elements: simulate cells of g elements (exact)
    g = math.gcd(ph.peak // esize, *(ph.offsets[r] // esize for r in ph.offsets),
                 *(n for t in tensors for n in (ph.loc(t)[1], _numel(sp.shapes[t]))))
    g = max(g, 1)
    mem: dict[str, "np.ndarray"] = {"": np.zeros(ph.peak // esize // g + 1, np.int64)}

    def n_of(t):
        return _numel(sp.shapes[t]) // g

    def cell(t):  # caller arrays (x, y, gradients) are never read back by a later op
        root, off = ph.loc(t)
        return mem[""], (ph.offsets[root] // esize + off) // g

    def expected(u):
        i = producer[u]
        op = ph.ops[i]
        if i not in ph.skip:
            return np.full(n_of(u), ids[u])
        if op.kind == "slice":
            return expected(op.inputs[0])[ph.parent[u][1] // g:ph.parent[u][1] // g + n_of(u)]
        return np.concatenate([expected(t) for t in op.inputs])

    for i, op in enumerate(ph.ops):
        for u in op.inputs:
            if u not in producer or u not in tensors:
                continue
            arr, off = cell(u)
            assert np.array_equal(arr[off:off + n_of(u)], expected(u)), \
                f"workspace plan: {op.name} reads a clobbered {u}"
        if i not in ph.skip and op.output in tensors:
            arr, off = cell(op.output)
            arr[off:off + n_of(op.output)] = ids[op.output]


# ---------------------------------------------------------------- per-op kernel contexts

MR = 8  # output channels per register block of CONV_S1 (templates/c_kernels.j2)
VMAX = 64  # bytes of the widest vector the C may use (VBYTES, templates/c_kernels.j2)
RING_BYTES = 65536  # at most this many stack bytes for CONV_S1_RING's ring of padded rows
WPB = 1024  # pixels per block of the outer-product weight gradient (WPB in c_kernels.j2)
WGRAD_OP_MIN_O = 17  # output channels from which the weight gradient uses WGRAD_OP (more than one
# 64-byte float32 vector: at one vector per tile its 6 broadcasts per FMA row lose to WGRAD_S1) ...
WGRAD_OP_MIN_N = 64  # ... and (channel, ki, kj) entries: 9 entries (the first conv) ran 4x slower
# than WGRAD_S1 at base_c 64, 128x128 (254 vs 65 us), its per-block dy transpose dominating
HELPERS = ("kernel_pad", "kernel_im2col", "kernel_col2im_add", "kernel_fill")  # the
# static helper functions of c_kernels.j2: each is laid out only when a kernel calls it (-Wall)
CONV_KINDS = ("conv2d", "conv_transpose2d", "conv2d_grad_input", "conv_transpose2d_grad_input",
              "conv2d_grad_weight", "conv_transpose2d_grad_weight")


class _Scratch:
    """Bump allocator for one op's temporaries in the scratch area (offsets in elements, aligned);
    also records the most stack bytes per thread a kernel of the op declares (``stack``)."""

    def __init__(self, esize: int):
        self.esize, self.used, self.stack = esize, 0, 0

    def __call__(self, n: int) -> str:
        off = self.used
        self.used += _round_up(n * self.esize) // self.esize
        return f"scratch + {off}" if off else "scratch"


def _packed(o: int, c: int, k: int) -> int:
    return -(-o // MR) * MR * c * k * k


def _padded(alloc: _Scratch, steps: list[str], src: str, c: int, h: int, w: int, q: int) -> str:
    """C text of src (c, h, w) zero-padded by q on every side: a kernel_pad into scratch, or src."""
    if not q:
        return src
    dst = alloc(c * (h + 2 * q) * (w + 2 * q))
    steps.append(f"kernel_pad({c}, {h}, {w}, {q}, {src}, {dst})")
    return dst


def _conv_s1(alloc: _Scratch, steps: list[str], src: str, c: int, o: int, in_hw, out_hw, k: int, q: int,
             wp: str, bias: str, relu: bool) -> str:
    """C text of out (o, out_hw) = bias + stride-1 correlation of src (c, in_hw) zero-padded by q
    with the packed weights wp (then relu): CONV_S1_RING when its ring of c*k padded rows fits in
    RING_BYTES, else CONV_S1 on a padded copy (whose kernel_pad is appended to steps)."""
    (h, w), (ho, wo) = in_hw, out_hw
    ring = c * k * (wo + k - 1) * alloc.esize
    if q > 0 and ring <= RING_BYTES:
        alloc.stack = max(alloc.stack, ring)
        rows = max(1, min(8, ho // 8))  # rows per group: 8 groups or more (8 rows measured best at 64x64)
        return f"CONV_S1_RING({c}, {o}, {ho}, {wo}, {k}, {q}, {rows}, {src}, {wp}, {bias}, {int(relu)}, out)"
    xpad = _padded(alloc, steps, src, c, h, w, q)
    return f"CONV_S1({c}, {o}, {ho}, {wo}, {k}, {xpad}, {wp}, {bias}, {int(relu)}, out)"


def _gather(alloc: _Scratch, src: str, n_in: int, n_out: int, k: int, s: int, p: int, in_hw, out_hw,
            bias: str, relu: bool) -> list[str]:
    """out (n_out, out_hw) = bias + correlation of src (n_in, in_hw) with a (n_out, n_in, k, k)
    weight at stride s, padding p: im2col, then a 1x1 CONV_S1 (a strided conv, or the input
    gradient of a transposed conv)."""
    kk, (hi, wi), (ho, wo) = k * k, in_hw, out_hw
    cols, wp = alloc(n_in * kk * ho * wo), alloc(_packed(n_out, n_in * kk, 1))
    return [_im2col(n_in, (hi, wi), k, s, p, (ho, wo), src, cols),
            f"PACK({n_out}, {n_in * kk}, 1, w, 0, {n_in * kk}, 1, 0, 0, {wp})",
            f"CONV_S1({n_in * kk}, {n_out}, {ho}, {wo}, 1, {cols}, {wp}, {bias}, {int(relu)}, out)"]


def _scatter(alloc: _Scratch, src: str, n_in: int, n_out: int, k: int, s: int, p: int, in_hw, out_hw,
             bias: str) -> list[str]:
    """out (n_out, out_hw) = bias + the adjoint of _gather's correlation applied to src (n_in,
    in_hw), the weight stored (n_in, n_out, k, k): a 1x1 CONV_S1, then col2im (a transposed conv,
    or the input gradient of a strided conv)."""
    kk, (hi, wi), (ho, wo) = k * k, in_hw, out_hw
    wp, cols = alloc(_packed(n_out * kk, n_in, 1)), alloc(n_out * kk * hi * wi)
    return [f"PACK({n_out * kk}, {n_in}, 1, w, 0, 1, {n_out * kk}, 0, 0, {wp})",
            f"CONV_S1({n_in}, {n_out * kk}, {hi}, {wi}, 1, {src}, {wp}, NO_BIAS, 0, {cols})",
            *_col2im(n_out, (ho, wo), k, s, p, (hi, wi), cols, bias)]


def _im2col(c: int, in_hw, k: int, s: int, p: int, out_hw, src: str, cols: str) -> str:
    """C text of cols (c*k*k, out_hw) = the k x k windows of src (c, in_hw) at stride s, padding p."""
    (h, w), (ho, wo) = in_hw, out_hw
    if p == 0:  # every window inside src: the literal-size copy without bounds checks
        return f"IM2COL_P0({c}, {h}, {w}, {k}, {s}, {ho}, {wo}, {src}, {cols})"
    return f"kernel_im2col({c}, {h}, {w}, {k}, {s}, {p}, {ho}, {wo}, {src}, {cols})"


def _col2im(c: int, out_hw, k: int, s: int, p: int, in_hw, cols: str, bias: str) -> list[str]:
    """C text of out (c, out_hw) = bias + the scatter-add of cols (c*k*k, in_hw) into k x k windows
    at stride s, padding p (the adjoint of _im2col)."""
    (ho, wo), (hi, wi) = out_hw, in_hw
    if s == k and p == 0 and (ho, wo) == (hi * k, wi * k):  # windows tile out exactly: one pass
        return [f"COL2IM_TILED({c}, {k}, {hi}, {wi}, {cols}, {bias}, out)"]
    return [f"kernel_fill({c}, {ho * wo}, {bias}, out)",
            f"kernel_col2im_add({c}, {ho}, {wo}, {k}, {s}, {p}, {hi}, {wi}, {cols}, out)"]


def _weight_grad(alloc: _Scratch, x: str, n_x: int, x_hw, dy: str, n_dy: int, dy_hw, k: int, s: int,
                 p: int) -> list[str]:
    """out (n_dy, n_x, k, k) = correlation of dy with the windows of x at stride s, padding p:
    im2col of x, then a 1x1 _wgrad_s1 (strided conv, or transposed conv with x = its dy)."""
    kk, (hx, wx), (hd, wd) = k * k, x_hw, dy_hw
    cols = alloc(n_x * kk * hd * wd)
    return [_im2col(n_x, (hx, wx), k, s, p, (hd, wd), x, cols),
            _wgrad_s1(alloc, n_x * kk, n_dy, hd, wd, 1, cols, dy)]


def _wgrad_s1(alloc: _Scratch, c: int, o: int, h: int, w: int, k: int, xpad: str, dy: str) -> str:
    """C text of out (o, c, k, k) = stride-1 correlation of xpad (c, h+k-1, w+k-1) with dy (o, h, w):
    the outer-product WGRAD_OP (with its transposed-dy block and accumulator in scratch) from
    WGRAD_OP_MIN_O output channels and WGRAD_OP_MIN_N entries, else the dot-product WGRAD_S1."""
    if o < WGRAD_OP_MIN_O or c * k * k < WGRAD_OP_MIN_N:
        return f"WGRAD_S1({c}, {o}, {h}, {w}, {k}, {xpad}, {dy}, out)"
    o_pad = _round_up(o * alloc.esize, VMAX) // alloc.esize  # o rounded up to the widest vector
    dt, dwt = alloc(min(h, max(1, WPB // w)) * w * o_pad), alloc(c * k * k * o_pad)
    return f"WGRAD_OP({c}, {o}, {h}, {w}, {k}, {xpad}, {dy}, {dt}, {dwt}, out)"


def _conv_allocs(sp: Specialized) -> list[_Scratch]:
    """One _Scratch per conv-like op of sp, after laying out its steps: the scratch elements
    (``used``) and stack bytes (``stack``) each needs."""
    allocs = []
    for op in sp.forward_ops + sp.backward_ops:
        if op.kind in CONV_KINDS:
            allocs.append(_Scratch(_esize(sp)))
            conv_steps(op, sp, allocs[-1].esize, alloc=allocs[-1])
    return allocs


def stack_bytes(sp: Specialized) -> int:
    """The most stack bytes per thread any conv kernel of sp declares (CONV_S1_RING's ring)."""
    return max([a.stack for a in _conv_allocs(sp)] + [0])


def conv_steps(op, sp: Specialized, esize: int, relu: bool = False,
               alloc: _Scratch | None = None) -> tuple[list[str], int]:
    """The kernel calls (C text) that compute one conv-like op, and the scratch elements they use
    (allocated from ``alloc`` when given). Stride-1 convolutions and their input gradients run
    _conv_s1 on the zero-padded input (padded rows in a stack ring, or a padded copy); stride-1
    weight gradients _wgrad_s1 on a padded copy; everything else goes through im2col / col2im
    around a 1x1 CONV_S1 or _wgrad_s1. ``relu`` (conv2d only) applies the following relu in the
    same pass."""
    sh, fwd = sp.shapes, op.fwd if hasattr(op, "fwd") else op
    k, s, p, kk = fwd.k, fwd.s, fwd.p, fwd.k * fwd.k
    alloc, steps = alloc or _Scratch(esize), []
    if op.kind == "conv2d":
        (c, h, w), (o, ho, wo) = sh[op.inputs[0]], sh[op.output]
        if s == 1:
            wp = alloc(_packed(o, c, k))
            steps.append(f"PACK({o}, {c}, {k}, w, 0, {c * kk}, {kk}, {k}, 1, {wp})")
            steps.append(_conv_s1(alloc, steps, "x", c, o, (h, w), (ho, wo), k, p, wp, "b", relu))
        else:
            steps += _gather(alloc, "x", c, o, k, s, p, (h, w), (ho, wo), "b", relu)
    elif op.kind == "conv2d_grad_input":
        (o, ho, wo), (c, h, w) = sh[op.inputs[0]], sh[op.output]
        if s == 1 and p <= k - 1:  # a stride-1 correlation with the rotated, transposed weight
            wp = alloc(_packed(c, o, k))
            steps.append(f"PACK({c}, {o}, {k}, w, {(k - 1) * k + k - 1}, {kk}, {c * kk}, {-k}, -1, {wp})")
            steps.append(_conv_s1(alloc, steps, "dy", o, c, (ho, wo), (h, w), k, k - 1 - p, wp, "NO_BIAS", False))
        else:
            steps += _scatter(alloc, "dy", o, c, k, s, p, (ho, wo), (h, w), "NO_BIAS")
    elif op.kind == "conv2d_grad_weight":
        (c, h, w), (o, ho, wo) = sh[op.inputs[0]], sh[op.inputs[1]]
        if s == 1:
            src = _padded(alloc, steps, "x", c, h, w, p)
            steps.append(_wgrad_s1(alloc, c, o, ho, wo, k, src, "dy"))
        else:
            steps += _weight_grad(alloc, "x", c, (h, w), "dy", o, (ho, wo), k, s, p)
    elif op.kind == "conv_transpose2d":
        (ci, d, e), (co, u, v) = sh[op.inputs[0]], sh[op.output]
        steps += _scatter(alloc, "x", ci, co, k, s, p, (d, e), (u, v), "b")
    elif op.kind == "conv_transpose2d_grad_input":
        (co, u, v), (ci, d, e) = sh[op.inputs[0]], sh[op.output]
        steps += _gather(alloc, "dy", co, ci, k, s, p, (u, v), (d, e), "NO_BIAS", False)
    elif op.kind == "conv_transpose2d_grad_weight":
        (ci, d, e), (co, u, v) = sh[op.inputs[0]], sh[op.inputs[1]]
        steps += _weight_grad(alloc, "dy", co, (u, v), "x", ci, (d, e), k, s, p)
    else:
        raise AssertionError(op.kind)
    if not alloc.used:
        steps.insert(0, "(void)scratch")
    return steps, alloc.used


def kernel(op, sp: Specialized, fn: str, inplace: str | None, relu: bool = False) -> dict:
    """The numbers one op's C function needs (template context ``o``); ``relu``: a conv2d that
    also applies the relu following it."""
    sh = sp.shapes
    ctx = {"kind": op.kind, "fn": fn, "name": op.name, "inplace": inplace is not None,
           "out_shape": sh[op.output], "in_shapes": [sh[t] for t in op.inputs], "n": _numel(sh[op.output])}
    fwd = getattr(op, "fwd", None) or op
    k, s = getattr(fwd, "k", 0), getattr(fwd, "s", 0)
    if op.kind in CONV_KINDS:
        ctx["steps"], ctx["scratch"] = conv_steps(op, sp, _esize(sp), relu)
    elif op.kind in ("maxpool2d", "maxpool2d_grad"):
        c, h, w = sh[op.inputs[0]]
        _, ho, wo = sh[op.output] if op.kind == "maxpool2d" else sh[op.inputs[1]]
        ctx.update(C=c, H=h, W=w, HO=ho, WO=wo, K=k, S=s, mode=getattr(op, "mode", "pytorch"),
                   tiled=s == k and (ho * k, wo * k) == (h, w))  # windows cover the input exactly once
    elif op.kind == "bias_grad":
        c, h, w = sh[op.inputs[0]]
        ctx.update(C=c, HW=h * w)
    elif op.kind == "concat":
        ctx.update(na=_numel(sh[op.inputs[0]]), nb=_numel(sh[op.inputs[1]]))
    elif op.kind == "slice":
        ctx.update(off=op.lo * _numel(sh[op.inputs[0]][1:]))
    return ctx


def _signature(op, inplace: str | None) -> list[tuple[str, bool]]:
    """(parameter name, written?) of an op's C function, in call order."""
    kind = op.kind
    if kind in ("conv2d", "conv_transpose2d"):
        return [("x", False), ("w", False), ("b", False), ("out", True), ("scratch", True)]
    if kind in ("conv2d_grad_input", "conv_transpose2d_grad_input"):
        return [("dy", False), ("w", False), ("out", True), ("scratch", True)]
    if kind in ("conv2d_grad_weight", "conv_transpose2d_grad_weight"):
        return [("x", False), ("dy", False), ("out", True), ("scratch", True)]
    if kind == "relu" and inplace:
        return [("io", True)]
    if kind in ("relu", "maxpool2d", "bias_grad", "slice"):
        return [("in", False), ("out", True)]
    if kind in ("concat", "maxpool2d_grad"):
        return [("a", False), ("bb", False), ("out", True)]
    if kind == "relu_grad":
        return [("s", False), ("d", True)] if inplace else [("s", False), ("d", False), ("out", True)]
    if kind == "add":
        return [("acc", True), ("other", False)] if inplace else [("a", False), ("bb", False), ("out", True)]
    raise AssertionError(kind)


def _call_args(op, ph: Phase, tensor_ptr) -> list[str]:
    """C arguments of one op call in a phase."""
    i = ph.ops.index(op)
    ins = [tensor_ptr(t) for t in op.inputs]
    out = tensor_ptr(op.output)
    layer = (getattr(op, "fwd", None) or op).name
    kind = op.kind
    if kind in ("conv2d", "conv_transpose2d"):
        return [ins[0], f"p->{var(layer)}_weight", f"p->{var(layer)}_bias", out, "scratch"]
    if kind in ("conv2d_grad_input", "conv_transpose2d_grad_input"):
        return [ins[0], f"p->{var(layer)}_weight", out, "scratch"]
    if kind in ("conv2d_grad_weight", "conv_transpose2d_grad_weight"):
        return ins + [out, "scratch"]  # (x, dy)
    if kind == "relu" and i in ph.inplace:
        return ins
    if kind == "relu_grad" and i in ph.inplace:
        return ins
    if kind == "add" and i in ph.inplace:
        t = ph.inplace[i]
        other = op.inputs[1] if t == op.inputs[0] else op.inputs[0]
        return [tensor_ptr(t), tensor_ptr(other)]
    return ins + [out]


def _phase_context(sp: Specialized, ph: Phase, fn_of) -> dict:
    def ptr(t):
        root, off = ph.loc(t)
        base = ph.ext[root] if root in ph.ext else f"t_{var(root)}"
        return base if off == 0 else f"{base} + {off}"

    roots = [{"var": f"t_{var(r)}", "off": ph.offsets[r], "bytes": ph.sizes[r], "tensor": r,
              "shape": sp.shapes[r]} for r in sorted(ph.offsets, key=lambda r: (ph.offsets[r], r))]
    # a conv2d whose output only feeds an in-place relu applies that relu itself (one pass less)
    fused = {i for i, op in enumerate(ph.ops[:-1]) if op.kind == "conv2d" and ph.ops[i + 1].kind == "relu"
             and ph.ops[i + 1].inputs[0] == op.output and i + 1 in ph.inplace}
    calls = []
    for i, op in enumerate(ph.ops):
        if i in ph.skip or i - 1 in fused:
            continue
        relu = f" + relu {ph.ops[i + 1].output} in place" if i in fused else ""
        calls.append({"fn": fn_of(op, ph.inplace.get(i), i in fused), "args": _call_args(op, ph, ptr),
                      "what": f"{op.kind} {op.name} -> {op.output}{relu}"
                              + (f" (in place over {ph.inplace[i]})" if i in ph.inplace else "")})
    return {"roots": roots, "calls": calls, "peak": ph.peak}


def plans(sp: Specialized) -> tuple[Phase, Phase]:
    """The forward and backward phases of ``sp`` with their workspace plans."""
    esize = _esize(sp)
    fwd = plan_phase(sp, list(sp.forward_ops), {"x": "x", "y": "y"}, esize)
    saved = set(sp.backward.saved())
    need = set(saved)
    for op in reversed(sp.forward_ops):
        if op.output in need:
            need.update(op.inputs)
    recompute = [op for op in sp.forward_ops if op.output in need]
    ext = {"x": "x", "grad_y": "grad_y", sp.backward.grad_x: "grad_x"}
    ext.update({t: f"g->{var(p)}" for p, t in sp.backward.param_grads.items()})
    bwd = plan_phase(sp, recompute + list(sp.backward_ops), ext, esize)
    return fwd, bwd


def layout(sp: Specialized) -> tuple[Phase, Phase, int, int]:
    """(forward plan, backward plan, byte offset of the scratch area, workspace bytes). The tensors
    of both plans come first; the conv kernels' temporaries share one scratch area after them.
    The total includes ALIGN bytes of slack so that ``ws`` may have any alignment."""
    esize = _esize(sp)
    fwd, bwd = plans(sp)
    scratch_off = _round_up(max(fwd.peak, bwd.peak))
    scratch = max([a.used for a in _conv_allocs(sp)] + [0])
    return fwd, bwd, scratch_off, scratch_off + scratch * esize + ALIGN


def workspace_bytes(sp: Specialized) -> int:
    """Bytes the caller must pass as ``ws`` (includes ALIGN bytes of slack for any alignment)."""
    return layout(sp)[3]


# ---------------------------------------------------------------- limits and index type

INT_SAFE = 2**31 - 2**20  # element extents up to this are indexed with int (the margin covers loop
# overshoot like `i + 4 * VL <= n` and window offsets); beyond it the C indexes with ptrdiff_t
MAX_BYTES = 2**46  # the C target refuses a workspace or an array larger than this (64 TiB)
MAX_DIM = 2**31 - 1  # ... a tensor dimension larger than this (enum constants in the kernels)


def check_limits(sp: Specialized) -> None:
    """Raise EmitError (one line naming the limit) when a tensor of sp is beyond the C target's
    limits: MAX_BYTES per array, MAX_DIM per dimension, and a parameter of 2^31 elements or more
    (weight rows are enum constants in WGRAD_OP). Cheap: no workspace plan."""
    esize = _esize(sp)
    for t, shape in {**sp.shapes, **sp.params}.items():
        if max(shape) > MAX_DIM:
            raise EmitError(f"C target limit: tensor {t} {tuple(shape)} has a dimension above 2^31 - 1")
        if _numel(shape) * esize > MAX_BYTES:
            raise EmitError(f"C target limit: tensor {t} {tuple(shape)} needs {_numel(shape) * esize:,} "
                            f"bytes, more than 2^46")
    for p, shape in sp.params.items():
        if _numel(shape) >= 2**31:
            raise EmitError(f"C target limit: parameter {p} {tuple(shape)} has 2^31 elements or more")


def index_type(sp: Specialized, ws: int) -> str:
    """The C type of every element index, count and loop variable of the emitted code: ``int``
    when every array (the caller's and the workspace ``ws`` bytes) has at most INT_SAFE elements,
    else ``ptrdiff_t``. Raises EmitError when the workspace exceeds MAX_BYTES."""
    if ws > MAX_BYTES:
        raise EmitError(f"C target limit: the workspace needs {ws:,} bytes, more than 2^46")
    extent = max([ws // _esize(sp)] + [_numel(s) for s in (*sp.shapes.values(), *sp.params.values())])
    return "int" if extent <= INT_SAFE else "ptrdiff_t"


def _largest_bytes(sp: Specialized, ws: int) -> int:
    return max([ws] + [_numel(s) * _esize(sp) for s in (*sp.shapes.values(), *sp.params.values())])


def _ws_literal(ws: int) -> str:
    """C text of the workspace size: ``NNNu`` up to UINT32_MAX (an unsigned int on every C99
    target unetc supports), else a size_t cast of an unsigned long long literal."""
    return f"{ws}u" if ws <= 0xFFFFFFFF else f"((size_t){ws}ull)"


# ---------------------------------------------------------------- files

BUILD_ID_PLACEHOLDER = "@UNETC_BUILD_ID@"


def _sha256(*texts: str) -> str:
    import hashlib

    return hashlib.sha256(b"\0".join(t.encode("utf-8") for t in texts)).hexdigest()


def files(sp: Specialized, testbench: bool = False) -> dict[str, str]:
    """The C target's files for sp: header, source, loader (+ testbench). The source defines
    ``<name>_build_id()``, a hash of the header and source texts (without the id itself); the
    loader records it and a hash of the exact header and source texts (``SOURCE_SHA256``)."""
    cfg = sp.config
    name = cfg.name
    T = _ctype(sp)
    check_limits(sp)
    fwd, bwd, scratch_off, ws = layout(sp)
    index = index_type(sp, ws)

    kernels: dict[str, dict] = {}
    order = {op.output: i for i, op in enumerate(sp.forward_ops + sp.backward_ops)}

    def fn_of(op, inplace, relu=False):
        idx = order[op.output]
        fn = f"k{idx:02d}_{op.kind}_{var(op.name)}" + ("_inplace" if inplace else "") + ("_relu" if relu else "")
        if fn not in kernels:
            k = kernel(op, sp, fn, inplace, relu)
            k["params"] = _signature(op, inplace)
            k["what"] = f"{op.kind} {op.name}: {' , '.join(op.inputs)} -> {op.output}"
            kernels[fn] = k
        return fn

    fctx = _phase_context(sp, fwd, fn_of)
    bctx = _phase_context(sp, bwd, fn_of)
    kern_list = sorted(kernels.values(), key=lambda k: k["fn"])
    helpers = {h for h in HELPERS for k in kern_list for s in k.get("steps", []) if s.startswith(h + "(")}
    pnames = [var(p) for p in sp.params]
    pinfo = [(var(p), p, shape) for p, shape in sp.params.items()]
    largest = _largest_bytes(sp, ws)
    common = dict(banner_c=banner(cfg, "//"), banner_py=banner(cfg, "#"), cfg=cfg, name=name,
                  NAME=name.upper(), T=T, I=index, params=sp.params, pnames=pnames, pinfo=pinfo,
                  in_shape=sp.in_shape, out_shape=sp.out_shape, ws_bytes=ws, ws_literal=_ws_literal(ws),
                  align=ALIGN, scratch_off=scratch_off, stack=stack_bytes(sp),
                  largest_bytes=largest if largest >= 2**31 else None)
    header = render("c_header.h.j2", **common)
    source = render("c_source.c.j2", kernels=kern_list, helpers=helpers, fwd=fctx, bwd=bctx,
                    build_id=BUILD_ID_PLACEHOLDER, **common)
    build_id = _sha256(header, source)
    source = source.replace(BUILD_ID_PLACEHOLDER, build_id)
    out = {
        f"{name}.h": header,
        f"{name}.c": source,
        f"{name}_c.py": render("c_loader.py.j2", **common, bounds=init_bounds(sp), build_id=build_id,
                               source_sha256=_sha256(header, source)),
    }
    if testbench:
        out[f"{name}_main.c"] = render("c_main.c.j2", **common, **_testbench_context(sp))
    return out


# ---------------------------------------------------------------- testbench

TB_SAMPLES = 32  # sampled values per checked tensor (plus 4 checksums)
TB_MIX_SEED = 99  # seed of the +-1 weights of the mixed checksum
TB_DENSE_PIXELS = 4096  # inputs up to this many pixels: dense data, the NumPy reference on the whole image
TB_PATCH = 8  # larger inputs: x and grad_y nonzero in the top-left TB_PATCH x TB_PATCH pixels only


def _tb_hash(idx, seed: int):
    """uint64 array of c_main.c.j2's tb_hash(i, seed) for the indices idx (a 32-bit integer hash)."""
    import numpy as np

    m = np.uint64(0xFFFFFFFF)
    x = (np.asarray(idx, dtype=np.uint64) + np.uint64(seed * 0x9E3779B9 & 0xFFFFFFFF)) & m
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & m
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & m
    return x ^ (x >> np.uint64(16))


def _tb_values(idx, seed: int, e: int):
    """float64 array of c_main.c.j2's tb_fill at the indices idx: k * 2^-(23 + e) with k = tb_hash
    >> 8 - 2^23, exact in float32 and float64."""
    import numpy as np

    k = (_tb_hash(idx, seed) >> np.uint64(8)).astype(np.int64) - 2**23
    return np.ldexp(k.astype(np.float64), -(23 + e))


def _flat(shape, h: int, w: int):
    """Flat indices in an array of ``shape`` (C, H, W) of its positions (c, i < h, j < w), as (C, h, w)."""
    import numpy as np

    c, H, W = shape
    return (np.arange(c)[:, None, None] * H + np.arange(h)[None, :, None]) * W + np.arange(w)[None, None, :]


class _Ref:
    """The float64 NumPy target of sp's config at input size (h, w) <= sp's, on the testbench's
    data restricted to that corner (x and grad_y nonzero below ``patch``; biases zero unless
    dense): ``run()`` -> {tensor label: (array, flat indices of its values in the full tensor)}."""

    def __init__(self, sp: Specialized, patch: int, dense: bool):
        self.sp, self.patch, self.dense = sp, patch, dense
        bounds = {p: float(b) for p, b in init_bounds(sp).items()}
        self.inputs = [("x", sp.in_shape, 1, 0), ("grad_y", sp.out_shape, 2, 0)]
        self.inputs += [(f"param_{var(p)}", shape, 3 + i, max(0, math.floor(-math.log2(bounds[p]))))
                        for i, (p, shape) in enumerate(sp.params.items()) if dense or p.endswith(".weight")]

    def run(self, h: int, w: int) -> dict:
        import dataclasses

        import numpy as np

        from ..specialize import specialize
        from .numpy_target import files as np_files

        cfg = dataclasses.replace(self.sp.config, dtype="float64")
        if (h, w) != tuple(self.sp.in_shape[1:]):
            cfg = cfg.with_sizes(h, w)
        csp = specialize(cfg)
        (src,) = np_files(csp, False).values()
        ns: dict = {"__name__": f"_unetc_tb_{cfg.name}"}
        exec(compile(src, f"<{cfg.name}_numpy.py>", "exec"), ns)
        given = {nm: (shape, seed, e) for nm, shape, seed, e in self.inputs}
        vals = {}
        for nm, full in (("x", self.sp.in_shape), ("grad_y", self.sp.out_shape)):
            _, seed, e = given[nm]
            c, ch, cw = (csp.in_shape if nm == "x" else csp.out_shape)
            a = np.zeros((c, ch, cw))
            q = min(self.patch, ch), min(self.patch, cw)
            a[:, :q[0], :q[1]] = _tb_values(_flat(full, *q), seed, e)
            vals[nm] = a
        params = {}
        for p, shape in self.sp.params.items():
            nm = f"param_{var(p)}"
            params[p] = _tb_values(np.arange(_numel(shape)), *given[nm][1:]).reshape(shape) if nm in given \
                else np.zeros(shape)
        y = ns["forward"](params, vals["x"])
        grads, gx = ns["backward"](params, vals["x"], vals["grad_y"])
        out = {"y": (y, _flat(self.sp.out_shape, *y.shape[1:])), "grad_x": (gx, _flat(self.sp.in_shape, *gx.shape[1:]))}
        out.update({p: (g, np.arange(g.size).reshape(g.shape)) for p, g in grads.items()})
        return out


def _same(a: dict, b: dict) -> bool:
    """True when the references a (smaller crop) and b agree: same values where both have them
    and b zero elsewhere (relative 1e-12)."""
    import numpy as np

    for k, (va, ia) in a.items():
        vb, ib = b[k]
        full = dict(zip(ib.reshape(-1).tolist(), vb.reshape(-1).tolist()))
        got = np.array([full[i] for i in ia.reshape(-1).tolist()])
        rest = np.abs(vb).sum() - np.abs(got).sum()
        tol = 1e-12 * max(np.abs(vb).max(initial=0.0), 1e-300)
        if np.abs(got - va.reshape(-1)).max(initial=0.0) > tol or rest > tol * vb.size:
            return False
    return True


def _corner(sp: Specialized, start: int):
    """The smallest valid input size (h, w) of sp's config with h, w >= start (or sp's own),
    congruent to sp's size modulo the lcm of the strides (so every layer's grid starts alike)."""
    from ..errors import UnetcError
    from ..specialize import specialize

    cfg = sp.config
    H, W = sp.in_shape[1:]
    step = math.lcm(cfg.pool_stride, cfg.up_stride, cfg.conv_stride, cfg.head_stride, cfg.pool_kernel)
    for mult in (1, 2, 3, 4):
        L = step * mult
        h, w = H - max(0, (H - start) // L) * L, W - max(0, (W - start) // L) * L
        try:
            specialize(cfg.with_sizes(h, w))
        except UnetcError:
            continue
        return h, w
    return H, W


def _reference(sp: Specialized) -> tuple["_Ref", dict]:
    """The testbench's reference: for small inputs the whole image with dense data; else x and
    grad_y nonzero in a top-left patch and biases zero, so every nonzero value of the network lies
    in a corner: computed on the smallest corner crop whose result a crop larger by a margin
    confirms (doubling the margin until they agree, at worst the whole image)."""
    H, W = sp.in_shape[1:]
    if H * W <= TB_DENSE_PIXELS:
        ref = _Ref(sp, max(H, W), True)
        return ref, ref.run(H, W)
    ref, margin = _Ref(sp, TB_PATCH, False), 16
    while True:
        small = _corner(sp, TB_PATCH + margin)
        if small == (H, W):
            return ref, ref.run(H, W)
        large = _corner(sp, max(small) + margin)
        a = ref.run(*small)
        if large != small and _same(a, ref.run(*large)):
            return ref, a
        margin *= 2


def _tb_summary(a, at, n: int) -> tuple[list[float], list[int]]:
    """What the testbench checks of an expected tensor of n elements whose nonzero values are a,
    at the flat indices ``at``: [max|.|, sum, sum of |.|, the sum with tb_hash(i, TB_MIX_SEED) & 1
    signs, TB_SAMPLES sampled values], and the sampled indices (half spread over ``at``, half
    over the whole tensor)."""
    import numpy as np

    a, at = np.asarray(a, np.float64).reshape(-1), np.asarray(at).reshape(-1)
    sign = 1.0 - 2.0 * (_tb_hash(at, TB_MIX_SEED) & np.uint64(1)).astype(np.float64)
    half = TB_SAMPLES // 2
    picks = [int(at[a.size * (2 * k + 1) // (2 * half)]) for k in range(half)]
    picks += [n * (2 * k + 1) // (2 * half) for k in range(TB_SAMPLES - half)]
    where = dict(zip(at.tolist(), a.tolist()))
    return ([float(np.abs(a).max(initial=0.0)), float(a.sum()), float(np.abs(a).sum()), float((a * sign).sum())]
            + [where.get(i, 0.0) for i in picks]), picks


def _testbench_context(sp: Specialized) -> dict:
    """Template context of c_main.c.j2: tb_fill calls (x, grad_y in their patch, parameters at about
    their init bound) and, per output, _tb_summary of the float64 NumPy reference."""
    ref, out = _reference(sp)
    checks = [("y", "y", sp.out_shape), ("grad_x", "grad_x", sp.in_shape)]
    checks += [(p, f"d_{var(p)}", shape) for p, shape in sp.params.items()]
    ctx_checks = []
    for what, v, shape in checks:
        want, at = _tb_summary(*out[what], _numel(shape))
        ctx_checks.append({"what": what, "var": v, "n": _numel(shape), "want": ", ".join(x.hex() for x in want),
                           "at": ", ".join(map(str, at))})
    return {"tol": "1e-10" if _ctype(sp) == "double" else "1e-4", "samples": TB_SAMPLES,
            "mix_seed": TB_MIX_SEED, "patch": ref.patch,
            "inputs": [{"var": nm, "n": _numel(shape), "seed": seed, "scale": float(2.0 ** -(23 + e)).hex(),
                        "shape": shape} for nm, shape, seed, e in ref.inputs],
            "checks": ctx_checks}
