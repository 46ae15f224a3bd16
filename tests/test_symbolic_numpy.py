"""Size-polymorphic NumPy code: one emit of a symbolic config runs at every valid size (against
PyTorch autograd), refuses every other size with the checker's own message, and agrees bit for
bit with the specialised emit; the integer-floor printers against SymPy's exact floor; the
spec's rewritten shapes against an independent integer model of the real network."""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess

import numpy as np
import pytest
import sympy as sp

from conftest import model_valid, out_i, out_t_i, valid_geometries
from torch_ref import rel_err, torch_reference
from unetc.checker import check
from unetc.config import Config
from unetc.emitter import emit
from unetc.graph import SIZE_SYMBOLS
from unetc.specialize import specialize
from unetc.sympy_print import ccode, pycode

H, W = SIZE_SYMBOLS
TOL = {"float64": 1e-10, "float32": 1e-4}
LIMIT = 40  # sizes tried for the random geometries


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETC_CACHE_DIR", str(tmp_path / "cache"))


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def emitted(cfg: Config, tmp_path_factory):
    (path,) = emit(cfg, "numpy", tmp_path_factory.mktemp(cfg.name))
    return load_module(path, f"{cfg.name}_{cfg.dtype}_{id(cfg)}")


GEOMETRIES = valid_geometries(5, seed=20240612, limit=LIMIT)


def inputs(mod, h, w, seed):
    rng = np.random.default_rng(seed)
    c_in, c_out = mod.IN_SHAPE[0], mod.OUT_SHAPE[0]
    return (rng.standard_normal((c_in, h, w)).astype(mod.DTYPE),
            rng.standard_normal((c_out, h, w)).astype(mod.DTYPE))


def assert_matches_torch(mod, cfg, h, w, seed=0, backward=True):
    params = mod.init_params(seed)
    x, gy = inputs(mod, h, w, seed + 1)
    y = mod.forward(params, x)
    assert y.shape == mod.out_shape(h, w) and y.dtype == mod.DTYPE
    ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
    errs = {"y": rel_err(y, ry)}
    if backward:
        grads, gx = mod.backward(params, x, gy)
        errs["grad_x"] = rel_err(gx, rgx)
        errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
        assert len(grads) == 16
    assert max(errs.values()) <= TOL[cfg.dtype], (h, w, errs)


def checker_message(cfg: Config, h: int, w: int) -> str:
    report = check(cfg.with_sizes(h, w))
    return next(c.message for c in report.constraints if c.status != "holds")


def assert_refused_like_checker(mod, cfg, h, w):
    x = np.zeros((mod.IN_SHAPE[0], h, w), mod.DTYPE)
    with pytest.raises(ValueError) as err:
        mod.forward(mod.init_params(0), x)
    assert str(err.value) == checker_message(cfg, h, w)


# ---- printers ----

def _floor_exprs(geometries) -> list:
    """Every size expression of the graphs of these geometries (shapes, raw, hypotheses, requirements)."""
    exprs = []
    for g in geometries:
        spec = specialize(Config(base_c=1, **g))
        graph = spec.graph
        exprs += [d for s in (*graph.shapes.values(), *graph.raw.values()) for d in s[1:]]
        exprs += [e for eq in graph.equations for e in (eq.lhs, eq.rhs, *(r.expr for r in eq.requires))]
    return list(dict.fromkeys(sp.sympify(e) for e in exprs if not sp.sympify(e).is_number))


@pytest.fixture(scope="module")
def floor_exprs():
    extra = [sp.floor(sp.Rational(3, 7) * H - sp.Rational(5, 2)), 3 * sp.floor((H - 1) / 4) - sp.floor(-H / 3),
             sp.floor((sp.floor((H + 1) / 2) + 2 * W) / 3)]
    return _floor_exprs(GEOMETRIES[:3] + [{}]) + extra


def test_python_printer_is_exact_floor_division(floor_exprs):
    assert any("//" in pycode(e) for e in floor_exprs)
    for e in floor_exprs:
        text = pycode(e)
        assert "/" not in text.replace("//", "") and "floor" not in text, text
        f = eval(f"lambda H, W: {text}")
        for n in range(-30, 90):
            assert f(n, n + 3) == e.subs({H: n, W: n + 3}), (text, n)
        assert f(10 ** 30 + 7, 10 ** 30 + 1) == e.subs({H: 10 ** 30 + 7, W: 10 ** 30 + 1})  # no float


def _c_values(exprs, points) -> list[list[int]]:
    """Each C-printed expression evaluated at each (H, W), compiled by cc (long arithmetic)."""
    lines = ["#include <stdio.h>", "int main(void) {", f"    static const long pts[][2] = {{"
             + ", ".join(f"{{{h}, {w}}}" for h, w in points) + "};",
             f"    for (int i = 0; i < {len(points)}; i++) {{", "        long H = pts[i][0], W = pts[i][1];"]
    lines += [f'        printf("%ld\\n", (long)({ccode(e)}));' for e in exprs]
    lines += ["        (void)H; (void)W;", "    }", "    return 0;", "}"]
    return lines


def test_c_printer_is_floor_for_nonnegative_numerators(floor_exprs, tmp_path):
    points = [(n, n + 1) for n in range(1, 60)]
    src = tmp_path / "e.c"
    src.write_text("\n".join(_c_values(floor_exprs, points)) + "\n")
    exe = tmp_path / "e"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(src)], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    it = iter(got)
    for h, w in points:
        for e in floor_exprs:
            value = next(it)
            if all(f.args[0].subs({H: h, W: w}) >= 0 for f in e.atoms(sp.floor)):
                assert value == e.subs({H: h, W: w}), (ccode(e), h, w)
    # C truncates: a negative numerator is the one case where '/' is not floor
    assert ccode(sp.floor((H - 3) / 2)) == "((H - 3) / 2)" and int((0 - 3) / 2) != (0 - 3) // 2


# ---- the graph's sizes on the valid set ----

def real_sizes(c: dict, n: int) -> dict[str, int]:
    """Sizes of the real network (each layer's formula on its real input, no rewrites) by the
    independent integer model, per tensor of the graph."""
    conv = (c["conv_kernel"], c["conv_stride"], c["conv_padding"])
    full = out_i(out_i(n, *conv), *conv)  # down1_1, down1_2
    d = out_i(full, c["pool_kernel"], c["pool_stride"], 0)
    low = out_i(out_i(d, *conv), *conv)
    u = out_t_i(low, c["up_kernel"], c["up_stride"], c["up_padding"])
    top = out_i(out_i(u, *conv), *conv)
    y = out_i(top, c["head_kernel"], c["head_stride"], c["head_padding"])
    return {"x": n, "z1": out_i(n, *conv), "skip1": full, "pooled": d, "z3": out_i(d, *conv), "bottleneck": low,
            "up": u, "merged": u, "z5": out_i(u, *conv), "u2": top, "y": y}


@pytest.mark.parametrize("index", range(len(GEOMETRIES)))
def test_rewritten_shapes_are_the_real_ones_and_floors_nonnegative(index):
    """On the valid set the spec's rewritten shapes (what the code prints) are the real network's,
    and every floor argument of every size expression is >= 0 (C's '/' is exact there)."""
    c = GEOMETRIES[index]
    spec = specialize(Config(base_c=1, **c))
    valid = model_valid(c)
    assert [n for n in range(1, LIMIT + 1) if n in spec.valid["in_h"]] == valid
    graph = spec.graph
    exprs = [d for s in (*graph.shapes.values(), *graph.raw.values()) for d in s[1:]]
    exprs += [e for eq in graph.equations for e in (eq.lhs, eq.rhs, *(r.expr for r in eq.requires))]
    floors = {f for e in exprs for f in sp.sympify(e).atoms(sp.floor)}
    for n in valid:
        for t, size in real_sizes(c, n).items():
            assert spec.shapes[t][1].subs(H, n) == size and spec.shapes[t][2].subs(W, n) == size, (t, n)
        assert all(f.args[0].subs({H: n, W: n}) >= 0 for f in floors), n


# ---- emitted modules ----

@pytest.mark.parametrize("index", range(len(GEOMETRIES)))
def test_random_geometry_runs_at_valid_sizes_and_refuses_others(index, tmp_path_factory):
    c = GEOMETRIES[index]
    dtype = "float32" if index == 0 else "float64"
    cfg = Config(name=f"g{index}", dtype=dtype, in_c=2, out_c=1, base_c=2, **c)
    mod = emitted(cfg, tmp_path_factory)
    valid = model_valid(c)
    assert mod.IN_SHAPE == (2, None, None) and mod.VALID_SIZES["in_h"] == specialize(cfg).valid["in_h"].progressions()
    small, mid, big = valid[0], valid[len(valid) // 2], valid[-1]
    for h, w in ((small, big), (mid, small), (big, mid)):
        assert_matches_torch(mod, cfg, h, w, seed=index)
    invalid = sorted({n for v in valid for n in (v - 1, v + 1)} - set(valid) - {0})
    invalid.insert(0, next(n for n in range(1, LIMIT + 2) if n not in valid))  # the smallest failing
    for n in invalid[:4]:
        assert_refused_like_checker(mod, cfg, n, small)
        assert_refused_like_checker(mod, cfg, small, n)


@pytest.fixture(scope="module")
def default_mod(tmp_path_factory):
    cfg = Config(name="dflt", dtype="float64", base_c=2)
    return cfg, emitted(cfg, tmp_path_factory)


@pytest.mark.parametrize("h,w,backward", [(2, 2, True), (64, 64, True), (256, 384, True)])
def test_default_config_emitted_once_runs_at_many_sizes(default_mod, h, w, backward):
    cfg, mod = default_mod
    assert mod.IN_SHAPE == (3, None, None) and mod.OUT_SHAPE == (2, None, None)
    assert mod.VALID_SIZES == {"in_h": [(2, 2)], "in_w": [(2, 2)]}
    assert_matches_torch(mod, cfg, h, w, backward=backward)


@pytest.mark.parametrize("h,w", [(255, 8), (1, 8), (8, 1), (3, 5), (2, 7), (2 ** 20 - 1, 2), (4, 2 ** 20 - 3)])
def test_default_config_refuses_with_checker_message(default_mod, h, w):
    cfg, mod = default_mod
    if h * w < 10 ** 6:
        assert_refused_like_checker(mod, cfg, h, w)
    with pytest.raises(ValueError) as err:
        mod.out_shape(h, w)
    assert str(err.value) == checker_message(cfg, h, w)
    if h == 255:
        assert str(err.value) == "in_h = 255 fails h_upH (upT gives 254, expected 255); nearest valid: 254, 256"


def test_huge_sizes_are_explained_cheaply(default_mod):
    _, mod = default_mod
    n = 10 ** 30 + 1
    with pytest.raises(ValueError) as err:
        mod.out_shape(n, 2)
    assert str(err.value) == (f"in_h = {n} fails h_upH (upT gives {n - 1}, expected {n}); "
                              f"nearest valid: {n - 1}, {n + 1}")
    assert mod.out_shape(n + 1, 2) == (2, n + 1, 2)


def test_default_config_api_errors(default_mod):
    cfg, mod = default_mod
    params = mod.init_params(0)
    x, gy = inputs(mod, 4, 6, 0)
    assert mod.out_shape(4, 6) == (2, 4, 6) and mod.out_shape(np.int64(4), 6) == (2, 4, 6)
    with pytest.raises(ValueError, match=r"x: expected shape \(3, None, None\), got \(4, 6\)"):
        mod.forward(params, x[0])
    with pytest.raises(ValueError, match=r"x: expected shape \(3, 4, 6\), got \(2, 4, 6\)"):
        mod.forward(params, x[:2])
    with pytest.raises(ValueError, match="x: expected a numpy.ndarray, got list"):
        mod.forward(params, x.tolist())
    with pytest.raises(ValueError, match="x: expected dtype float64, got float32"):
        mod.forward(params, x.astype(np.float32))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2, 4, 6\), got \(2, 4, 4\)"):
        mod.backward(params, x, gy[:, :, :4])
    with pytest.raises(ValueError, match="in_w = 0: sizes must be >= 1"):
        mod.forward(params, np.zeros((3, 4, 0)))
    with pytest.raises(ValueError, match="out_shape: expected integer sizes"):
        mod.out_shape(4.0, 6)


@pytest.mark.parametrize("geometry,h,w", [({}, 64, 48), ("random", None, None)])
def test_symbolic_and_specialised_emits_agree_bit_for_bit(geometry, h, w, tmp_path_factory):
    c = GEOMETRIES[1] if geometry == "random" else {}
    h = h or model_valid(c)[-1]
    w = w or model_valid(c)[0]
    sym = Config(name="bits", dtype="float32", in_c=2, out_c=2, base_c=3, **c)
    a = emitted(sym, tmp_path_factory)
    b = emitted(sym.with_sizes(h, w), tmp_path_factory)
    assert b.IN_SHAPE == (2, h, w) and not hasattr(b, "VALID_SIZES")
    params = a.init_params(1)
    x, gy = inputs(a, h, w, 2)
    assert np.array_equal(a.forward(params, x), b.forward(params, x))
    (ga, gxa), (gb, gxb) = a.backward(params, x, gy), b.backward(params, x, gy)
    assert np.array_equal(gxa, gxb) and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_pool3_up3_smallest_size_three_runs(tmp_path_factory):
    cfg = Config(name="p3", dtype="float64", in_c=2, out_c=2, base_c=2, pool_kernel=3, pool_stride=3,
                 up_kernel=3, up_stride=3)
    mod = emitted(cfg, tmp_path_factory)
    assert mod.VALID_SIZES["in_h"] == [(3, 3)]
    assert_matches_torch(mod, cfg, 3, 3)
    assert_matches_torch(mod, cfg, 3, 12)
    assert_refused_like_checker(mod, cfg, 4, 3)


def test_one_symbolic_axis_and_hostile_symbol_names(tmp_path_factory):
    """in_h named like a module global, in_w concrete: the code prints sizes in H only."""
    cfg = Config(name="mixed", dtype="float64", in_c=1, out_c=1, base_c=2, in_h="np", in_w=6)
    mod = emitted(cfg, tmp_path_factory)
    assert mod.IN_SHAPE == (1, None, 6) and mod.VALID_SIZES == {"in_h": [(2, 2)], "in_w": [(6, 0)]}
    for h in (2, 10):
        assert_matches_torch(mod, dataclasses.replace(cfg, in_h=h), h, 6)
    with pytest.raises(ValueError, match="in_h = 5 fails h_upH"):
        mod.forward(mod.init_params(0), np.zeros((1, 5, 6)))
    with pytest.raises(ValueError, match=r"x: expected shape \(1, 4, 6\), got \(1, 4, 8\)"):
        mod.forward(mod.init_params(0), np.zeros((1, 4, 8)))


@pytest.mark.parametrize("n,h,w", [(1, 4, 6), (3, 10, 2), (2, 64, 48)])
def test_default_config_batches_at_several_sizes(default_mod, n, h, w):
    """Batches (N, C, H, W) of a size-polymorphic module against PyTorch's batched autograd,
    gradients summed over the batch; sizes read from x's last two axes."""
    from test_batch_numpy import torch_batch_reference

    cfg, mod = default_mod
    params = mod.init_params(n)
    rng = np.random.default_rng(n + h)
    x = rng.standard_normal((n, 3, h, w))
    gy = rng.standard_normal((n, *mod.out_shape(h, w)))
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_batch_reference(cfg, params, x, gy)
    assert y.shape == (n, *mod.out_shape(h, w)) and gx.shape == x.shape
    errs = [rel_err(y, ry), rel_err(gx, rgx)] + [rel_err(grads[k], rgrads[k]) for k in rgrads]
    assert max(errs) <= TOL["float64"], errs


def test_batch_of_invalid_size_refused_with_checker_message(default_mod):
    cfg, mod = default_mod
    params = mod.init_params(0)
    with pytest.raises(ValueError) as err:
        mod.forward(params, np.zeros((2, 3, 255, 8)))
    assert str(err.value) == checker_message(cfg, 255, 8)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3, 4, 6\), got \(2, 2, 4, 6\)"):
        mod.forward(params, np.zeros((2, 2, 4, 6)))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2, 2, 4, 6\), got \(2, 4, 6\)"):
        mod.backward(params, np.zeros((2, 3, 4, 6)), np.zeros((2, 4, 6)))
