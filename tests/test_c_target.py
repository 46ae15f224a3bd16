"""C target: forward, 16 parameter gradients and grad_x against PyTorch autograd (spec mode
against the NumPy target), sanitizer and strict-warning builds of the testbench, the loader's API
errors, NULL-pointer error codes, the workspace plan and the committed copy in generated/."""
from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT, assert_api_errors
from torch_ref import CONFIG_MATRIX, random_inputs, rel_err, torch_reference
from unetc.config import Config, load
from unetc.emitter import emit
from unetc.specialize import specialize
from unetc.targets import c_steps, c_target

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (CI has one)")
TOL = {"float64": 1e-10, "float32": 1e-4}
DTYPES = ("float64", "float32")


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cfg_of(case: str, dtype: str) -> Config:
    c = CONFIG_MATRIX[case]
    return dataclasses.replace(c, dtype=dtype, name=f"{c.name}_{dtype[-2:]}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("unetc_cache")
    old = os.environ.get("UNETC_CACHE_DIR")
    os.environ["UNETC_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("UNETC_CACHE_DIR", None)
    else:
        os.environ["UNETC_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def c_modules(tmp_path_factory, cache_dir):
    """Every CONFIG_MATRIX case x dtype emitted and imported (compiled two at a time)."""
    out = tmp_path_factory.mktemp("c_emit")
    keys = [(case, dt) for case in sorted(CONFIG_MATRIX) for dt in DTYPES]
    np_mods = {}

    def build(key):
        cfg = cfg_of(*key)
        paths = emit(cfg, "c", out / f"{key[0]}_{key[1]}")
        loader = next(p for p in paths if p.name.endswith("_c.py"))
        (np_path,) = emit(cfg, "numpy", out / f"{key[0]}_{key[1]}")
        np_mods[key] = load_module(np_path, f"np_{cfg.name}")
        return key, load_module(loader, f"c_{cfg.name}")

    with ThreadPoolExecutor(2) as pool:
        mods = dict(pool.map(build, keys))
    return mods, np_mods


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CONFIG_MATRIX))
def test_matches_pytorch_autograd(case, dtype, c_modules):
    mod = c_modules[0][(case, dtype)]
    cfg = cfg_of(case, dtype)
    params, x, gy = random_inputs(mod, seed=3)
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
    assert y.dtype == mod.DTYPE and gx.dtype == mod.DTYPE and y.shape == mod.OUT_SHAPE
    assert list(grads) == list(mod.PARAM_SHAPES) and len(grads) == 16
    assert all(grads[k].dtype == mod.DTYPE for k in grads)
    errs = {"y": rel_err(y, ry), "grad_x": rel_err(gx, rgx)}
    errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
    assert max(errs.values()) <= TOL[dtype], errs
    # forward after backward (shared workspace) is unchanged
    assert np.array_equal(mod.forward(params, x), y)


@pytest.mark.parametrize("case", ["conv5", "wide_tall"])
def test_padded_copy_path_matches_pytorch(case, tmp_path, cache_dir, monkeypatch):
    """Every matrix config is small enough for CONV_S1_RING (padded rows in a stack ring); with the
    ring disabled, stride-1 convs and their input gradients pad a copy and run CONV_S1 (the path
    of large layers). Both dtypes, against PyTorch autograd."""
    monkeypatch.setattr(c_steps, "RING_BYTES", 0)
    for dtype in DTYPES:
        cfg = cfg_of(case, dtype)
        paths = emit(cfg, "c", tmp_path / dtype)
        src = next(p for p in paths if p.suffix == ".c").read_text()
        assert "    CONV_S1_RING(" not in src and src.count("    CONV_S1(") >= 8
        mod = load_module(next(p for p in paths if p.name.endswith("_c.py")), f"c_pad_{case}_{dtype}")
        params, x, gy = random_inputs(mod, seed=3)
        grads, gx = mod.backward(params, x, gy)
        ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
        errs = [rel_err(mod.forward(params, x), ry), rel_err(gx, rgx)] + [rel_err(grads[k], rgrads[k]) for k in rgrads]
        assert max(errs) <= TOL[dtype], errs


def test_matrix_uses_the_ring_conv(c_modules):
    """The default emission of the matrix configs runs its padded convs through CONV_S1_RING."""
    mod = c_modules[0][("wide_tall", "float32")]
    src = open(mod._SOURCE).read()
    assert src.count("    CONV_S1_RING(") >= 8 and "kernel_pad(" in src  # the weight gradients still pad


@pytest.mark.parametrize("dtype", DTYPES)
def test_spec_pool_matches_numpy_target(dtype, c_modules):
    """Spec max-pool rule: against the NumPy target, on data where the spec rule and PyTorch's
    first-max rule disagree (torch's own max-pool backward gives a different grad_x)."""
    mods, np_mods = c_modules
    mod, ref = mods[("spec_pool", dtype)], np_mods[("spec_pool", dtype)]
    params, x, gy = random_inputs(mod, seed=5)
    grads, gx = mod.backward(params, x, gy)
    rgrads, rgx = ref.backward(params, x, gy)
    errs = [rel_err(gx, rgx)] + [rel_err(grads[k], rgrads[k]) for k in rgrads]
    assert max(errs) <= TOL[dtype]
    pt_cfg = dataclasses.replace(cfg_of("spec_pool", dtype), maxpool_backward="pytorch")
    ry, _, pt_gx = torch_reference(pt_cfg, params, x, gy)
    assert rel_err(mod.forward(params, x), ry) <= TOL[dtype]
    assert rel_err(gx, pt_gx) > 1e-3  # the rules really differ here, and C follows the spec


def test_pytorch_mode_matches_numpy_target_on_ties(c_modules):
    """Many exact ties in the pooled windows (inputs quantised, ReLU zeros): first-max rule."""
    mods, np_mods = c_modules
    for case in ("default", "overlap_pool", "pool3s2_up3s2_odd"):
        mod, ref = mods[(case, "float64")], np_mods[(case, "float64")]
        params, x, gy = random_inputs(mod, seed=11)
        x = np.round(x * 2) / 2
        params = {k: np.round(v * 8) / 8 for k, v in params.items()}
        grads, gx = mod.backward(params, x, gy)
        rgrads, rgx = ref.backward(params, x, gy)
        assert rel_err(gx, rgx) <= 1e-10 and all(rel_err(grads[k], rgrads[k]) <= 1e-10 for k in grads)


def test_nan_input_matches_numpy_target(c_modules):
    """NaN pixels in the input: the forward output matches torch (NaN propagates through the
    convolutions and max-pools), and every gradient matches the NumPy target NaN-aware (torch's
    own gradients differ at the ReLUs: it passes dy at z = NaN, the spec's [z > 0] does not).
    The max-pool routing at NaN (the window's last NaN, as in torch) is checked per kernel in
    test_numpy_target; in the network the zeroed ReLU gates around a NaN region absorb it."""
    mods, np_mods = c_modules
    nans = {"pool3s2_up3s2_odd": [(0, 3, 4), (0, 6, 1)],  # k 3, s 2: windows overlap
            "wide_tall": [(0, 3, 4), (1, 40, 41)]}
    for case, where in nans.items():
        mod, ref = mods[(case, "float64")], np_mods[(case, "float64")]
        params, x, gy = random_inputs(mod, seed=13)
        for at in where:
            x[at] = np.nan
        y = mod.forward(params, x)
        ry, _, _ = torch_reference(cfg_of(case, "float64"), params, x, gy)
        np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12 * np.nanmax(np.abs(ry), initial=1))
        grads, gx = mod.backward(params, x, gy)
        rgrads, rgx = ref.backward(params, x, gy)
        for k in rgrads:
            np.testing.assert_allclose(grads[k], rgrads[k], rtol=1e-10, atol=1e-12 * np.nanmax(np.abs(rgrads[k]), initial=1))
        np.testing.assert_allclose(gx, rgx, rtol=1e-10, atol=1e-12 * np.nanmax(np.abs(rgx), initial=1))
        assert np.isnan(ry).any() and np.isfinite(rgx).any()
    assert np.isfinite(ry).any()  # wide_tall is large enough that some outputs stay finite


def _testbench(tmp_path, cfg, flags, run=True):
    paths = emit(cfg, "c", tmp_path, testbench=True)
    c_files = [str(p) for p in paths if p.suffix == ".c"]
    exe = tmp_path / "tb"
    p = subprocess.run([CC, "-std=c99", *flags, *c_files, "-o", str(exe)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=120) if run else None


# case -> extra flags: every kernel variant runs under the sanitizers (16-byte vectors by default,
# the host's widest with -march=native, OpenMP threads, and the portable plain-C path; WG_PIX=512
# splits wide_tall's weight gradients into several pixel blocks, the last one short)
SANITIZED = {"pool3s2_up3s2_odd": [], "overlap_pool": ["-march=native", "-fopenmp"],
             "odd_channels_hw": ["-DUNETC_PORTABLE"], "up_padding": ["-march=native"], "spec_pool": [],
             "conv5": ["-march=native", "-fopenmp"], "stride2_1x1": ["-march=native"],
             "k1p1s3_1x1": ["-DUNETC_PORTABLE"], "wide_tall": ["-march=native", "-fopenmp", "-DWG_PIX=512"],
             "many_channels": ["-fopenmp"]}


def test_sanitizer_builds_run_clean(tmp_path):
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]

    def one(case):
        d = tmp_path / case
        d.mkdir()
        return case, _testbench(d, cfg_of(case, "float64"), flags + SANITIZED[case])

    with ThreadPoolExecutor(2) as pool:
        for case, r in pool.map(one, SANITIZED):
            assert r.returncode == 0 and r.stdout.startswith("PASS"), (case, r.stdout, r.stderr)
            assert "runtime error" not in r.stderr and "ERROR: AddressSanitizer" not in r.stderr, r.stderr


def test_clang_strict_warnings_and_testbench_pass(tmp_path):
    """The same strict build with clang (installed by .ci/run where the machine lacks it)."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed")
    cfg = load(EXAMPLES / "small.yaml")
    paths = emit(cfg, "c", tmp_path, testbench=True)
    for variant in ([], ["-march=native"], ["-DUNETC_PORTABLE"]):
        exe = tmp_path / "tb_clang"
        p = subprocess.run([clang, "-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *variant,
                            *[str(x) for x in paths if x.suffix == ".c"], "-o", str(exe)], capture_output=True, text=True)
        assert p.returncode == 0, (variant, p.stderr)
        r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("PASS"), (variant, r.stdout)


@pytest.mark.parametrize("variant", [[], ["-march=native", "-fopenmp"], ["-DUNETC_PORTABLE"]])
@pytest.mark.parametrize("dtype", DTYPES)
def test_strict_warnings_and_testbench_pass(dtype, variant, tmp_path):
    cfg = dataclasses.replace(load(EXAMPLES / "small.yaml"), dtype=dtype)
    r = _testbench(tmp_path, cfg, ["-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *variant])
    assert r.returncode == 0 and r.stdout.startswith("PASS max_rel_err="), r.stdout


@pytest.mark.parametrize("variant", [["-DUNETC_PORTABLE"], ["-march=native", "-fopenmp"]])
def test_outer_product_wgrad_strict_warnings_and_testbench_pass(variant, tmp_path):
    """many_channels emits WGRAD_OP (its vector kernel, and its plain-C fallback to WGRAD_S1)."""
    cfg = CONFIG_MATRIX["many_channels"]
    paths = emit(cfg, "c", tmp_path / "src")
    assert next(p for p in paths if p.suffix == ".c").read_text().count("WGRAD_OP(") > 2  # calls, not only the macros
    r = _testbench(tmp_path, cfg, ["-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *variant])
    assert r.returncode == 0 and r.stdout.startswith("PASS max_rel_err="), r.stdout


def test_testbench_detects_a_wrong_kernel(tmp_path):
    """The testbench can fail: corrupt one bias gradient in the generated source."""
    cfg = load(EXAMPLES / "small.yaml")
    paths = emit(cfg, "c", tmp_path, testbench=True)
    src = next(p for p in paths if p.name == f"{cfg.name}.c")
    text = src.read_text()
    needle = "out[c] = unet2_small_sum("
    assert needle in text
    src.write_text(text.replace(needle, "out[c] = 1.5f * unet2_small_sum(", 1))
    exe = tmp_path / "tb"
    subprocess.run([CC, "-std=c99", "-O1", *[str(p) for p in paths if p.suffix == ".c"], "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode != 0 and r.stdout.startswith("FAIL"), r.stdout


def test_loader_api_errors_and_noncontiguous(c_modules):
    mod = c_modules[0][("default", "float32")]
    params, x, gy = random_inputs(mod)
    assert_api_errors(mod, params, x)
    # non-contiguous inputs give the same results as contiguous ones
    xf = np.asfortranarray(x)
    pf = {k: np.asfortranarray(v) for k, v in params.items()}
    gyv = np.ascontiguousarray(np.flip(gy, axis=2)).copy()[:, :, ::-1]
    assert not xf.flags.c_contiguous and not gyv.flags.c_contiguous
    assert np.array_equal(mod.forward(pf, xf), mod.forward(params, x))
    g1, gx1 = mod.backward(pf, xf, gyv)
    g2, gx2 = mod.backward(params, x, np.ascontiguousarray(gyv))
    assert np.array_equal(gx1, gx2) and all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert mod.init_params(0).keys() == params.keys()


def _struct(mod, arrays):
    """A fresh _Params of the arrays (not the module's cached one: these tests edit it)."""
    return mod._Params(*[arrays[k].ctypes.data for k in mod.PARAM_SHAPES])


def test_param_struct_cache_follows_the_arrays(c_modules):
    """The loader reuses its _Params while the same array objects come back: in-place edits of a
    parameter, a new dict with new arrays, and earlier results must all stay correct."""
    mod = c_modules[0][("default", "float64")]
    params, x, gy = random_inputs(mod)
    y0 = mod.forward(params, x)
    grads0, _ = mod.backward(params, x, gy)
    kept = {k: v.copy() for k, v in grads0.items()}
    params["down1_1.weight"] *= 2  # in place: same object, same address
    y1 = mod.forward(params, x)
    fresh = {k: v.copy() for k, v in params.items()}  # new objects: the cache must miss ...
    params["down1_1.weight"] *= 3  # ... or it would read these changed values
    assert np.array_equal(mod.forward(fresh, x), y1) and not np.array_equal(y1, y0)
    grads1, gx1 = mod.backward(fresh, x, gy)
    assert all(np.array_equal(grads0[k], kept[k]) for k in kept)  # a new call does not overwrite old grads
    assert not np.array_equal(grads1["down1_1.weight"], grads0["down1_1.weight"])
    assert all(g.flags.c_contiguous and g.shape == mod.PARAM_SHAPES[k] for k, g in grads1.items())
    assert gx1.shape == mod.IN_SHAPE


def test_null_pointers_return_error_code(c_modules):
    mod = c_modules[0][("default", "float64")]
    params, x, gy = random_inputs(mod)
    lib = mod._lib
    ws = np.empty(mod.WORKSPACE_BYTES, np.uint8)
    y = np.empty(mod.OUT_SHAPE, mod.DTYPE)
    p = _struct(mod, params)
    fwd = lib.m_default_64_forward
    assert fwd(ctypes.byref(p), 1, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 0
    assert fwd(None, 1, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 1
    assert fwd(ctypes.byref(p), 1, x.ctypes.data, y.ctypes.data, None) == 1
    assert fwd(ctypes.byref(p), 0, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 2  # n <= 0
    assert fwd(ctypes.byref(p), -1, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 2
    assert lib.m_default_64_strerror(2) == b"the batch size n must be >= 1"
    p.upT_bias = None
    assert fwd(ctypes.byref(p), 1, x.ctypes.data, y.ctypes.data, ws.ctypes.data) == 1
    grads = {k: np.empty(s, mod.DTYPE) for k, s in mod.PARAM_SHAPES.items()}
    g = _struct(mod, grads)
    gx = np.empty(mod.IN_SHAPE, mod.DTYPE)
    bwd = lib.m_default_64_backward
    p = _struct(mod, params)
    assert bwd(ctypes.byref(p), 1, x.ctypes.data, gy.ctypes.data, ctypes.byref(g), gx.ctypes.data, ws.ctypes.data) == 0
    assert bwd(ctypes.byref(p), 1, x.ctypes.data, gy.ctypes.data, None, gx.ctypes.data, ws.ctypes.data) == 1
    assert bwd(ctypes.byref(p), 0, x.ctypes.data, gy.ctypes.data, ctypes.byref(g), gx.ctypes.data, ws.ctypes.data) == 2
    g.out1x1_weight = None
    assert bwd(ctypes.byref(p), 1, x.ctypes.data, gy.ctypes.data, ctypes.byref(g), gx.ctypes.data, ws.ctypes.data) == 1


def test_unaligned_workspace_works(c_modules):
    mod = c_modules[0][("odd_channels_hw", "float32")]
    params, x, _ = random_inputs(mod)
    want = mod.forward(params, x)
    buf = np.zeros(mod.WORKSPACE_BYTES + 3, np.uint8)
    y = np.empty(mod.OUT_SHAPE, mod.DTYPE)
    rc = mod._lib.m_odd_32_forward(ctypes.byref(_struct(mod, params)), 1, x.ctypes.data, y.ctypes.data,
                                   buf.ctypes.data + 3)
    assert rc == 0 and np.array_equal(y, want)


def test_workspace_plan_reuses_buffers():
    sp = specialize(CONFIG_MATRIX["default"])
    ws = c_target.workspace_bytes(sp)
    everything = sum(4 * int(np.prod(s)) for t, s in sp.shapes.items() if t not in ("x", "grad_y"))
    assert ws % 64 == 0 and ws < everything / 2
    fwd, bwd, scratch_off, total = c_target.layout(sp)
    assert total == ws and scratch_off % 64 == 0 and max(fwd.peak, bwd.peak) <= scratch_off < ws - 64
    files = c_target.files(sp, False)
    assert f"#define M_DEFAULT_WORKSPACE_BYTES {ws}u" in files["m_default.h"]


def test_emit_deterministic_and_standalone_loader():
    sp = specialize(CONFIG_MATRIX["pool3_up3"])
    a, b = c_target.files(sp, True), c_target.files(sp, True)
    assert a == b and set(a) == {"m_pool3.h", "m_pool3.c", "m_pool3_c.py", "m_pool3_main.c"}
    for text in a.values():
        assert "generated by unetc from" in text.splitlines()[0] and "do not edit" in text.splitlines()[0]
    loader = a["m_pool3_c.py"]
    imports = {line.split()[1].split(".")[0] for line in loader.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"ctypes", "hashlib", "operator", "os", "platform", "shlex", "shutil", "subprocess", "sys",
                       "tempfile", "threading", "time", "numpy"}, imports
    assert "malloc" not in a["m_pool3.c"]


def test_missing_compiler_message(tmp_path):
    paths = emit(CONFIG_MATRIX["default"], "c", tmp_path)
    loader = next(p for p in paths if p.name.endswith("_c.py"))
    env = {**os.environ, "CC": "no-such-cc-unetc", "UNETC_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(loader)!r})"],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "unetc: no C compiler found" in r.stderr and "install gcc" in r.stderr


def test_committed_c_files_in_sync(tmp_path):
    paths = emit(load(EXAMPLES / "small.yaml"), "c", tmp_path)
    assert sorted(p.name for p in paths) == ["unet2_small.c", "unet2_small.h", "unet2_small_c.py"]
    for path in paths:
        committed = ROOT / "generated" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"generated/{path.name} is stale: run `unetc emit examples/small.yaml --target c -o generated`")


def test_workspace_plan_checker_catches_overlap():
    sp = specialize(CONFIG_MATRIX["overlap_pool"])
    fwd, bwd = c_target.plans(sp, 4)
    c_target.verify(bwd, sp.shapes, bwd.offsets, 4)  # the real plan is sound
    with pytest.raises(AssertionError, match="workspace plan"):  # everything at offset 0
        c_target.verify(bwd, sp.shapes, {r: 0 for r in bwd.offsets}, 4)
    shifted = dict(bwd.offsets)  # one buffer moved 64 bytes into its neighbour
    r = max(shifted, key=shifted.get)
    shifted[r] -= 64
    with pytest.raises(AssertionError, match="workspace plan"):
        c_target.verify(bwd, sp.shapes, shifted, 4)
