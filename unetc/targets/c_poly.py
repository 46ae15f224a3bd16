"""Size-polymorphic C: the run-time layout and size checks of a symbolic config.

``<name>_layout(H, W, fo, bo, lay)`` computes, at run time, the byte offsets of both plans'
buffers by the stack-above rule of :mod:`.c_plan` (valid for every size, see there), the
scratch area after them and one image's workspace, every size printed from the same SymPy
expressions the plan and the kernels use. ``<name>_check_sizes(h, w)`` tests the checker's
exact valid set (its progressions, as data) and names the first failing hypothesis in the
checker's order, as the Python message does; sizes whose workspace could pass MAX_BYTES are
refused (an overflow guard, see :func:`max_pixels`).
"""
from __future__ import annotations

from ..graph import Substitution
from ..specialize import AXES, Specialized
from .c_plan import Phase, stack_above
from .c_sizes import cx, numel, rup
from .c_steps import conv_allocs

MAX_BYTES = 2**46  # as c_target.MAX_BYTES: the largest workspace the C accepts
FIXED_ERRORS = [("OK", "no error"), ("ERR_NULL", "a required pointer argument (or a member of p / g) is NULL"),
                ("ERR_BATCH", "the batch size n must be >= 1")]


def _plan_lines(tag: str, ph: Phase) -> list[str]:
    """C statements: {tag}s[k] = bytes, {tag}o[k] = offset of the k-th root; {tag}peak."""
    idx = {r: k for k, r in enumerate(ph.order)}
    lines = [f"{tag}s[{k}] = (size_t){cx(ph.sizes[r])}; /* {r} */" for k, r in enumerate(ph.order)]
    for k, r in enumerate(ph.order):
        lines.append(f"{tag}o[{k}] = 0;")
        lines += [f"{tag}o[{k}] = unetc_zmax({tag}o[{k}], {tag}o[{idx[u]}] + {tag}s[{idx[u]}]);" for u in ph.above[r]]
        lines.append(f"{tag}peak = unetc_zmax({tag}peak, {tag}o[{k}] + {tag}s[{k}]);")
    return lines


def _scratch_exprs(sp: Specialized, esize: int) -> list:
    """Bytes of scratch each conv-like op needs (SymPy or int)."""
    return [a.used * esize for a in conv_allocs(sp, esize)]


def layout_lines(sp: Specialized, fwd: Phase, bwd: Phase, esize: int) -> list[str]:
    """Body of <name>_layout: fo/bo offsets, lay[0] = scratch offset, lay[1] = one image's bytes."""
    lines = [f"size_t fs[{len(fwd.order)}], bs[{len(bwd.order)}], fpeak = 0, bpeak = 0, scratch = 0;"]
    lines += _plan_lines("f", fwd) + _plan_lines("b", bwd)
    lines += [f"scratch = unetc_zmax(scratch, (size_t){cx(e)});" for e in _scratch_exprs(sp, esize)]
    lines += ["lay[0] = unetc_zmax(fpeak, bpeak);", f"lay[0] = (lay[0] + {rup(1) - 1}) / {rup(1)} * {rup(1)};",
              "lay[1] = lay[0] + scratch;"]
    return lines


def image_bytes_at(sp: Specialized, fwd: Phase, bwd: Phase, esize: int, h: int, w: int) -> int:
    """One image's workspace (without the ALIGN slack) at input size h x w, as <name>_layout
    computes it."""
    f = Substitution({s: v for a, v in zip(AXES, (h, w)) if (s := sp.symbols.get(a)) is not None})
    peaks = []
    for ph in (fwd, bwd):
        peaks.append(stack_above(ph, {r: int(f(ph.sizes[r])) for r in ph.order})[1])
    scratch = max([int(f(e)) for e in _scratch_exprs(sp, esize)] + [0])
    return rup(max(peaks)) + scratch


def max_pixels(sp: Specialized, fwd: Phase, bwd: Phase, esize: int) -> int:
    """The most pixels h*w the C accepts: MAX_BYTES / (twice the largest bytes per pixel of one
    image at the smallest and at a large valid size; sizes also have linear and constant terms,
    which weigh most at the smallest size)."""
    probes = []
    for big in (1, 1024):
        hw = []
        for i, a in enumerate(AXES):
            if a not in sp.symbols:
                hw.append(int(sp.in_shape[1 + i]))
                continue
            v = sp.valid[a]
            hw.append(v.first(1)[0] if big == 1 else (v.nearest(big)[1] or v.nearest(big)[0]))
        probes.append(image_bytes_at(sp, fwd, bwd, esize, *hw) / (hw[0] * hw[1]))
    return max(1, int(MAX_BYTES // (2 * max(probes) + 64)))


def errors(sp: Specialized) -> list[tuple[str, str]]:
    """(C macro suffix, message) of every error code, code = list index."""
    out = list(FIXED_ERRORS) + [("ERR_TOO_LARGE", "the input size is too large for this build (workspace above 2^46 bytes)")]
    for i, a in enumerate(AXES):
        if a in sp.symbols:
            out.append((f"ERR_{a.upper()}", f"{a} is not a valid size (must be >= 1, in VALID_SIZES)"))
        else:
            out.append((f"ERR_{a.upper()}", f"{a} must be {sp.in_shape[1 + i]} (emitted for that size)"))
    for c in sp.report.constraints:
        if c.axis in sp.symbols:
            out.append((f"ERR_{c.name.upper()}", f"{c.axis} fails {c.name} ({c.layer})"))
    return out


def context(sp: Specialized, fwd: Phase, bwd: Phase, esize: int) -> dict:
    """Template context of the polymorphic parts of the C source (``poly``)."""
    return {"layout": layout_lines(sp, fwd, bwd, esize), "nf": len(fwd.order), "nb": len(bwd.order),
            "errors": errors(sp), "max_pixels": max_pixels(sp, fwd, bwd, esize), **context_checks(sp)}


def context_checks(sp: Specialized) -> dict:
    """The size checks: per axis its valid progressions and error code (``axes``), per hypothesis
    on a symbolic axis in the checker's order the sizes where it holds and its code (``checks``)."""
    codes = {m: k for k, (m, _) in enumerate(errors(sp))}
    axes = [{"axis": a, "var": "hw"[i], "err": codes[f"ERR_{a.upper()}"],
             "valid": sp.valid[a].progressions() if a in sp.symbols else [(int(sp.in_shape[1 + i]), 0)]}
            for i, a in enumerate(AXES)]
    checks = [{"var": "hw"[AXES.index(c.axis)], "valid": c.valid.progressions(), "err": codes[f"ERR_{c.name.upper()}"],
               "name": c.name} for c in sp.report.constraints if c.axis in sp.symbols]
    return {"axes": axes, "checks": checks, "too_large": codes["ERR_TOO_LARGE"]}


def py_size_context(sp: Specialized) -> dict:
    """The loader's py_sizes.j2 context (the NumPy target's: VALID_SIZES and the checker's messages)."""
    from .numpy_target import _size_context

    return _size_context(sp)


def _member(progs: list[tuple[int, int]], v: int) -> bool:
    return any(v == a if d == 0 else v >= a and (v - a) % d == 0 for a, d in progs)


def error_code(sp: Specialized, h: int, w: int) -> int:
    """The code <name>_check_sizes(h, w) returns (0: valid), computed the same way in Python."""
    ctx = context_checks(sp)
    for a, v in zip(ctx["axes"], (h, w)):
        if v < 1:
            return a["err"]
    if all(_member(a["valid"], v) for a, v in zip(ctx["axes"], (h, w))):
        return 0
    for c in ctx["checks"]:
        if not _member(c["valid"], h if c["var"] == "h" else w):
            return c["err"]
    return ctx["axes"][1]["err"] if _member(ctx["axes"][0]["valid"], h) else ctx["axes"][0]["err"]
