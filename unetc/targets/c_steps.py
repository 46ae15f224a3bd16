"""The C text of each op of the C target: which kernel calls compute a conv-like op (and the
scratch they need), the numbers every other op's template macro needs, and the calls of a phase.

Sizes are ints (specialised emit: literals, the kernels unroll) or SymPy expressions in H, W
(size-polymorphic emit), printed by :func:`unetc.targets.c_sizes.cx`; a choice that depends on
sizes (the ring convolution, the tiled col2im / max-pool backward) is made now for concrete
sizes and at run time (:func:`c_sizes.choose`) for symbolic ones. Channel counts, kernels,
strides and paddings are always numbers.
"""
from __future__ import annotations

from . import c_winograd
from .c_plan import Phase
from .c_sizes import choose, cond, cx, is_const, numel, rup, sfloordiv, smax, smin, statements
from ..specialize import Specialized, var

MR = 8  # output channels per register block of CONV_S1 (templates/c_kernels.j2)
VMAX = 64  # bytes of the widest vector the C may use (VBYTES, templates/c_kernels.j2)
RING_BYTES = 65536  # at most this many stack bytes for CONV_S1_RING's ring of padded rows
WPB = 1024  # pixels per block of the outer-product weight gradient (WPB in c_kernels.j2)
WGRAD_OP_MIN_O = 9  # output channels from which the weight gradient may use WGRAD_OP: from
# WG_OP_MIN_O of the compiled ISA (c_kernels.j2: more than one vector of 8 or 16 floats; at one
# vector per tile its 6 broadcasts per FMA row lose to WGRAD_S1 on AVX-512; on AVX2 WGRAD_OP at
# 16 channels took 0.6 vs 1.1 ms at 64x64) ...
WGRAD_OP_MIN_O_ANY_ISA = 17  # ... and on every ISA from this many
WGRAD_OP_MIN_N = 64  # ... and (channel, ki, kj) entries: 9 entries (the first conv) ran 4x slower
# than WGRAD_S1 at base_c 64, 128x128 (254 vs 65 us), its per-block dy transpose dominating
HELPERS = ("kernel_pad", "kernel_im2col", "kernel_col2im_add", "kernel_fill")  # the
# static helper functions of c_kernels.j2: each is laid out only when a kernel calls it (-Wall)
CONV_KINDS = ("conv2d", "conv_transpose2d", "conv2d_grad_input", "conv_transpose2d_grad_input",
              "conv2d_grad_weight", "conv_transpose2d_grad_weight")


def args(*vals) -> str:
    """C argument list of sizes and C texts (str passes through)."""
    return ", ".join(v if isinstance(v, str) else cx(v) for v in vals)


class Scratch:
    """Bump allocator for one op's temporaries in the scratch area (offsets in elements, aligned;
    ints or SymPy sizes); also records the most stack bytes per thread a kernel declares."""

    def __init__(self, esize: int):
        self.esize, self.used, self.stack = esize, 0, 0

    def __call__(self, n) -> str:
        off = self.used
        step = rup(n * self.esize)
        self.used = self.used + (step // self.esize if is_const(step) else step / self.esize)
        return f"scratch + {cx(off)}" if not (is_const(off) and int(off) == 0) else "scratch"


def _packed(o: int, c: int, k: int) -> int:
    return -(-o // MR) * MR * c * k * k


def _padded(alloc: Scratch, src: str, c: int, h, w, q: int) -> tuple[list[str], str]:
    """(steps, C text) of src (c, h, w) zero-padded by q on every side: a kernel_pad into scratch, or src."""
    if not q:
        return [], src
    dst = alloc(c * (h + 2 * q) * (w + 2 * q))
    return [f"kernel_pad({args(c, h, w, q)}, {src}, {dst})"], dst


def _conv_s1(alloc: Scratch, src: str, c: int, o: int, in_hw, out_hw, k: int, q: int,
             w_layout: str, bias: str, relu: bool) -> list[str]:
    """Steps of out (o, out_hw) = bias + stride-1 correlation of src (c, in_hw) zero-padded by q
    with the weights PACK reads as w_layout (its arguments after O, C, K: the array, the first
    entry and the strides), packed into scratch (then relu): Winograd
    (:mod:`.c_winograd`) where its rule holds (at run time for symbolic sizes, and unless
    compiled with -DUNETC_NO_WINOGRAD), else _direct_s1; a Winograd layer also carries the
    direct steps (they run after a non-finite Winograd result), their scratch overlaying
    Winograd's. Winograd's thread slots overlay the packed weights (dead once transformed)."""
    def pack(wp: str) -> str:
        return f"PACK({o}, {c}, {k}, {w_layout}, {wp})"

    def direct() -> list[str]:
        wp = alloc(_packed(o, c, k))
        return [pack(wp)] + _direct_s1(alloc, src, c, o, in_hw, out_hw, k, q, wp, bias, relu)

    def wino_m(m: int) -> list[str]:
        alloc.stack = max(alloc.stack, c_winograd.stack(m, alloc.esize))
        n_u, n_vm = c_winograd.scratch(c, o, out_hw, MR, m)
        u = alloc(n_u)
        wp, vm = _overlaid(alloc, lambda: alloc(_packed(o, c, k)), lambda: alloc(n_vm))
        return [pack(wp), c_winograd.call(c, o, in_hw, out_hw, q, src, wp, bias, relu, u, vm, m)]

    def wino() -> list[str]:  # F(4x4) or F(2x2), by the sizes (at run time for symbolic ones)
        m = c_winograd.tile(out_hw, alloc.esize)
        return wino_m(m) if isinstance(m, int) else _either(alloc, cond(m), lambda: wino_m(4), lambda: wino_m(2))

    return _or_winograd(alloc, c_winograd.use_winograd(c, o, out_hw, k, alloc.esize), wino, direct)


def _overlaid(alloc: Scratch, *makers) -> list:
    """What each maker() returns (steps, or a scratch region), the scratch of each laid out from
    the same offset (they never hold scratch at the same time)."""
    start, results, ends = alloc.used, [], []
    for make in makers:
        alloc.used = start
        results.append(make())
        ends.append(alloc.used)
    alloc.used = smax(*ends)
    return results


def _either(alloc: Scratch, c, then, other) -> list[str]:
    """Steps of then() where the condition c (bool or C text) holds, else of other()."""
    if isinstance(c, bool):
        return then() if c else other()
    return choose(c, *_overlaid(alloc, then, other))


def _or_winograd(alloc: Scratch, use, wino, direct, on: str = "WINO_ON") -> list[str]:
    """Steps of wino() where the Winograd rule ``use`` (bool or SymPy condition) and the C macro
    ``on`` hold (0 with -DUNETC_NO_WINOGRAD), then of direct() unless wino() ran and left its
    flag c_winograd.BAD at 0 (a non-finite result: direct convolution gives each output exactly
    the inputs of its window, as PyTorch does)."""
    use = cond(use)
    if use is False:
        return direct()
    wino_steps, direct_steps = _overlaid(alloc, wino, direct)
    run = f"({on})" if use is True else f"({on} && {use})"
    bad = c_winograd.BAD
    return [f"{{ int {bad} = 1; if {run} {{ {statements(wino_steps)} }} if ({bad}) {{ {statements(direct_steps)} }} }}"]


def _wgrad_conv_s1(alloc: Scratch, c: int, o: int, in_hw, out_hw, k: int, p: int) -> list[str]:
    """Steps of out (o, c, k, k) = the weight gradient of a stride-1 conv with padding p: the
    correlation of x (c, in_hw) zero-padded by p with dy (o, out_hw), by Winograd (WINO2_WGRAD)
    where c_winograd.use_winograd_wgrad holds, else _wgrad_s1 on a padded copy of x."""
    def wino():
        alloc.stack = max(alloc.stack, c_winograd.WGRAD_STACK)
        vb, zb, du = (alloc(n) for n in c_winograd.wgrad_scratch(c, o, out_hw, alloc.esize, VMAX))
        return [c_winograd.wgrad_call(c, o, in_hw, out_hw, p, "x", "dy", vb, zb, du)]

    def direct():
        pad, src = _padded(alloc, "x", c, *in_hw, p)
        return pad + [_wgrad_s1(alloc, c, o, *out_hw, k, src, "dy")]

    return _or_winograd(alloc, c_winograd.use_winograd_wgrad(c, o, out_hw, k, alloc.esize), wino, direct,
                        "WINO_WG_ON")


def _direct_s1(alloc: Scratch, src: str, c: int, o: int, in_hw, out_hw, k: int, q: int,
               wp: str, bias: str, relu: bool) -> list[str]:
    """The direct steps of _conv_s1: CONV_S1_RING where its ring of c*k padded rows fits
    in RING_BYTES, else CONV_S1 on a padded copy."""
    (h, w), (ho, wo) = in_hw, out_hw
    ring = c * k * (wo + k - 1) * alloc.esize
    fits = q > 0 and cond(ring <= RING_BYTES)
    if fits is not False:
        alloc.stack = max(alloc.stack, ring if is_const(ring) else RING_BYTES)
    rows = smax(1, smin(8, sfloordiv(ho, 8)))  # rows per group: 8 groups or more (8 rows measured best at 64x64)
    ring_call = f"CONV_S1_RING({args(c, o, ho, wo, k, q, rows)}, {src}, {wp}, {bias}, {int(relu)}, out)"
    pad_steps = []
    if fits is not True:
        pad_steps, xpad = _padded(alloc, src, c, h, w, q)
        pad_steps.append(f"CONV_S1({args(c, o, ho, wo, k)}, {xpad}, {wp}, {bias}, {int(relu)}, out)")
    return choose(fits, [ring_call], pad_steps)


def _gather(alloc: Scratch, src: str, n_in: int, n_out: int, k: int, s: int, p: int, in_hw, out_hw,
            bias: str, relu: bool) -> list[str]:
    """out (n_out, out_hw) = bias + correlation of src (n_in, in_hw) with a (n_out, n_in, k, k)
    weight at stride s, padding p: im2col, then a 1x1 CONV_S1 (a strided conv, or the input
    gradient of a transposed conv)."""
    kk, (hi, wi), (ho, wo) = k * k, in_hw, out_hw
    cols, wp = alloc(n_in * kk * ho * wo), alloc(_packed(n_out, n_in * kk, 1))
    return [_im2col(n_in, (hi, wi), k, s, p, (ho, wo), src, cols),
            f"PACK({n_out}, {n_in * kk}, 1, w, 0, {n_in * kk}, 1, 0, 0, {wp})",
            f"CONV_S1({args(n_in * kk, n_out, ho, wo)}, 1, {cols}, {wp}, {bias}, {int(relu)}, out)"]


def _scatter(alloc: Scratch, src: str, n_in: int, n_out: int, k: int, s: int, p: int, in_hw, out_hw,
             bias: str) -> list[str]:
    """out (n_out, out_hw) = bias + the adjoint of _gather's correlation applied to src (n_in,
    in_hw), the weight stored (n_in, n_out, k, k): a 1x1 CONV_S1, then col2im (a transposed conv,
    or the input gradient of a strided conv)."""
    kk, (hi, wi), (ho, wo) = k * k, in_hw, out_hw
    wp, cols = alloc(_packed(n_out * kk, n_in, 1)), alloc(n_out * kk * hi * wi)
    return [f"PACK({n_out * kk}, {n_in}, 1, w, 0, 1, {n_out * kk}, 0, 0, {wp})",
            f"CONV_S1({args(n_in, n_out * kk, hi, wi)}, 1, {src}, {wp}, NO_BIAS, 0, {cols})",
            *_col2im(n_out, (ho, wo), k, s, p, (hi, wi), cols, bias)]


def _im2col(c: int, in_hw, k: int, s: int, p: int, out_hw, src: str, cols: str) -> str:
    """C text of cols (c*k*k, out_hw) = the k x k windows of src (c, in_hw) at stride s, padding p."""
    (h, w), (ho, wo) = in_hw, out_hw
    if p == 0:  # every window inside src: the literal-size copy without bounds checks
        return f"IM2COL_P0({args(c, h, w, k, s, ho, wo)}, {src}, {cols})"
    return f"kernel_im2col({args(c, h, w, k, s, p, ho, wo)}, {src}, {cols})"


def _col2im(c: int, out_hw, k: int, s: int, p: int, in_hw, cols: str, bias: str) -> list[str]:
    """Steps of out (c, out_hw) = bias + the scatter-add of cols (c*k*k, in_hw) into k x k windows
    at stride s, padding p (the adjoint of _im2col). Where the windows tile out exactly, one pass
    (the same values: each output gets bias + one column entry either way)."""
    (ho, wo), (hi, wi) = out_hw, in_hw
    tiled = s == k and p == 0 and cond(_eq(ho, hi * k) & _eq(wo, wi * k))
    return choose(tiled, [f"COL2IM_TILED({args(c, k, hi, wi)}, {cols}, {bias}, out)"],
                  [f"kernel_fill({args(c, ho * wo)}, {bias}, out)",
                   f"kernel_col2im_add({args(c, ho, wo, k, s, p, hi, wi)}, {cols}, out)"])


def _eq(a, b):
    """The SymPy relation a == b of two sizes."""
    import sympy

    return sympy.Eq(a, b)


def _weight_grad(alloc: Scratch, x: str, n_x: int, x_hw, dy: str, n_dy: int, dy_hw, k: int, s: int,
                 p: int) -> list[str]:
    """out (n_dy, n_x, k, k) = correlation of dy with the windows of x at stride s, padding p:
    im2col of x, then a 1x1 _wgrad_s1 (strided conv, or transposed conv with x = its dy)."""
    kk, (hx, wx), (hd, wd) = k * k, x_hw, dy_hw
    cols = alloc(n_x * kk * hd * wd)
    return [_im2col(n_x, (hx, wx), k, s, p, (hd, wd), x, cols),
            _wgrad_s1(alloc, n_x * kk, n_dy, hd, wd, 1, cols, dy)]


def _wgrad_s1(alloc: Scratch, c: int, o: int, h, w, k: int, xpad: str, dy: str) -> str:
    """C text of out (o, c, k, k) = stride-1 correlation of xpad (c, h+k-1, w+k-1) with dy (o, h, w):
    the outer-product WGRAD_OP (with its transposed-dy block and accumulator in scratch) from
    WGRAD_OP_MIN_O output channels and WGRAD_OP_MIN_N entries, else the dot-product WGRAD_S1."""
    if o < WGRAD_OP_MIN_O or c * k * k < WGRAD_OP_MIN_N:
        return f"WGRAD_S1({args(c, o, h, w, k)}, {xpad}, {dy}, out)"
    o_pad = rup(o * alloc.esize, VMAX) // alloc.esize  # o rounded up to the widest vector
    dt, dwt = alloc(smin(h, smax(1, _wpb_rows(w))) * w * o_pad), alloc(c * k * k * o_pad)
    op = f"WGRAD_OP({args(c, o, h, w, k)}, {xpad}, {dy}, {dt}, {dwt}, out)"
    if o >= WGRAD_OP_MIN_O_ANY_ISA:
        return op
    return choose(f"({o} >= WG_OP_MIN_O)", [op], [f"WGRAD_S1({args(c, o, h, w, k)}, {xpad}, {dy}, out)"])[0]


def _wpb_rows(w):
    """floor(WPB / w): rows of w pixels per weight-gradient block (at least 1, see WGRAD_OP)."""
    import sympy

    return WPB // int(w) if is_const(w) else sympy.floor(sympy.Integer(WPB) / w)


def conv_steps(op, sp: Specialized, esize: int, relu: bool = False,
               alloc: Scratch | None = None) -> tuple[list[str], object]:
    """The kernel calls (C text) that compute one conv-like op, and the scratch elements they use
    (allocated from ``alloc`` when given). Stride-1 convolutions and their input gradients run
    _conv_s1 on the zero-padded input; stride-1 weight gradients _wgrad_s1 on a padded copy;
    everything else goes through im2col / col2im around a 1x1 CONV_S1 or _wgrad_s1. ``relu``
    (conv2d only) applies the following relu in the same pass."""
    sh, fwd = sp.shapes, op.fwd if hasattr(op, "fwd") else op
    k, s, p, kk = fwd.k, fwd.s, fwd.p, fwd.k * fwd.k
    alloc, steps = alloc or Scratch(esize), []
    if op.kind == "conv2d":
        (c, h, w), (o, ho, wo) = sh[op.inputs[0]], sh[op.output]
        if s == 1:
            steps += _conv_s1(alloc, "x", c, o, (h, w), (ho, wo), k, p, f"w, 0, {c * kk}, {kk}, {k}, 1", "b", relu)
        else:
            steps += _gather(alloc, "x", c, o, k, s, p, (h, w), (ho, wo), "b", relu)
    elif op.kind == "conv2d_grad_input":
        (o, ho, wo), (c, h, w) = sh[op.inputs[0]], sh[op.output]
        if s == 1 and p <= k - 1:  # a stride-1 correlation with the rotated, transposed weight
            rotated = f"w, {(k - 1) * k + k - 1}, {kk}, {c * kk}, {-k}, -1"
            steps += _conv_s1(alloc, "dy", o, c, (ho, wo), (h, w), k, k - 1 - p, rotated, "NO_BIAS", False)
        else:
            steps += _scatter(alloc, "dy", o, c, k, s, p, (ho, wo), (h, w), "NO_BIAS")
    elif op.kind == "conv2d_grad_weight":
        (c, h, w), (o, ho, wo) = sh[op.inputs[0]], sh[op.inputs[1]]
        if s == 1:
            steps += _wgrad_conv_s1(alloc, c, o, (h, w), (ho, wo), k, p)
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
    if is_const(alloc.used) and int(alloc.used) == 0:
        steps.insert(0, "(void)scratch")
    return steps, alloc.used


def conv_allocs(sp: Specialized, esize: int) -> list[Scratch]:
    """One Scratch per conv-like op of sp, after laying out its steps: the scratch elements
    (``used``) and stack bytes (``stack``) each needs."""
    memo = sp.__dict__.setdefault("_c_allocs", {})  # sp is not hashable; its plans never change
    if esize not in memo:
        memo[esize] = []
        for op in sp.forward_ops + sp.backward_ops:
            if op.kind in CONV_KINDS:
                memo[esize].append(Scratch(esize))
                conv_steps(op, sp, esize, alloc=memo[esize][-1])
    return memo[esize]


def kernel(op, sp: Specialized, esize: int, fn: str, inplace: str | None, relu: bool = False) -> dict:
    """The numbers (C text) one op's C function needs (template context ``o``); ``relu``: a
    conv2d that also applies the relu following it."""
    sh = sp.shapes
    ctx = {"kind": op.kind, "fn": fn, "name": op.name, "inplace": inplace is not None, "n": cx(numel(sh[op.output]))}
    fwd = getattr(op, "fwd", None) or op
    k, s = getattr(fwd, "k", 0), getattr(fwd, "s", 0)
    if op.kind in CONV_KINDS:
        ctx["steps"], _ = conv_steps(op, sp, esize, relu)
    elif op.kind in ("maxpool2d", "maxpool2d_grad"):
        c, h, w = sh[op.inputs[0]]
        _, ho, wo = sh[op.output] if op.kind == "maxpool2d" else sh[op.inputs[1]]
        tiled = s == k and cond(_eq(ho * k, h) & _eq(wo * k, w))  # windows cover the input exactly once
        ctx.update(C=cx(c), H=cx(h), W=cx(w), HO=cx(ho), WO=cx(wo), K=cx(k), S=cx(s), HW=cx(h * w),
                   CHW=cx(c * h * w), CHOWO=cx(c * ho * wo), mode=getattr(op, "mode", "pytorch"),
                   tiled=tiled if isinstance(tiled, str) else str(int(tiled)))
    elif op.kind == "bias_grad":
        c, h, w = sh[op.inputs[0]]
        ctx.update(C=cx(c), HW=cx(h * w), CHW=cx(c * h * w))
    elif op.kind == "concat":
        ctx.update(na=cx(numel(sh[op.inputs[0]])), nb=cx(numel(sh[op.inputs[1]])))
    elif op.kind == "slice":
        ctx.update(off=cx(op.lo * numel(sh[op.inputs[0]][1:])))
    return ctx


def signature(op, inplace: str | None) -> list[tuple[str, bool]]:
    """(parameter name, written?) of an op's C function, in call order (after the sizes)."""
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
    """C arguments of one op call in a phase (after the sizes)."""
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
    if kind in ("relu", "relu_grad") and i in ph.inplace:
        return ins
    if kind == "add" and i in ph.inplace:
        t = ph.inplace[i]
        other = op.inputs[1] if t == op.inputs[0] else op.inputs[0]
        return [tensor_ptr(t), tensor_ptr(other)]
    return ins + [out]


def phase_context(sp: Specialized, ph: Phase, fn_of, size_args: list[str], root_off) -> dict:
    """Template context of one phase: its root buffers (``root_off(r)``: C text of the byte
    offset) and its calls (sizes ``size_args`` first)."""
    def ptr(t):
        root, ch = ph.loc(t)
        base = ph.ext[root] if root in ph.ext else f"t_{var(root)}"
        off = ch * numel(sp.shapes[root][1:])
        return base if is_const(off) and int(off) == 0 else f"{base} + {cx(off)}"

    roots = [{"var": f"t_{var(r)}", "off": root_off(r), "tensor": r, "shape": tuple(map(str, sp.shapes[r]))}
             for r in ph.order]
    # a conv2d whose output only feeds an in-place relu applies that relu itself (one pass less)
    fused = {i for i, op in enumerate(ph.ops[:-1]) if op.kind == "conv2d" and ph.ops[i + 1].kind == "relu"
             and ph.ops[i + 1].inputs[0] == op.output and i + 1 in ph.inplace}
    calls = []
    for i, op in enumerate(ph.ops):
        if i in ph.skip or i - 1 in fused:
            continue
        relu = f" + relu {ph.ops[i + 1].output} in place" if i in fused else ""
        calls.append({"fn": fn_of(op, ph.inplace.get(i), i in fused), "args": size_args + _call_args(op, ph, ptr),
                      "what": f"{op.kind} {op.name} -> {op.output}{relu}"
                              + (f" (in place over {ph.inplace[i]})" if i in ph.inplace else "")})
    return {"roots": roots, "calls": calls}
