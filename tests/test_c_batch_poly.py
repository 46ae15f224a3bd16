"""C target: the batch axis (n images per call, gradients summed over the batch like PyTorch's)
and size-polymorphic C (one emit of a symbolic config runs at every valid size, refuses every
other size with an error code / the checker's message), against PyTorch autograd on batches;
the workspace plan at many sizes; the polymorphic emit against the specialised one."""
from __future__ import annotations

import ctypes
import dataclasses
import time

import numpy as np
import pytest

from conftest import EXAMPLES, model_valid, valid_geometries
from test_symbolic_numpy import checker_message
from prop_strategies import load_module
from torch_ref import CONFIG_MATRIX, rel_err
from unetc.checker import check
from unetc.config import Config, load
from unetc.emitter import write_all
from unetc.specialize import specialize
from unetc.targets import c_plan, c_poly, c_target

TOL = {"float64": 1e-10, "float32": 1e-4}
SENTINEL = 1234.5


def torch_batched(cfg: Config, params: dict, x: np.ndarray, gy: np.ndarray):
    """(y, grads, grad_x) by PyTorch autograd in float64 on a batch (N, C, H, W): the parameter
    gradients of the summed per-sample losses (torch's default for grad_output of shape (N, ...))."""
    import torch

    from unetc.torch_interop import torch_module

    m = torch_module(cfg).double()
    m.load_state_dict({k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()})
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    y = m(xt)
    y.backward(torch.tensor(np.asarray(gy, dtype=np.float64)))
    return y.detach().numpy(), {k: p.grad.numpy() for k, p in m.named_parameters()}, xt.grad.numpy()



@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """cfg -> the imported C module of cfg (emitted with c_target.files, so symbolic configs too)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("UNETC_CFLAGS", "-O1 -march=native -fopenmp -std=c99")  # compiles 2.5x faster than -O3
    made = {}

    def make(cfg: Config):
        key = (cfg.to_yaml(), cfg.name)
        if key not in made:
            out = tmp_path_factory.mktemp(cfg.name)
            write_all(out, c_target.files(specialize(cfg), False))
            made[key] = load_module(out / f"{cfg.name}_c.py", f"cbp_{cfg.name}_{len(made)}")
        return made[key]

    yield make
    mp.undo()


def check_against_torch(mod, cfg, n, h, w, seed=0):
    """forward + backward of a batch of n (None: one image) at h x w against torch_batched."""
    rng = np.random.default_rng(seed)
    params = mod.init_params(seed)
    lead = () if n is None else (n,)
    x = rng.standard_normal((*lead, cfg.in_c, h, w)).astype(mod.DTYPE)
    gy = rng.standard_normal((*lead, cfg.out_c, h, w)).astype(mod.DTYPE)
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_batched(cfg.with_sizes(h, w) if cfg.in_h != h or cfg.in_w != w else cfg,
                                    params, x.reshape(-1, *x.shape[-3:]), gy.reshape(-1, *gy.shape[-3:]))
    assert y.shape == (*lead, cfg.out_c, h, w) and gx.shape == x.shape and y.dtype == mod.DTYPE
    errs = {"y": rel_err(y, ry.reshape(y.shape)), "grad_x": rel_err(gx, rgx.reshape(gx.shape))}
    errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
    assert len(grads) == 16 and max(errs.values()) <= TOL[cfg.dtype], (n, h, w, errs)


# ---- the batch axis (specialised C) ----

def spec_cfg(dtype: str, case: str = "default") -> Config:
    c = CONFIG_MATRIX[case]
    return dataclasses.replace(c, dtype=dtype, name=f"bp_{case}_{dtype[-2:]}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batches_match_pytorch(build, dtype):
    """N = 1, 3, a training loop's odd last batch (7 = 4 + 3) and one unbatched image."""
    cfg = spec_cfg(dtype)
    mod = build(cfg)
    for n in (1, 3, 7, None):
        check_against_torch(mod, cfg, n, cfg.in_h, cfg.in_w, seed=n or 0)


def test_batch_images_equal_single_calls(build):
    """Each image of a batch gets the same y and grad_x as a call on that image alone, bit for bit;
    the summed gradients equal the sum of single calls (to rounding); grad_output of one image
    per batch entry is required."""
    cfg = spec_cfg("float64")
    mod = build(cfg)
    rng = np.random.default_rng(5)
    params = mod.init_params(1)
    x = rng.standard_normal((5, *mod.IN_SHAPE))
    gy = rng.standard_normal((5, *mod.OUT_SHAPE))
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    singles = [mod.backward(params, x[i], gy[i]) for i in range(5)]
    for i in range(5):
        assert np.array_equal(y[i], mod.forward(params, x[i])) and np.array_equal(gx[i], singles[i][1])
    for k in grads:
        assert rel_err(grads[k], sum(s[0][k] for s in singles)) <= 1e-14
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(5, 2, 8, 8\), got \(2, 8, 8\)"):
        mod.backward(params, x, gy[0])
    with pytest.raises(ValueError, match="x: the batch size N = 0 must be between 1"):
        mod.forward(params, x[:0])


def test_workspace_grows_with_n_and_suffices(build):
    """workspace_bytes(n) is monotone in n, 0 for n <= 0, and a workspace of exactly that many
    bytes is enough: the bytes after it stay untouched (canary) for every batch size."""
    cfg = spec_cfg("float32")
    mod = build(cfg)
    fn = mod._lib.bp_default_32_workspace_bytes
    sizes = [fn(n) for n in range(0, 20)]
    assert sizes[0] == 0 and fn(-3) == 0 and sizes[1] == mod.WORKSPACE_BYTES
    assert all(a <= b for a, b in zip(sizes[1:], sizes[2:]))
    params = mod.init_params(0)
    p = mod._Params(*[params[k].ctypes.data for k in mod.PARAM_SHAPES])
    for n in (1, 2, 3, 17):
        x = np.random.default_rng(n).standard_normal((n, *mod.IN_SHAPE)).astype(np.float32)
        gy = np.ones((n, *mod.OUT_SHAPE), np.float32)
        buf = np.full(fn(n) + 4096, 0xAB, np.uint8)
        grads, gstruct = mod._new_grads()
        gx = np.empty_like(x)
        rc = mod._lib.bp_default_32_backward(ctypes.byref(p), n, x.ctypes.data, gy.ctypes.data,
                                             ctypes.byref(gstruct), gx.ctypes.data, buf.ctypes.data)
        assert rc == 0 and (buf[fn(n):] == 0xAB).all(), n


# ---- size-polymorphic C ----

def poly_cfg(geometry: dict | None = None, dtype: str = "float64", name: str = "pp") -> Config:
    base = dict(name=name, dtype=dtype, in_c=2, out_c=2, base_c=2, in_h="H", in_w="W")
    return Config(**base, **(geometry or {}))


GEOMETRIES = valid_geometries(3, seed=4242)


@pytest.mark.parametrize("index", range(len(GEOMETRIES)))
def test_poly_random_geometries_match_pytorch(build, index):
    """One emit, >= 3 valid sizes (the smallest, and the largest <= 40) against PyTorch; N = 2."""
    g = GEOMETRIES[index]
    cfg = poly_cfg(g, name=f"pp_geo{index}")
    mod = build(cfg)
    valid = model_valid(g)
    for k, h in enumerate([valid[0], valid[len(valid) // 2], valid[-1]]):
        w = valid[(k + 1) % len(valid)]
        check_against_torch(mod, cfg, 2, h, w, seed=k)


def test_python_workspace_bytes_refuses_what_c_cannot_take(build):
    """The module's workspace_bytes: the C figure for a valid n (and size), a ValueError naming the
    argument otherwise (ctypes would wrap 2**40 to 0, and C answers 0 for n <= 0)."""
    spec = build(spec_cfg("float32"))
    assert spec.workspace_bytes(3) == spec._lib.bp_default_32_workspace_bytes(3) > 0
    for bad in (0, -1, 2**40, 2.0, "3", True, None):
        with pytest.raises(ValueError, match=r"workspace_bytes: n = .* must be an integer between 1 and"):
            spec.workspace_bytes(bad)
    poly = build(dataclasses.replace(load(EXAMPLES / "default.yaml"), base_c=2, dtype="float64", name="pp_default"))
    assert poly.workspace_bytes(2, 64, 64) == poly._lib.pp_default_workspace_bytes(2, 64, 64) > 0
    with pytest.raises(ValueError, match=r"w = 4294967360 must be an integer"):
        poly.workspace_bytes(1, 64, 2**32 + 64)
    with pytest.raises(ValueError, match=r"in_h = 255 fails h_upH .*nearest valid: 254, 256"):
        poly.workspace_bytes(1, 255, 64)


def test_poly_default_config_at_three_sizes(build):
    """The default geometry (base_c 2): emitted once, run at 2x2, 64x64 and 256x384."""
    cfg = dataclasses.replace(load(EXAMPLES / "default.yaml"), base_c=2, dtype="float64", name="pp_default")
    mod = build(cfg)
    for n, (h, w) in ((1, (2, 2)), (3, (64, 64)), (None, (256, 384))):
        check_against_torch(mod, cfg, n, h, w, seed=h)


def test_poly_float32_matches_pytorch(build):
    cfg = poly_cfg(GEOMETRIES[0], "float32", "pp_geo0_32")
    mod = build(cfg)
    valid = model_valid(GEOMETRIES[0])
    check_against_torch(mod, cfg, 3, valid[-1], valid[0])


def _bad_sizes(valid: list[int]) -> list[int]:
    """The smallest failing size and the neighbours of valid sizes that are not valid."""
    bad = [n for n in range(1, 41) if n not in valid]
    near = {v + d for v in valid for d in (-1, 1) if 1 <= v + d <= 40} - set(valid)
    return sorted({bad[0], *near})[:6]


@pytest.mark.parametrize("index", [0, 1])
def test_poly_invalid_sizes_refused_like_the_checker(build, index):
    """ValueError with the checker's message; the C function returns the error code of the same
    hypothesis and writes nothing into y (a sentinel stays); workspace_bytes is 0."""
    g = GEOMETRIES[index]
    cfg = poly_cfg(g, name=f"pp_geo{index}")
    mod = build(cfg)
    lib, name = mod._lib, cfg.name
    valid = model_valid(g)
    params = mod.init_params(0)
    p = mod._Params(*[params[k].ctypes.data for k in mod.PARAM_SHAPES])
    for h, w in [(b, valid[0]) for b in _bad_sizes(valid)] + [(valid[-1], _bad_sizes(valid)[0])]:
        message = checker_message(cfg, h, w)
        with pytest.raises(ValueError) as err:
            mod.forward(params, np.zeros((2, 2, h, w)))
        assert str(err.value) == message
        x = np.zeros((2, 2, h, w))
        y = np.full((2, 2, max(h, 1) * 4, max(w, 1) * 4), SENTINEL)
        ws = np.zeros(1 << 20, np.uint8)
        rc = getattr(lib, f"{name}_forward")(ctypes.byref(p), 2, h, w, x.ctypes.data, y.ctypes.data, ws.ctypes.data)
        strerror = getattr(lib, f"{name}_strerror")  # the loader set its restype
        text = strerror(rc).decode()
        assert rc > 2 and (y == SENTINEL).all(), (h, w, rc)
        first = next(c for c in check(cfg.with_sizes(h, w)).constraints if c.status != "holds")
        assert text == f"{first.axis} fails {first.name} ({first.layer})", (message, text)
        assert getattr(lib, f"{name}_workspace_bytes")(2, h, w) == 0
        grads, gstruct = mod._new_grads()
        for v in grads.values():
            v.fill(SENTINEL)
        gx = np.full_like(x, SENTINEL)
        rc2 = getattr(lib, f"{name}_backward")(ctypes.byref(p), 2, h, w, x.ctypes.data, y.ctypes.data,
                                               ctypes.byref(gstruct), gx.ctypes.data, ws.ctypes.data)
        assert rc2 == rc and (gx == SENTINEL).all() and all((v == SENTINEL).all() for v in grads.values())


def test_poly_error_codes_for_n_and_null(build):
    cfg = poly_cfg(GEOMETRIES[0], name="pp_geo0")
    mod = build(cfg)
    lib, h = mod._lib, model_valid(GEOMETRIES[0])[0]
    params = mod.init_params(0)
    p = mod._Params(*[params[k].ctypes.data for k in mod.PARAM_SHAPES])
    x, y = np.zeros((1, 2, h, h)), np.full((1, 2, h, h), SENTINEL)
    ws = np.zeros(lib.pp_geo0_workspace_bytes(1, h, h), np.uint8)
    for n in (0, -1):
        assert lib.pp_geo0_forward(ctypes.byref(p), n, h, h, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 2
        assert lib.pp_geo0_workspace_bytes(n, h, h) == 0
    assert lib.pp_geo0_forward(None, 1, h, h, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 1
    assert (y == SENTINEL).all()
    assert lib.pp_geo0_forward(ctypes.byref(p), 1, h, h, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 0
    sizes = [lib.pp_geo0_workspace_bytes(n, h, h) for n in range(1, 20)]
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))


def test_poly_equals_specialised_bit_for_bit(build):
    """The symbolic emit at a valid size and the specialised emit at that size agree bit for bit
    (same kernels chosen, same operation order) on forward, every gradient and grad_x."""
    g = GEOMETRIES[1]
    valid = model_valid(g)
    poly = build(poly_cfg(g, name="pp_geo1"))
    h, w = valid[-1], valid[len(valid) // 2]
    spec = build(poly_cfg(g, name="pp_geo1_spec").with_sizes(h, w))
    rng = np.random.default_rng(9)
    params = poly.init_params(2)
    x, gy = rng.standard_normal((3, 2, h, w)), rng.standard_normal((3, 2, h, w))
    assert np.array_equal(poly.forward(params, x), spec.forward(params, x))
    (ga, gxa), (gb, gxb) = poly.backward(params, x, gy), spec.backward(params, x, gy)
    assert np.array_equal(gxa, gxb) and all(np.array_equal(ga[k], gb[k]) for k in ga)


# ---- the workspace plan ----

@pytest.mark.parametrize("geometry", [{}] + GEOMETRIES)
def test_symbolic_plan_valid_at_many_sizes(geometry):
    """The stack-above plan of a symbolic config, evaluated at the first 25 valid sizes per axis
    and at large ones, passes the interval simulation; its peak matches the C layout's."""
    cfg = poly_cfg(geometry, "float32")
    sp = specialize(cfg)
    fwd, bwd = c_plan.plans(sp, 4)
    hs, ws = sp.valid["in_h"].first(25), sp.valid["in_w"].first(25)
    big = [sp.valid["in_h"].nearest(4000)[0] or hs[-1], sp.valid["in_w"].nearest(3000)[0] or ws[-1]]
    for h, w in [*zip(hs, reversed(ws)), *zip(hs, ws), tuple(big)]:
        for ph in (fwd, bwd):
            c_plan.verify_at(ph, sp, h, w, 4)


def test_symbolic_plan_verifier_catches_overlap():
    sp = specialize(poly_cfg({}, "float32"))
    _, bwd = c_plan.plans(sp, 4)
    bwd.above = {r: [] for r in bwd.above}  # every buffer at offset 0
    with pytest.raises(AssertionError, match="workspace plan"):
        c_plan.verify_at(bwd, sp, 8, 6, 4)


def test_workspace_of_a_huge_size_is_fast():
    """The plan's verification costs O(ops), not O(H x W): 4000 x 3998 at base_c 64 in well under 1 s."""
    sp = specialize(load(EXAMPLES / "default.yaml").with_sizes(4000, 3998))
    t = time.perf_counter()
    ws = c_target.workspace_bytes(sp)
    assert time.perf_counter() - t < 0.5 and ws > 4000 * 3998 * 64 * 4


def test_poly_image_bytes_equal_python_evaluation(build):
    """The C layout's one-image workspace equals c_poly.image_bytes_at (the same expressions)."""
    cfg = poly_cfg(GEOMETRIES[0], name="pp_geo0")
    mod = build(cfg)
    sp = specialize(cfg)
    fwd, bwd = c_plan.plans(sp, 8)
    for h in model_valid(GEOMETRIES[0]):
        assert mod._lib.pp_geo0_workspace_bytes(1, h, h) == c_poly.image_bytes_at(sp, fwd, bwd, 8, h, h) + 64


# ---- testbench and strict builds of polymorphic C ----

def _run_testbench(tmp_path, cfg, flags):
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    files = c_target.files(specialize(cfg), True)
    write_all(tmp_path, files)
    exe = tmp_path / "tb"
    p = subprocess.run([cc, "-std=c99", *flags, *[str(tmp_path / n) for n in files if n.endswith(".c")], "-o", str(exe)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[:3000]
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=120), files


STRICT = ["-Wall", "-Wextra", "-Wpedantic", "-Werror"]


def test_poly_testbench_strict_and_sanitized(tmp_path):
    """--testbench of a symbolic config: two valid sizes against the emit-time NumPy reference and
    the smallest invalid size refused with its code, warning-free and clean under ASan/UBSan."""
    cfg = dataclasses.replace(load(EXAMPLES / "default.yaml"), base_c=2, name="pp_tb")
    r, files = _run_testbench(tmp_path, cfg, ["-O0", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                                              "-fopenmp", *STRICT])  # -O0: compiles 3x faster than -O1
    assert r.returncode == 0 and r.stdout.startswith("PASS max_rel_err="), (r.stdout, r.stderr)
    assert "1x2 refused: in_h fails h_convH_down (down2_1)" in r.stdout and "runtime error" not in r.stderr
    assert "at 2x2" in files["pp_tb_main.c"] and "at 6x4" in files["pp_tb_main.c"]


def test_poly_testbench_fails_on_wrong_code(tmp_path):
    cfg = poly_cfg(GEOMETRIES[2], "float32", "pp_tbw")
    sp = specialize(cfg)
    files = c_target.files(sp, True)
    needle = "out[c] = pp_tbw_sum("
    assert needle in files["pp_tbw.c"]
    files["pp_tbw.c"] = files["pp_tbw.c"].replace(needle, "out[c] = 1.5f * pp_tbw_sum(", 1)
    mp = pytest.MonkeyPatch()
    mp.setattr(c_target, "files", lambda sp, tb: files)
    try:
        r, _ = _run_testbench(tmp_path, cfg, ["-O1"])
    finally:
        mp.undo()
    assert r.returncode != 0 and r.stdout.startswith("FAIL max_rel_err="), r.stdout


@pytest.mark.parametrize("index", range(len(GEOMETRIES)))
def test_poly_random_geometry_warning_free(tmp_path, index):
    """gcc -std=c99 -Wall -Wextra -Wpedantic -Werror on the library and testbench of each random
    geometry (plain, and with OpenMP and the host's vectors); the testbench passes."""
    cfg = poly_cfg(GEOMETRIES[index], "float32", f"pp_w{index}")
    for k, variant in enumerate(([], ["-fopenmp", "-march=native"])):
        r, _ = _run_testbench(tmp_path / str(k), cfg, ["-O0", *STRICT, *variant])
        assert r.returncode == 0 and r.stdout.startswith("PASS"), (variant, r.stdout)


def test_poly_one_symbolic_axis(build):
    """in_h concrete, in_w symbolic: W read at run time, in_h fixed (ValueError / its error code)."""
    cfg = Config(name="pp_mixed", dtype="float64", in_c=2, out_c=1, in_h=10, in_w="W", base_c=2,
                 conv_kernel=5, conv_padding=2)
    mod = build(cfg)
    assert mod.IN_SHAPE == (2, 10, None) and mod.VALID_SIZES["in_w"] == [(2, 2)]
    for n, w in ((2, 2), (None, 14)):
        check_against_torch(mod, cfg, n, 10, w, seed=w)
    params = mod.init_params(0)
    with pytest.raises(ValueError, match="x: in_h = 12, but this module was emitted for in_h = 10 only"):
        mod.forward(params, np.zeros((2, 12, 8)))
    with pytest.raises(ValueError, match=r"in_w = 7 fails h_upW \(upT gives 6, expected 7\); nearest valid: 6, 8"):
        mod.forward(params, np.zeros((2, 10, 7)))
    p = mod._Params(*[params[k].ctypes.data for k in mod.PARAM_SHAPES])
    x, y, ws = np.zeros((1, 2, 12, 8)), np.full((1, 1, 12, 8), SENTINEL), np.zeros(1 << 16, np.uint8)
    rc = mod._lib.pp_mixed_forward(ctypes.byref(p), 1, 12, 8, x.ctypes.data, y.ctypes.data, ws.ctypes.data)
    assert mod._lib.pp_mixed_strerror(rc) == b"in_h must be 10 (emitted for that size)" and (y == SENTINEL).all()


def test_baked_weights_declared_in_the_header_and_inference_builds(tmp_path):
    """files(sp, weights=...) adds <name>_weights.c and <name>_infer.c, the header declares
    <name>_weights, and the size-polymorphic inference program builds warning-free and runs a
    batch from a .npy file (c_weights' own tests check the values)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    cfg = poly_cfg({}, "float32", "pp_w")
    sp = specialize(cfg)
    weights = {k: np.random.default_rng(0).standard_normal(s).astype(np.float32) for k, s in sp.params.items()}
    files = c_target.files(sp, False, weights=weights)
    assert {"pp_w_weights.c", "pp_w_infer.c"} <= set(files) and "extern const pp_w_params pp_w_weights;" in files["pp_w.h"]
    assert "pp_w_weights" not in c_target.files(sp, False)["pp_w.h"]
    write_all(tmp_path, files)
    exe = tmp_path / "infer"
    p = subprocess.run([cc, "-std=c99", "-O0", *STRICT, *[str(tmp_path / n) for n in files if n.endswith(".c")],
                        "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[:2000]
    np.save(tmp_path / "x.npy", np.ones((2, 2, 6, 4), np.float32))
    r = subprocess.run([str(exe), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], capture_output=True, text=True)
    assert r.returncode == 0 and np.load(tmp_path / "y.npy").shape == (2, 2, 6, 4), r.stderr
