"""The C target's testbench (``--testbench``: ``<name>_main.c``): data from an integer hash, the
float64 NumPy target's results at emit time as checksums and sampled values (for large inputs,
x and grad_y nonzero in a corner patch, the reference computed on a small corner crop)."""
from __future__ import annotations

import math

from ..specialize import Specialized, var
from .c_sizes import numel as _numel
from .numpy_target import init_bounds


def _ctype(sp: Specialized) -> str:
    return "float" if sp.config.dtype == "float32" else "double"


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

    def __init__(self, sp: Specialized, patch: int, dense: bool, weights: dict | None = None):
        self.sp, self.patch, self.dense, self.weights = sp, patch, dense, weights
        bounds = {p: float(b) for p, b in init_bounds(sp).items()}
        self.inputs = [("x", sp.in_shape, 1, 0), ("grad_y", sp.out_shape, 2, 0)]
        if weights is None:  # baked weights are the parameters themselves
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
        params = {p: np.asarray(a, np.float64) for p, a in (self.weights or {}).items()}
        for p, shape in self.sp.params.items() if self.weights is None else ():
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


def _reference(sp: Specialized, weights: dict | None = None) -> tuple["_Ref", dict]:
    """The testbench's reference: for small inputs, or baked ``weights`` (their biases are not
    zero), the whole image with dense data; else x and grad_y nonzero in a top-left patch and
    biases zero, so every nonzero value of the network lies in a corner: computed on the smallest
    corner crop whose result a crop larger by a margin confirms (doubling the margin until they
    agree, at worst the whole image)."""
    H, W = sp.in_shape[1:]
    if H * W <= TB_DENSE_PIXELS or weights is not None:
        ref = _Ref(sp, max(H, W), True, weights)
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


def testbench_context(sp: Specialized, weights: dict | None = None) -> dict:
    """Template context of c_main.c.j2: tb_fill calls (x, grad_y in their patch, parameters at about
    their init bound, or the baked ``weights``) and, per output, _tb_summary of the float64 NumPy
    reference."""
    ref, out = _reference(sp, weights)
    checks = [("y", "y", sp.out_shape), ("grad_x", "grad_x", sp.in_shape)]
    checks += [(p, f"d_{var(p)}", shape) for p, shape in sp.params.items()]
    ctx_checks = []
    for what, v, shape in checks:
        want, at = _tb_summary(*out[what], _numel(shape))
        ctx_checks.append({"what": what, "var": v, "n": _numel(shape), "want": ", ".join(x.hex() for x in want),
                           "at": ", ".join(map(str, at))})
    return {"tol": "1e-10" if _ctype(sp) == "double" else "1e-4", "samples": TB_SAMPLES,
            "batch": ref.dense, "baked": weights is not None,
            "mix_seed": TB_MIX_SEED, "patch": ref.patch,
            "inputs": [{"var": nm, "n": _numel(shape), "seed": seed, "scale": float(2.0 ** -(23 + e)).hex(),
                        "shape": shape} for nm, shape, seed, e in ref.inputs],
            "checks": ctx_checks}


def poly_testbench_context(sp: Specialized, weights: dict | None = None) -> dict:
    """Template context of c_main.c.j2 for a size-polymorphic sp: the specialised testbench's
    checks at the smallest valid size and a slightly larger one (both with dense data when
    possible), and the smallest invalid size with the error code it must give."""
    from ..specialize import specialize
    from .c_poly import error_code

    cfg = sp.config
    hs, ws = sp.valid["in_h"].first(3), sp.valid["in_w"].first(3)
    fixed = {a: int(sp.in_shape[1 + i]) for i, a in enumerate(("in_h", "in_w")) if a not in sp.symbols}
    hs, ws = ([fixed["in_h"]] if "in_h" in fixed else hs), ([fixed["in_w"]] if "in_w" in fixed else ws)
    cases, dense = [], None
    for h, w in dict.fromkeys([(hs[0], ws[0]), (hs[-1], ws[len(ws) // 2])]):
        csp = specialize(cfg.with_sizes(h, w))
        ctx = testbench_context(csp, weights)
        if dense is not None and ctx["batch"] != dense:
            continue  # the parameters are filled alike only when both sizes are dense (or both not)
        dense, inputs = ctx["batch"], {a["var"]: a for a in ctx["inputs"]}
        cases.append({"h": h, "w": w, "xn": _numel(csp.in_shape), "yn": _numel(csp.out_shape),
                      "in_shape": csp.in_shape, "out_shape": csp.out_shape, "patch": ctx["patch"],
                      "x_scale": inputs["x"]["scale"], "gy_scale": inputs["grad_y"]["scale"], "checks": ctx["checks"],
                      "params_fill": [a for a in ctx["inputs"] if a["var"].startswith("param_")]})
    bad_h = sp.valid["in_h"].smallest_missing() if "in_h" in sp.symbols else fixed["in_h"] + 1
    bad = (bad_h or 0, cases[0]["w"])
    return {"cases": cases, "params_fill": cases[0]["params_fill"], "tol": ctx["tol"], "samples": ctx["samples"],
            "baked": weights is not None,
            "mix_seed": ctx["mix_seed"], "bad": {"h": bad[0], "w": bad[1], "code": error_code(sp, *bad), "xn": 16, "yn": 16}}
