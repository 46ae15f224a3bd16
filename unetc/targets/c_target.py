"""C target: Specialized -> {"<name>.h", "<name>.c", "<name>_c.py"} (+ "<name>_main.c" with a testbench).

Python decides everything numeric: the workspace plan (:mod:`.c_plan`), every loop bound and
index expression (:mod:`.c_steps`, printed by :mod:`.c_sizes`). ``templates/c_*.j2`` only lay
them out: one macro per op kind in ``c_ops.j2``, each op instance becomes one ``static void``
function. Concrete sizes print as literals (the fast path: the kernels unroll); a symbolic
config gives size-polymorphic C whose sizes, offsets and workspace are the same SymPy
expressions printed as C in the run-time sizes h, w, checked against the checker's exact
valid set first (:mod:`.c_poly`).

Batch: every entry point takes n images. Images run in parallel over the batch (one workspace
slot per worker, images in contiguous runs, the remainder one by one) when at least two slots
fit in BATCH_BYTES and a slot is at most SLOT_PAR_BYTES, else one after the other with the
kernels' own threads. Parameter
gradients are summed over the batch: per worker in image order, then the workers in order, then
the remainder (deterministic for a given thread count; the order changes with it).
"""
from __future__ import annotations

import hashlib

from ..errors import EmitError
from ..render import banner, render
from ..specialize import Specialized, var
from . import c_poly
from .c_plan import Phase, plans, stack_above, verify  # noqa: F401  (re-exported for tests)
from .c_sizes import ALIGN, cx, is_const, numel, rup
from .c_steps import HELPERS, RING_BYTES, conv_allocs, kernel, phase_context, signature  # noqa: F401
from .c_testbench import TB_DENSE_PIXELS, poly_testbench_context, testbench_context  # noqa: F401
from .numpy_target import init_bounds

BATCH_SLOTS = 16  # at most this many images in flight (workspace slots) when the batch runs in parallel ...
BATCH_BYTES = 256 << 20  # ... and at most this many bytes of slots: images of a larger slot run one by one
# (parallel kernels). Batch-parallel ran 1.1x (quiet) to 6x (busy cores: no fork/join per kernel) faster
# per image at base_c 32, 128x128, 2 threads (see the C target's report in the issue) ...
SLOT_PAR_BYTES = 32 << 20  # ... for slots up to this many bytes: larger images run one by one (base_c 64,
# 128x128, a 45 MiB slot: 15% slower per image two at a time, each on one core, than one by one
# on both; base_c 32, 128x128, 22 MiB: 0-17% faster; Zen 3, AVX2, 2 threads, quiet)
INT_SAFE = 2**31 - 2**20  # element extents up to this are indexed with int (the margin covers loop
# overshoot like `i + 4 * VL <= n` and window offsets); beyond it the C indexes with ptrdiff_t
MAX_BYTES = 2**46  # the C target refuses a workspace or an array larger than this (64 TiB)
MAX_DIM = 2**31 - 1  # ... a tensor dimension larger than this (enum constants in the kernels)
BUILD_ID_PLACEHOLDER = "@UNETC_BUILD_ID@"


def _ctype(sp: Specialized) -> str:
    return "float" if sp.config.dtype == "float32" else "double"


def _esize(sp: Specialized) -> int:
    """Bytes per element of the config's dtype."""
    return 4 if sp.config.dtype == "float32" else 8


def _numel(shape):
    return numel(shape)


def layout(sp: Specialized) -> tuple[Phase, Phase, object, object]:
    """(forward plan, backward plan, byte offset of the scratch area, workspace bytes of one
    image). The tensors of both plans come first; the conv kernels' temporaries share one
    scratch area after them. The total includes ALIGN bytes of slack so that ``ws`` may have
    any alignment. Concrete sp: ints; symbolic sp: SymPy expressions (stack-above plans)."""
    esize = _esize(sp)
    fwd, bwd = plans(sp, esize)
    if sp.symbolic:  # computed at run time: c_poly.layout_lines
        return fwd, bwd, None, None
    scratch = max([a.used for a in conv_allocs(sp, esize)] + [0])
    scratch_off = rup(max(fwd.peak, bwd.peak))
    return fwd, bwd, scratch_off, scratch_off + scratch * esize + ALIGN


def workspace_bytes(sp: Specialized) -> int:
    """Bytes the caller must pass as ``ws`` for one image (includes ALIGN bytes of slack for
    any alignment); concrete sizes only."""
    if sp.symbolic:
        raise EmitError("the C workspace of a size-polymorphic config depends on the size: bind it with --size")
    return layout(sp)[3]


def grad_slots(sp: Specialized) -> tuple[dict[str, int], int]:
    """Byte offset of each parameter gradient in one gradient buffer (ALIGN-aligned), and its size."""
    offs, total = {}, 0
    for p, shape in sp.params.items():
        offs[p] = total
        total += rup(numel(shape) * _esize(sp))
    return offs, total


# ---------------------------------------------------------------- limits and index type

def check_limits(sp: Specialized) -> None:
    """Raise EmitError (one line naming the limit) when a tensor of sp is beyond the C target's
    limits: MAX_BYTES per array, MAX_DIM per dimension, and a parameter of 2^31 elements or more
    (weight rows are enum constants in WGRAD_OP). Cheap: no workspace plan. Symbolic sizes are
    checked at run time (c_poly)."""
    esize = _esize(sp)
    for t, shape in {**sp.shapes, **sp.params}.items():
        if not all(is_const(d) for d in shape):
            continue
        if max(shape) > MAX_DIM:
            raise EmitError(f"C target limit: tensor {t} {tuple(shape)} has a dimension above 2^31 - 1")
        if numel(shape) * esize > MAX_BYTES:
            raise EmitError(f"C target limit: tensor {t} {tuple(shape)} needs {numel(shape) * esize:,} "
                            f"bytes, more than 2^46")
    for p, shape in sp.params.items():
        if numel(shape) >= 2**31:
            raise EmitError(f"C target limit: parameter {p} {tuple(shape)} has 2^31 elements or more")


def _concrete_shapes(sp: Specialized) -> list:
    return [s for s in (*sp.shapes.values(), *sp.params.values()) if all(is_const(d) for d in s)]


def index_type(sp: Specialized, ws) -> str:
    """The C type of every element index, count and loop variable of the emitted code: ``int``
    when every array (the caller's and the workspace ``ws`` bytes) has at most INT_SAFE elements,
    else ``ptrdiff_t`` (always for symbolic sizes). Raises EmitError when the workspace exceeds
    MAX_BYTES."""
    if sp.symbolic:
        return "ptrdiff_t"
    if ws > MAX_BYTES:
        raise EmitError(f"C target limit: the workspace needs {ws:,} bytes, more than 2^46")
    extent = max([ws // _esize(sp)] + [numel(s) for s in _concrete_shapes(sp)])
    return "int" if extent <= INT_SAFE else "ptrdiff_t"


def _largest_bytes(sp: Specialized, ws) -> int:
    if sp.symbolic:
        return 0
    return max([ws] + [numel(s) * _esize(sp) for s in _concrete_shapes(sp)])


def _ws_literal(ws: int) -> str:
    """C text of a byte count: ``NNNu`` up to UINT32_MAX (an unsigned int on every C99
    target unetc supports), else a size_t cast of an unsigned long long literal."""
    return f"{ws}u" if ws <= 0xFFFFFFFF else f"((size_t){ws}ull)"


# ---------------------------------------------------------------- files

def _public(shape: tuple) -> tuple:
    """IN_SHAPE / OUT_SHAPE of the loader: ints, None for a size read at call time."""
    return tuple(int(d) if is_const(d) else None for d in shape)


def _sha256(*texts: str) -> str:
    return hashlib.sha256(b"\0".join(t.encode("utf-8") for t in texts)).hexdigest()


def _kernels(sp: Specialized, fwd: Phase, bwd: Phase, size_params: str, size_args: list[str], roots) -> tuple:
    """(kernel contexts sorted by name, forward context, backward context)."""
    kernels: dict[str, dict] = {}
    order = {op.output: i for i, op in enumerate(sp.forward_ops + sp.backward_ops)}
    esize = _esize(sp)

    def fn_of(op, inplace, relu=False):
        fn = f"k{order[op.output]:02d}_{op.kind}_{var(op.name)}" + ("_inplace" if inplace else "") \
            + ("_relu" if relu else "")
        if fn not in kernels:
            k = kernel(op, sp, esize, fn, inplace, relu)
            k["params"], k["sizes"] = signature(op, inplace), size_params
            k["what"] = f"{op.kind} {op.name}: {' , '.join(op.inputs)} -> {op.output}"
            kernels[fn] = k
        return fn

    fctx = phase_context(sp, fwd, fn_of, size_args, roots("f", fwd))
    bctx = phase_context(sp, bwd, fn_of, size_args, roots("b", bwd))
    return sorted(kernels.values(), key=lambda k: k["fn"]), fctx, bctx


def files(sp: Specialized, testbench: bool = False, weights: dict | None = None) -> dict[str, str]:
    """The C target's files for sp: header, source, loader (+ testbench; + ``<name>_weights.c``
    and ``<name>_infer.c`` with ``weights``, checked parameters of :mod:`.c_weights`, which the
    header then declares as ``<name>_weights``). The source defines ``<name>_build_id()``, a hash
    of the header and source texts (without the id itself); the loader records it and a hash of
    the exact header and source texts (``SOURCE_SHA256``)."""
    cfg, name, T = sp.config, sp.config.name, _ctype(sp)
    check_limits(sp)
    fwd, bwd, scratch_off, ws = layout(sp)
    index = index_type(sp, ws)
    poly = c_poly.context(sp, fwd, bwd, _esize(sp)) if sp.symbolic else None
    syms = [str(s) for s in sp.symbols.values()]
    size_params = "".join(f"const {index} {s}, " for s in syms)

    def roots(tag, ph):
        if poly:
            return lambda r: f"{tag}o[{ph.order.index(r)}]"
        return lambda r: str(ph.offsets[r])

    kern_list, fctx, bctx = _kernels(sp, fwd, bwd, size_params, syms, roots)
    helpers = {h for h in HELPERS for k in kern_list for s in k.get("steps", []) if h + "(" in s}
    goffs, gbytes = grad_slots(sp)
    pinfo = [(var(p), p, shape) for p, shape in sp.params.items()]
    largest = _largest_bytes(sp, ws)
    common = dict(banner_c=banner(cfg, "//"), banner_py=banner(cfg, "#"), cfg=cfg, name=name,
                  NAME=name.upper(), T=T, I=index, params=sp.params, pnames=[var(p) for p in sp.params],
                  pinfo=pinfo, in_shape=_public(sp.in_shape), out_shape=_public(sp.out_shape),
                  in_dims=tuple(map(str, sp.in_shape)), out_dims=tuple(map(str, sp.out_shape)),
                  in_n=cx(numel(sp.in_shape)), out_n=cx(numel(sp.out_shape)), align=ALIGN, poly=poly,
                  syms=syms, size_params=size_params, size_args="".join(f"{s}, " for s in syms),
                  ws_bytes=ws if poly is None else None, ws_literal=None if poly else _ws_literal(ws),
                  image_literal=None if poly else _ws_literal(ws - ALIGN), scratch_off=scratch_off,
                  stack=max([min(a.stack, RING_BYTES) for a in conv_allocs(sp, _esize(sp))] + [0]),
                  grads=[(var(p), goffs[p], numel(s)) for p, s in sp.params.items()], grad_bytes=gbytes,
                  batch_slots=BATCH_SLOTS, batch_bytes=BATCH_BYTES, slot_par_bytes=SLOT_PAR_BYTES,
                  largest_bytes=largest if largest >= 2**31 else None)
    header = render("c_header.h.j2", **common, weights=weights is not None)
    source = render("c_source.c.j2", kernels=kern_list, helpers=helpers, fwd=fctx, bwd=bctx,
                    build_id=BUILD_ID_PLACEHOLDER, **common)
    build_id = _sha256(header, source)
    source = source.replace(BUILD_ID_PLACEHOLDER, build_id)
    out = {
        f"{name}.h": header,
        f"{name}.c": source,
        f"{name}_c.py": render("c_loader.py.j2", **common, bounds=init_bounds(sp), build_id=build_id,
                               source_sha256=_sha256(header, source),
                               sizes=c_poly.py_size_context(sp) if sp.symbolic else {}),
    }
    if weights is not None:
        from .c_weights import infer_file, weights_file

        out.update([weights_file(sp, weights), infer_file(sp)])
    if testbench:
        tb = poly_testbench_context(sp, weights) if sp.symbolic else testbench_context(sp, weights)
        out[f"{name}_main.c"] = render("c_main.c.j2", **common, **tb)
    return out
