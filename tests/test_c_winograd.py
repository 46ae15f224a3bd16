"""C target, Winograd F(2x2, 3x3) and F(4x4, 3x3) (unetc/targets/c_winograd.py,
templates/c_winograd.j2): a config whose 3x3 convolutions and input gradients run as Winograd,
forward + 16 parameter gradients + grad_x against PyTorch autograd (float64 1e-10, float32 1e-4), specialised and
size-polymorphic (odd sizes: partial edge tiles), the same build with -DUNETC_NO_WINOGRAD (the
direct path), a strict-warning + sanitizer testbench, and the rule (direct for few channels,
tiny images, other kernels)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy

from prop_strategies import load_module
from torch_ref import rel_err, torch_reference
from unetc.config import Config
from unetc.emitter import write_all
from unetc.specialize import specialize
from unetc.targets import c_target, c_winograd

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (CI has one)")
TOL = {"float64": 1e-10, "float32": 1e-4}
FAST = "-O1 -march=native -fopenmp -std=c99"  # compiles ~2.5x faster than the default -O3
# 66 x 70: 32 and 64 channels at 66x70 and 33x35 (odd: the last tile row / column is half outside)
BASE = dict(in_c=3, out_c=2, base_c=32)


def calls(src: str, kernel: str, first: str = r"\d") -> int:
    """Calls of the macro kernel in C source src whose arguments start with first (a regex; by
    default any literal: the definitions start with a parameter name)."""
    return len(re.findall(rf"\b{kernel}\({first}", src))


def wino_cfg(dtype: str, poly: bool = False) -> Config:
    h, w = ("H", "W") if poly else (66, 70)
    return Config(name=f"wino_{'poly' if poly else 'spec'}_{dtype[-2:]}", dtype=dtype, in_h=h, in_w=w, **BASE)



@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(cfg, extra C flags) -> (imported C module, C source text); shared by the module's tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    made = {}

    def make(cfg: Config, extra: str = ""):
        key = (cfg.name, extra)
        if key not in made:
            out = tmp_path_factory.mktemp(cfg.name)
            write_all(out, c_target.files(specialize(cfg), False))
            mp.setenv("UNETC_CFLAGS", f"{FAST} {extra}".strip())
            mod = load_module(out / f"{cfg.name}_c.py", f"cw_{cfg.name}_{len(made)}")
            made[key] = mod, (out / f"{cfg.name}.c").read_text()
        return made[key]

    yield make
    mp.undo()


def relu_margin(cfg: Config, params: dict, x: np.ndarray) -> float:
    """Smallest |pre-activation| of any relu of the float64 torch network, relative to its layer's
    largest: where it is below float32 rounding, float32 code may gate that relu the other way
    than float64 (a whole gradient entry flips): the input is ill-conditioned, not the code wrong."""
    import torch

    relu, worst = torch.relu, [1.0]

    def watch(t):
        a = t.detach().abs()
        worst[0] = min(worst[0], float(a.min() / a.max()))
        return relu(t)

    torch.relu = watch
    try:
        torch_reference(cfg, params, x, np.zeros((cfg.out_c, x.shape[1], x.shape[2])))
    finally:
        torch.relu = relu
    return worst[0]


def errors(mod, cfg: Config, h: int, w: int, seed: int = 3) -> tuple[dict, tuple]:
    """Relative errors of y, grad_x and the 16 parameter gradients against torch float64 at h x w,
    and the C results (y, grad_x). float32: the first seed from ``seed`` whose relu margins are
    above 1e-6 (see relu_margin; about one seed in eight at 66x70)."""
    cfg = cfg.with_sizes(h, w)
    for _ in range(100):
        rng = np.random.default_rng(seed)
        params = mod.init_params(seed)
        x = rng.standard_normal((cfg.in_c, h, w)).astype(mod.DTYPE)
        gy = rng.standard_normal((cfg.out_c, h, w)).astype(mod.DTYPE)
        if mod.DTYPE == np.float64 or relu_margin(cfg, params, x) > 1e-6:
            break
        seed += 1000
    else:
        raise AssertionError("no well-conditioned float32 input in 100 seeds")
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
    assert len(grads) == 16 and y.shape == (cfg.out_c, h, w) and gx.shape == x.shape
    errs = {"y": rel_err(y, ry), "grad_x": rel_err(gx, rgx), **{k: rel_err(grads[k], rgrads[k]) for k in rgrads}}
    return errs, (y, gx)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_specialised_winograd_matches_pytorch(build, dtype):
    """Winograd in the 3x3 layers with >= 16 (float32) / 32 (float64) channels both ways (forward
    and input gradient, both levels: float32 F(4x4) at 66x70 and F(2x2) at 33x35, float64 F(4x4)
    at both); float32: the -DUNETC_NO_WINOGRAD build of the same source (direct convolution) also
    matches, and differs from the Winograd one (so the Winograd path did run)."""
    cfg = wino_cfg(dtype)
    mod, src = build(cfg)
    if dtype == "float32":
        assert calls(src, "WINO4") >= 4 and calls(src, "WINO2") >= 4  # 66x70 and 33x35
        assert "winograd F(2x2, 3x3) and F(4x4, 3x3)" in mod.tuning()
    else:
        assert calls(src, "WINO4") >= 10  # forward and input gradients, both levels
    assert calls(src, "WINO2_WGRAD") >= 5  # the weight gradients of those layers
    errs, (y, gx) = errors(mod, cfg, 66, 70)
    assert max(errs.values()) <= TOL[dtype], errs
    if dtype == "float64":  # one dtype suffices to show the switch (saves a compile)
        return
    off, _ = build(cfg, "-DUNETC_NO_WINOGRAD")
    errs_off, (y_off, gx_off) = errors(off, cfg, 66, 70)
    assert max(errs_off.values()) <= TOL[dtype], errs_off
    assert not np.array_equal(y, y_off) and not np.array_equal(gx, gx_off)


def test_f4_and_f2_both_match_pytorch(build, monkeypatch):
    """float32, 66x70 (F(4x4) at level 1, partial edge tiles of 2 and 2 rows / columns): the same
    config emitted with F(2x2) only (c_winograd.F4 = False) also matches PyTorch, and its level-1
    results differ in bits from the F(4x4) build (so WINO4 ran, and is not F(2x2) renamed)."""
    cfg = wino_cfg("float32")
    mod, _ = build(cfg)
    monkeypatch.setattr(c_winograd, "F4", False)
    cfg2 = Config(name="wino_f2only_32", dtype="float32", in_h=66, in_w=70, **BASE)
    f2, src2 = build(cfg2)
    assert calls(src2, "WINO4") == 0 and calls(src2, "WINO2") >= 10
    errs, (y, gx) = errors(mod, cfg, 66, 70)
    errs2, (y2, gx2) = errors(f2, cfg2, 66, 70)
    assert max(errs.values()) <= TOL["float32"], errs
    assert max(errs2.values()) <= TOL["float32"], errs2
    assert not np.array_equal(y, y2) and not np.array_equal(gx, gx2)


def test_winograd_weight_gradient_partial_panels(build):
    """WINO2_WGRAD with 40 channels (5 AVX2 vectors: a half-width last panel of Z; 40 = 6 x 6 + 4:
    a partial channel tile) and odd tile counts, float32, against PyTorch; the same source built
    with -DUNETC_NO_WINOGRAD_WGRAD (direct weight gradients, Winograd forward) also matches, and
    its weight gradients differ in bits (so WINO2_WGRAD did run)."""
    cfg = Config(name="wino_wg40", dtype="float32", in_h=34, in_w=38, in_c=3, out_c=2, base_c=40)
    mod, src = build(cfg)
    assert calls(src, "WINO2_WGRAD", "40, 40, 34, 38,") == 2  # down1_2, up1_2
    errs, _ = errors(mod, cfg, 34, 38)
    assert max(errs.values()) <= TOL["float32"], errs
    off, _ = build(cfg, "-DUNETC_NO_WINOGRAD_WGRAD")
    errs_off, _ = errors(off, cfg, 34, 38)
    assert max(errs_off.values()) <= TOL["float32"], errs_off
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 34, 38)).astype(np.float32)
    gy = rng.standard_normal((2, 34, 38)).astype(np.float32)
    p = mod.init_params(0)
    g_on, g_off = mod.backward(p, x, gy)[0], off.backward(p, x, gy)[0]
    assert not np.array_equal(g_on["down1_2.weight"], g_off["down1_2.weight"])
    assert np.array_equal(g_on["down2_2.weight"], g_off["down2_2.weight"])  # 17x19: direct in both


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_polymorphic_winograd_matches_pytorch(build, dtype):
    """One symbolic emit (F(4x4) or F(2x2) and direct convolution chosen at run time) at sizes
    with odd lower levels (33x35, 35x31: partial tiles; blocks spanning tile rows), with rows of
    75 tiles (20x300: runs inside the image, transformed in place) and at a size where the
    run-time rule keeps direct convolution."""
    cfg = wino_cfg(dtype, poly=True)
    mod, src = build(cfg)
    assert "WINO_ON && (" in src  # the pixel rule is decided at run time
    assert calls(src, "WINO4") and calls(src, "WINO2")  # ... and the tile size
    for h, w in ((66, 70), (70, 62), (20, 300), (16, 20)):
        errs, _ = errors(mod, cfg, h, w)
        assert max(errs.values()) <= TOL[dtype], (h, w, errs)


def test_winograd_strict_warnings_and_sanitizers(tmp_path, monkeypatch):
    """The testbench of a Winograd config (pixel thresholds lowered: F(4x4) at 10x300, F(2x2) at
    5x150, odd; runs of tiles inside the image, read in place):
    -Wall -Wextra -Wpedantic -Werror, address and undefined-behaviour sanitizers, OpenMP threads;
    PASS against the emit-time reference."""
    monkeypatch.setattr(c_winograd, "WINO_MIN_PIXELS", 64)
    monkeypatch.setattr(c_winograd, "WINO_FEW_PIXELS", {4: 64, 8: 64})
    monkeypatch.setattr(c_winograd, "F4_MIN_PIXELS", {4: 1000, 8: 1000})  # F(4x4) at 10x300, F(2x2) at 5x150
    cfg = Config(name="wino_tb", dtype="float64", in_h=10, in_w=300, **BASE)  # rows of 75 tiles: in-place runs
    write_all(tmp_path, c_target.files(specialize(cfg), True))
    text = (tmp_path / "wino_tb.c").read_text()
    assert calls(text, "WINO4") >= 4 and calls(text, "WINO2") >= 4
    assert calls(text, "WINO2_WGRAD") >= 5
    exe = tmp_path / "tb"
    flags = ["-O1", "-g", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-march=native", "-fopenmp",
             "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    p = subprocess.run([CC, "-std=c99", *flags, str(tmp_path / "wino_tb.c"), str(tmp_path / "wino_tb_main.c"),
                        "-o", str(exe)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0 and r.stdout.startswith("PASS"), (r.stdout, r.stderr)


def test_rule_keeps_direct_convolution_where_winograd_loses():
    """Direct for few channels, tiny images, kernels other than 3; a run-time condition for
    symbolic sizes; the small matrix configs emit no Winograd call."""
    use = c_winograd.use_winograd
    assert use(64, 64, (128, 128), 3) is True and use(32, 64, (33, 35), 3) is True
    assert use(16, 32, (64, 64), 3) is True and use(16, 32, (63, 64), 3) is False  # 16 channels: >= 4096 pixels
    assert use(16, 32, (33, 35), 3, 8) is False and use(32, 32, (33, 35), 3, 8) is True  # float64
    assert use(8, 8, (64, 64), 3) is False and use(3, 16, (128, 128), 3) is False
    assert use(64, 8, (128, 128), 3) is False and use(128, 128, (16, 16), 3) is False
    assert use(64, 64, (128, 128), 5) is False
    h, w = sympy.symbols("H W", positive=True, integer=True)
    assert isinstance(use(32, 32, (h, w), 3), sympy.Basic) and use(8, 8, (h, w), 3) is False
    tile = c_winograd.tile  # F(4x4) from 4096 output pixels (float32) / 1024 (float64), and symbolic
    assert tile((64, 64)) == 4 and tile((64, 63)) == 2 and tile((32, 32), 8) == 4 and tile((31, 33), 8) == 2
    assert isinstance(tile((h, w)), sympy.Basic)  # decided at run time
    tiny = Config(name="wino_tiny", in_c=1, out_c=2, in_h=64, in_w=64, base_c=4)  # 4 and 8 channels
    assert calls(c_target.files(specialize(tiny))["wino_tiny.c"], r"WINO[24]\w*") == 0
    small = Config(name="wino_small", in_c=1, out_c=2, in_h=64, in_w=64, base_c=8)  # 16 -> 16 at 32x32: direct
    assert calls(c_target.files(specialize(small))["wino_small.c"], r"WINO[24]\w*") == 0
    b16 = Config(name="wino_b16", in_c=1, out_c=2, in_h=128, in_w=128, base_c=16)  # 16 channels at 128x128
    src16 = c_target.files(specialize(b16))["wino_b16.c"]
    assert calls(src16, "WINO4", "16, 16, 128, 128,") == 4  # down1_2, up1_2 and their input gradients
    assert calls(src16, "WINO2_WGRAD") == calls(src16, "WINO2_WGRAD", "32, 32, 64, 64,") == 1  # down2_2 only
    wg = c_winograd.use_winograd_wgrad
    assert wg(64, 64, (128, 128), 3) is True and wg(128, 32, (32, 32), 3) is True
    assert wg(16, 64, (128, 128), 3) is False and wg(64, 64, (16, 16), 3) is False
    assert wg(32, 64, (64, 64), 3, 8) is True and wg(16, 64, (64, 64), 3, 8) is False  # float64
    assert wg(64, 64, (128, 128), 1) is False and isinstance(wg(64, 64, (h, w), 3), sympy.Basic)


@pytest.mark.parametrize("dtype,poly,variant", [("float32", False, []), ("float32", False, ["-march=x86-64-v4"]),
                                                ("float64", True, ["-march=native", "-fopenmp"]),
                                                ("float64", True, ["-DUNETC_PORTABLE"])])
def test_winograd_config_compiles_warning_free(tmp_path, monkeypatch, dtype, poly, variant):
    """gcc -O2 -Wall -Wextra -Wpedantic -Werror -c on a config with Winograd forward, input and
    weight gradients (40 channels: partial panels; level 2 at 17x19, whose 323-pixel bias sum once
    tripped -Waggressive-loop-optimizations), per ISA (x86-64-v4: compile only) and plain C;
    F(2x2) in the default-ISA float32 build, F(4x4) in the others (beside F(2x2), chosen at run
    time, in the symbolic float64 ones)."""
    if variant:
        monkeypatch.setattr(c_winograd, "F4_MIN_PIXELS", {4: 1024, 8: 1024})
    h, w = ("H", "W") if poly else (34, 38)
    cfg = Config(name="wino_warn", dtype=dtype, in_h=h, in_w=w, in_c=3, out_c=2, base_c=40)
    write_all(tmp_path, c_target.files(specialize(cfg), False))
    src = tmp_path / "wino_warn.c"
    assert "WINO2_WGRAD(40, 40, " in src.read_text()  # down1_2's weight gradient runs as Winograd
    assert bool(calls(src.read_text(), "WINO4", "40, 40, ")) == bool(variant)
    p = subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *variant, "-c", str(src),
                        "-o", str(tmp_path / "o.o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[:2000]
