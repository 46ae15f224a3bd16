"""±Inf and NaN inputs: the NumPy and C targets agree element for element on the forward output,
every parameter gradient and grad_x (issue: junk im2col columns once turned 0 * Inf into extra
NaNs in the NumPy weight gradients; Winograd tiles once spread a NaN in x over whole 4 x 4
output tiles of the C target's y)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil

import numpy as np
import pytest

from conftest import EXAMPLES
from conftest import assert_same_nonfinite as assert_same
from torch_ref import CONFIG_MATRIX
from unetc.config import Config, load
from unetc.emitter import emit

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (CI has one)")
CASES = {"small": load(EXAMPLES / "small.yaml"), "conv5": CONFIG_MATRIX["conv5"],
         "pool3_up3": CONFIG_MATRIX["pool3_up3"],
         # Winograd in the C target: F(4x4) and F(2x2) forward and input gradients in float32 (F(4x4)
         # only in float64), F(2x2) weight gradients (the test checks the build's tuning string)
         "winograd": Config(name="w", in_h=66, in_w=70, in_c=3, out_c=2, base_c=32)}
TOL = {"float64": 1e-12, "float32": 1e-5}


def _import(path):
    spec = importlib.util.spec_from_file_location(f"nf_{path.parent.name}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """case -> (numpy module, C module), float64 and float32 variants of each case."""
    cache = tmp_path_factory.mktemp("nf_cache")
    old = os.environ.get("UNETC_CACHE_DIR")
    os.environ["UNETC_CACHE_DIR"] = str(cache)
    mods = {}
    for case, base in CASES.items():
        for dtype in ("float64", "float32"):
            cfg = dataclasses.replace(base, dtype=dtype, name=f"nf_{case}_{dtype[-2:]}")
            out = tmp_path_factory.mktemp(f"nf_{case}_{dtype}")
            paths = emit(cfg, "numpy", out) + emit(cfg, "c", out)
            py = [p for p in paths if p.suffix == ".py"]
            mods[(case, dtype)] = tuple(_import(p) for p in sorted(py, key=lambda p: not p.stem.endswith("_numpy")))
    yield mods
    if old is None:
        os.environ.pop("UNETC_CACHE_DIR", None)
    else:
        os.environ["UNETC_CACHE_DIR"] = old


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("poison", ["inf_corner", "minus_inf", "nan", "nan_inside", "mixed"])
def test_targets_agree_on_nonfinite_inputs(targets, case, dtype, poison):
    np_mod, c_mod = targets[(case, dtype)]
    if case == "winograd":
        assert "F(2x2, 3x3) and F(4x4, 3x3)" in c_mod.tuning()
    rng = np.random.default_rng(5)
    params = np_mod.init_params(1)
    x = rng.standard_normal(np_mod.IN_SHAPE).astype(np_mod.DTYPE)
    gy = rng.standard_normal(np_mod.OUT_SHAPE).astype(np_mod.DTYPE)
    if poison == "inf_corner":
        x[0, 0, 0] = np.inf
    elif poison == "minus_inf":
        x[-1, x.shape[1] // 2, -1] = -np.inf
    elif poison == "nan":
        x[0, 1, 1] = np.nan
    elif poison == "nan_inside":  # away from the edges: its Winograd tile is one of the image's
        x[0, 5, 7] = np.nan
    else:
        x[rng.random(x.shape) < 0.05] = np.inf
        x[rng.random(x.shape) < 0.05] = -np.inf
        x[rng.random(x.shape) < 0.05] = np.nan
    with np.errstate(all="ignore"):
        y_np, (g_np, gx_np) = np_mod.forward(params, x), np_mod.backward(params, x, gy)
    y_c, (g_c, gx_c) = c_mod.forward(params, x), c_mod.backward(params, x, gy)
    tol = TOL[dtype]
    assert_same(y_np, y_c, "y", tol)
    assert_same(gx_np, gx_c, "grad_x", tol)
    for k in g_c:
        assert_same(g_np[k], g_c[k], k, tol)
