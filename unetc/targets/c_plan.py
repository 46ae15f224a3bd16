"""The C target's workspace plan: where each intermediate tensor of one image lives in ``ws``.

Decisions (views, in-place ops, lifetimes) are made in *channel units*: a concat writes its
inputs into channel ranges of its output, a slice reads a channel range of its input, and every
region of a buffer is a channel range times the buffer's whole spatial extent. Whether two
regions overlap therefore depends on channel counts only, never on H or W, so one set of
decisions is right at every input size.

Placement (byte offsets): with concrete sizes, first fit (a buffer goes into the lowest gap of
the buffers whose lifetimes overlap its own). With symbolic sizes, *stack above*: the buffers
are placed in a fixed order (first write, then name) and each one at
``max(offset + size)`` over the earlier buffers whose lifetimes overlap its own (0 if none).
Proof that this is valid at every size: for two buffers whose lifetimes overlap, the later one
starts at or above the end of the earlier one, for any non-negative sizes; views and in-place
ops stay inside their buffer's channel ranges (above). The C evaluates exactly these offsets
(:func:`stack_above`), and :func:`verify` (an interval map, cost independent of H x W)
simulates the phase at concrete sizes as a second check (tests run it at many valid sizes).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..specialize import Specialized
from ..graph import Substitution
from .c_sizes import is_const, numel, rup


@dataclass
class Phase:
    """One entry point (forward, or backward = recompute + backward ops): calls and buffers."""

    ops: list  # op objects, in order
    ext: dict[str, str]  # tensor -> C pointer expression of a caller's array
    parent: dict[str, tuple[str, int]] = field(default_factory=dict)  # view -> (tensor, channel offset)
    inplace: dict[int, str] = field(default_factory=dict)  # op index -> input tensor overwritten
    skip: set = field(default_factory=set)  # op indices that are pure views (no code)
    order: list[str] = field(default_factory=list)  # root buffers in placement order
    above: dict[str, list[str]] = field(default_factory=dict)  # root -> earlier roots alive with it
    sizes: dict = field(default_factory=dict)  # root -> bytes (ALIGN multiple; int or SymPy)
    offsets: dict[str, int] = field(default_factory=dict)  # concrete plans: root -> byte offset
    peak: int | None = None  # concrete plans: bytes of the plan

    def loc(self, t: str) -> tuple[str, int]:
        """(root buffer, channel offset in it) of tensor t."""
        off = 0
        while t in self.parent:
            t, o = self.parent[t]
            off += o
        return t, off


def _views(ph: Phase, shapes: dict) -> None:
    """concat writes its inputs in place (channel ranges of its output); slice reads a channel range."""
    for i, op in enumerate(ph.ops):
        if op.kind == "concat" and op.output not in ph.ext and not any(t in ph.ext or t in ph.parent for t in op.inputs):
            a, b = op.inputs
            assert shapes[a][1:] == shapes[b][1:] == shapes[op.output][1:]
            ph.parent[a] = (op.output, 0)
            ph.parent[b] = (op.output, shapes[a][0])
            ph.skip.add(i)
        elif op.kind == "slice" and op.output not in ph.ext:
            assert shapes[op.output][1:] == shapes[op.inputs[0]][1:]
            ph.parent[op.output] = (op.inputs[0], op.lo)
            ph.skip.add(i)


def _inplace(ph: Phase, shapes: dict) -> None:
    """relu overwrites z, relu_grad its dy, add one summand, when nothing later reads it."""
    ops = ph.ops

    def region(t):
        root, off = ph.loc(t)
        return root, off, off + shapes[t][0]

    def overlaps(r1, r2):
        return r1[0] == r2[0] and r1[1] < r2[2] and r2[1] < r1[2]

    for i, op in enumerate(ops):
        z = op.inputs[0]
        if op.kind != "relu" or z in ph.ext or op.output in ph.ext or any(z in o.inputs for o in ops[i + 1:]):
            continue
        if z not in ph.parent:
            ph.parent[z] = (op.output, 0)
        elif op.output not in ph.parent:
            ph.parent[op.output] = (z, 0)
        else:
            continue
        ph.inplace[i] = z
    for i, op in enumerate(ops):
        cands = {"relu_grad": list(op.inputs[1:]), "add": list(op.inputs)}.get(op.kind, [])
        for t in cands:
            if op.output in ph.ext or ph.loc(t)[0] in ph.ext or shapes[t] != shapes[op.output]:
                continue
            r = region(t)
            if any(overlaps(r, region(u)) for later in ops[i + 1:] for u in later.inputs):
                continue
            if op.kind == "add" and overlaps(r, region(op.inputs[1] if t == op.inputs[0] else op.inputs[0])):
                continue
            ph.parent[op.output] = (t, 0)
            ph.inplace[i] = t
            break


def _lifetimes(ph: Phase) -> dict[str, list[int]]:
    """Root buffer -> [first op index that touches it, last one]."""
    life: dict[str, list[int]] = {}
    for i, op in enumerate(ph.ops):
        for t in (*op.inputs, op.output):
            root = ph.loc(t)[0]
            if root in ph.ext:
                continue
            life.setdefault(root, [i, i])[1] = i
    return life


def plan_phase(sp: Specialized, ops: list, ext: dict[str, str], esize: int) -> Phase:
    """The plan of one phase: views, in-place ops, lifetimes and, for concrete sizes, first-fit
    offsets (``offsets``, ``peak``); ``order``/``above`` serve :func:`stack_above`."""
    ph = Phase(ops, ext)
    _views(ph, sp.shapes)
    _inplace(ph, sp.shapes)
    life = _lifetimes(ph)
    ph.order = sorted(life, key=lambda r: (life[r][0], r))
    for n, r in enumerate(ph.order):
        a, b = life[r]
        ph.above[r] = [u for u in ph.order[:n] if life[u][0] <= b and a <= life[u][1]]
        ph.sizes[r] = rup(numel(sp.shapes[r]) * esize)
    if all(is_const(s) for s in ph.sizes.values()):
        _first_fit(ph)
        verify(ph, sp.shapes, ph.offsets, esize)
    return ph


def _first_fit(ph: Phase) -> None:
    ph.peak, placed = 0, []
    for r in ph.order:
        size = ph.sizes[r]
        busy = sorted((ph.offsets[u], ph.offsets[u] + ph.sizes[u]) for u in ph.above[r])
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        ph.offsets[r] = off
        ph.peak = max(ph.peak, off + size)


def stack_above(ph: Phase, sizes: dict[str, int]) -> tuple[dict[str, int], int]:
    """(offsets, peak) of the stack-above placement for concrete buffer sizes (what the
    size-polymorphic C computes at run time, see the module docstring)."""
    offsets, peak = {}, 0
    for r in ph.order:
        offsets[r] = max([offsets[u] + sizes[u] for u in ph.above[r]], default=0)
        peak = max(peak, offsets[r] + sizes[r])
    return offsets, peak


def at_size(sp: Specialized, h: int, w: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's concrete shape of a symbolic sp at input size h x w."""
    f = Substitution({s: v for s, v in zip((sp.symbols.get("in_h"), sp.symbols.get("in_w")), (h, w)) if s is not None})
    return {t: tuple(int(d) for d in f.shape(s)) for t, s in sp.shapes.items()}


def verify_at(ph: Phase, sp: Specialized, h: int, w: int, esize: int) -> int:
    """Check the stack-above plan of a symbolic phase at input size h x w; returns its peak."""
    shapes = at_size(sp, h, w)
    offsets, peak = stack_above(ph, {r: rup(numel(shapes[r]) * esize) for r in ph.order})
    verify(ph, shapes, offsets, esize)
    return peak


class _Memory:
    """Byte intervals -> (tensor, byte offset in the tensor) of the value they hold, as sorted
    disjoint segments (start, end, tensor, offset); unwritten bytes hold nothing."""

    def __init__(self):
        self.segs: list[tuple[int, int, str, int]] = []

    def read(self, lo: int, hi: int) -> list[tuple[int, int, str, int]]:
        """The segments of [lo, hi), clipped, relative to lo, gaps as tensor None."""
        out, pos = [], lo
        i = max(0, bisect.bisect_right(self.segs, (lo, float("inf"))) - 1)
        for s, e, t, o in self.segs[i:]:
            if s >= hi:
                break
            if e <= lo:
                continue
            s2, e2 = max(s, lo), min(e, hi)
            if s2 > pos:
                out.append((pos - lo, s2 - lo, None, 0))
            out.append((s2 - lo, e2 - lo, t, o + s2 - s))
            pos = e2
        if pos < hi:
            out.append((pos - lo, hi - lo, None, 0))
        return _merged(out)

    def write(self, lo: int, hi: int, tensor: str) -> None:
        keep = []
        for s, e, t, o in self.segs:
            if e <= lo or s >= hi:
                keep.append((s, e, t, o))
                continue
            if s < lo:
                keep.append((s, lo, t, o))
            if e > hi:
                keep.append((hi, e, t, o + hi - s))
        keep.append((lo, hi, tensor, 0))
        self.segs = sorted(keep)


def _merged(segs: list) -> list:
    """Adjacent segments of one tensor at consecutive offsets joined into one."""
    out = []
    for s, e, t, o in segs:
        if out and out[-1][2] == t and out[-1][1] == s and (t is None or out[-1][3] + s - out[-1][0] == o):
            out[-1] = (out[-1][0], e, t, out[-1][3])
        else:
            out.append((s, e, t, o))
    return out


def verify(ph: Phase, shapes: dict, offsets: dict[str, int], esize: int) -> None:
    """Simulate the phase on byte intervals: every read must see the value of the tensor it
    names (catches a view, in-place op or buffer reuse that clobbers a live value). Cost grows
    with the number of ops and buffers, not with H x W. A unetc bug raises AssertionError."""
    producer = {op.output: i for i, op in enumerate(ph.ops)}
    nbytes = {t: numel(s) * esize for t, s in shapes.items()}

    def span(t):
        root, ch = ph.loc(t)
        lo = offsets[root] + ch * numel(shapes[root][1:]) * esize
        return lo, lo + nbytes[t]

    def expected(u) -> list:
        i = producer[u]
        op = ph.ops[i]
        if i not in ph.skip:
            return [(0, nbytes[u], u, 0)]
        if op.kind == "slice":
            lo = ph.parent[u][1] * numel(shapes[u][1:]) * esize
            segs = [(max(s, lo), min(e, lo + nbytes[u]), t, o + max(s, lo) - s)
                    for s, e, t, o in expected(op.inputs[0]) if e > lo and s < lo + nbytes[u]]
            return _merged([(s - lo, e - lo, t, o) for s, e, t, o in segs])
        out, pos = [], 0
        for t in op.inputs:
            out += [(s + pos, e + pos, v, o) for s, e, v, o in expected(t)]
            pos += nbytes[t]
        return _merged(out)

    mem = _Memory()
    for i, op in enumerate(ph.ops):
        for u in op.inputs:
            if u in producer and ph.loc(u)[0] not in ph.ext:
                assert mem.read(*span(u)) == expected(u), f"workspace plan: {op.name} reads a clobbered {u}"
        if i not in ph.skip and ph.loc(op.output)[0] not in ph.ext:
            mem.write(*span(op.output), op.output)


def plans(sp: Specialized, esize: int) -> tuple[Phase, Phase]:
    """The forward and backward phases of ``sp`` with their workspace plans."""
    from ..specialize import var

    fwd = plan_phase(sp, list(sp.forward_ops), {"x": "x", "y": "y"}, esize)
    need = set(sp.backward.saved())
    for op in reversed(sp.forward_ops):
        if op.output in need:
            need.update(op.inputs)
    recompute = [op for op in sp.forward_ops if op.output in need]
    ext = {"x": "x", "grad_y": "grad_y", sp.backward.grad_x: "grad_x"}
    ext.update({t: f"g->{var(p)}" for p, t in sp.backward.param_grads.items()})
    bwd = plan_phase(sp, recompute + list(sp.backward_ops), ext, esize)
    return fwd, bwd
