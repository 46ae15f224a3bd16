"""Property-based differential tests (hypothesis): the checker against the conftest integer model
and real PyTorch layers on random geometries; generated NumPy and C forward + backward against
float64 torch autograd on random valid configs; NumPy and C on inputs with +-inf and NaN against
each other and a torch reference with the spec's ReLU gate.

Profiles by UNETC_HYPOTHESIS_PROFILE: ci (default; deterministic, sized for the suite), dev (4x
the examples, random) and thorough (20x). UNETC_PROP_CFLAGS sets the C flags (default -O1 -std=c99,
fast to compile; e.g. "-O3 -march=native -fopenmp -std=c99" for the vector and OpenMP paths)."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import EXAMPLES, spec_truth
from prop_strategies import (budget, config_name, geometries, load_module, sized_configs, spec_gate_reference,
                             torch_float32_errors, torch_hypotheses, torch_network_runs)
from torch_ref import rel_err, torch_reference
from unetc import load
from unetc.checker import check
from unetc.config import Config
from unetc.emitter import emit
from unetc.torch_interop import torch_module

HYP = {"h_convH": "conv", "h_convW": "conv", "h_convH_down": "conv_down", "h_convW_down": "conv_down",
       "h_upH": "up", "h_upW": "up", "h_outH": "out", "h_outW": "out"}
TOL = {"float64": 1e-10, "float32": 1e-4}
CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (CI has one)")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch on one thread: its tiny ops are ~15x faster than with two threads fighting the
    other tests (and processes) for the cores."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---- 1. the checker against brute force and real PyTorch layers ----
def _valid_by_model(geo: dict, n: int) -> bool:
    return all(spec_truth(geo, n).values())


@given(geo=geometries())
@budget(60)
def test_checker_sets_match_model_and_torch_layers(geo):
    """Symbolic config: per hypothesis and per axis, n in the checker's set iff the integer model
    says so (n <= 120) iff torch's layers give the sizes (n <= 40) iff the real network runs with
    every conv size-preserving and the concat fitting (n <= 40)."""
    r = check(Config(**geo))
    assert sorted(HYP[c.name] for c in r.constraints) == sorted(HYP.values())
    net = torch_module(Config(in_c=1, out_c=1, base_c=1, **geo)).double()
    for n in range(1, 121):
        truth = spec_truth(geo, n)
        layers = torch_hypotheses(geo, n) if n <= 40 else None
        for c in r.constraints:
            key = HYP[c.name]
            assert (n in c.valid) == truth[key], f"{c.name}: n = {n} in checker set: {n in c.valid}; {geo}"
            if layers is not None:
                got, want = layers[key]
                assert (got is not None and got == want) == truth[key], f"{c.name}: n = {n}, torch {layers[key]}; {geo}"
        ok = all(truth.values())
        assert (n in r.valid["in_h"]) == ok and (n in r.valid["in_w"]) == ok, f"n = {n}: {truth}; {geo}"
        if n <= 40:
            assert torch_network_runs(net, n) == ok, f"real network at n = {n}: model {truth}; {geo}"


def _nearest_by_model(geo: dict, n: int, reach: int = 5000) -> list[int]:
    below = next((m for m in range(n - 1, 0, -1) if _valid_by_model(geo, m)), None)
    above = next((m for m in range(n + 1, n + reach) if _valid_by_model(geo, m)), None)
    return [m for m in (below, above) if m is not None]


@given(geo=geometries(), h=st.integers(1, 40), w=st.integers(1, 40))
@budget(40)
def test_concrete_verdicts_match_torch_sizes(geo, h, w):
    """Concrete config: each hypothesis holds iff the model says so; a violated one names the
    sizes torch's layers compute (or "undefined" where torch refuses) and the nearest valid
    sizes found by brute force."""
    r = check(Config(in_h=h, in_w=w, **geo))
    for c in r.constraints:
        n = h if c.axis == "in_h" else w
        key = HYP[c.name]
        got, want = torch_hypotheses(geo, n)[key]
        assert (c.status == "holds") == spec_truth(geo, n)[key], f"{c.name} {c.status} at {n}; {geo}"
        assert c.status in ("holds", "violated"), (c.name, c.status)
        assert (c.lhs, c.rhs) == (("undefined", str(n)) if got is None else (str(got), str(want))), \
            f"{c.name} at {n}: checker {c.lhs} = {c.rhs}, torch {got} = {want}; {geo}"
        near = re.search(r"nearest valid: (.*)$", c.message)
        if c.status == "violated" and got is not None:
            assert near, c.message
            said = [] if near.group(1) == "none" else [int(v) for v in near.group(1).split(", ")]
            assert said == _nearest_by_model(geo, n), f"{c.message}; brute force {_nearest_by_model(geo, n)}; {geo}"
    assert r.ok == (_valid_by_model(geo, h) and _valid_by_model(geo, w)), f"ok = {r.ok} at {h}x{w}; {geo}"


# ---- 2. generated code against torch autograd ----
@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("prop_emit")


@pytest.fixture(scope="module")
def c_env(tmp_path_factory):
    """UNETC_CACHE_DIR in a tmp dir and fast compile flags for this module's C imports."""
    keys = ("UNETC_CACHE_DIR", "UNETC_CFLAGS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["UNETC_CACHE_DIR"] = str(tmp_path_factory.mktemp("prop_cache"))
    os.environ["UNETC_CFLAGS"] = os.environ.get("UNETC_PROP_CFLAGS", "-O1 -std=c99")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_MODULES: dict[tuple[str, str], object] = {}


def emitted(cfg: Config, target: str, root):
    """The generated module of cfg for target ("numpy" or "c"), emitted and imported once."""
    key = (cfg.name, target)
    if key not in _MODULES:
        paths = emit(cfg, target, root / cfg.name)
        path = paths[0] if target == "numpy" else next(p for p in paths if p.name.endswith("_c.py"))
        _MODULES[key] = load_module(path, f"{cfg.name}_{target}")
    return _MODULES[key]


def _inputs(mod, seed: int):
    rng = np.random.default_rng(seed)
    params = mod.init_params(seed)
    x, gy = (rng.standard_normal(shape).astype(mod.DTYPE) for shape in (mod.IN_SHAPE, mod.OUT_SHAPE))
    return params, x, gy


def assert_matches_autograd(mod, cfg: Config, seed: int) -> None:
    """forward, the 16 parameter gradients and grad_x against torch float64 autograd."""
    params, x, gy = _inputs(mod, seed)
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
    assert y.shape == ry.shape and gx.shape == rgx.shape and y.dtype == gx.dtype == np.dtype(cfg.dtype)
    assert list(grads) == list(rgrads) and len(grads) == 16
    errs = {"y": rel_err(y, ry), "grad_x": rel_err(gx, rgx)}
    errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
    worst = max(errs, key=errs.get)
    if errs[worst] <= TOL[cfg.dtype]:
        return
    # float32 beyond 1e-4 (1 example in ~1500: a 2-element weight gradient summing ~1000 terms
    # that cancel) only up to 1e-3 and where PyTorch's own float32 is at least a tenth as far off
    # the float64 reference on that tensor: rounding, not a wrong kernel (those miss by >> 10x)
    assert cfg.dtype == "float32", f"{worst}: rel err {errs[worst]:.3g} > {TOL[cfg.dtype]:g}; {cfg.to_dict()}"
    torch32 = torch_float32_errors(cfg, params, x, gy, (ry, rgrads, rgx))
    bad = {k: (e, torch32[k]) for k, e in errs.items() if e > TOL["float32"] and (e > 1e-3 or e > 10 * torch32[k])}
    assert not bad, f"rel err (ours, torch float32) {bad} > {TOL['float32']:g}; {cfg.to_dict()}"


@given(cfg=sized_configs(), seed=st.integers(0, 2**16))
@budget(25)
def test_numpy_matches_torch_autograd(cfg, seed, out_root):
    assert_matches_autograd(emitted(cfg, "numpy", out_root), cfg, seed)


# ---- 3. non-finite inputs: targets against each other and the spec-gated reference ----
def assert_same_values(got, ref, tol: float, what: str) -> None:
    """Element for element: NaN where ref is NaN, the same infinities, finite values within tol
    relative to ref's largest finite magnitude."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    for name, mask in (("NaN", np.isnan), ("inf", np.isposinf), ("-inf", np.isneginf)):
        diff = [tuple(int(i) for i in at) for at in np.argwhere(mask(got) != mask(ref))]
        assert not diff, (f"{what}: {name} pattern differs at {len(diff)} elements, e.g. "
                          f"{diff[0]}: got {got[diff[0]]}, want {ref[diff[0]]}; "
                          f"{name}s: got {int(mask(got).sum())}, want {int(mask(ref).sum())}")
    fin = np.isfinite(ref)
    scale = max(float(np.max(np.abs(ref[fin]), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(got[fin] - ref[fin]), initial=0.0)) / scale
    assert err <= tol, f"{what}: finite values off by rel err {err:.3g} > {tol:g}"


def _small(dtype: str) -> Config:
    """examples/small.yaml, the config of issue 10 item 8 (x[0, 0, 0] = inf)."""
    c = dict(load(EXAMPLES / "small.yaml").to_dict(), dtype=dtype)
    del c["name"]
    return Config(name=config_name(c), **c)


SPOTS = st.tuples(st.integers(0, 7), st.integers(0, 39), st.integers(0, 39),
                  st.sampled_from([np.inf, -np.inf, np.nan]))


def _nonfinite_run(mod, cfg: Config, spots, seed: int):
    """(x, params, grad_y, results): random inputs, spots (c, i, j, value; indices taken modulo
    the shape) written into x; results = (y, grads, grad_x) of mod."""
    params, x, gy = _inputs(mod, seed)
    for c, i, j, v in spots:
        x[c % cfg.in_c, i % cfg.in_h, j % cfg.in_w] = v
    with np.errstate(invalid="ignore", over="ignore"):  # NumPy's warnings on inf - inf, 0 * inf
        y = mod.forward(params, x)
        grads, gx = mod.backward(params, x, gy)
    return params, x, gy, (y, grads, gx)


def assert_results_agree(got, ref, tol: float, what: str) -> None:
    assert_same_values(got[0], ref[0], tol, f"{what}: y")
    for k in ref[1]:
        assert_same_values(got[1][k], ref[1][k], tol, f"{what}: grad {k}")
    assert_same_values(got[2], ref[2], tol, f"{what}: grad_x")


@example(cfg=_small("float32"), spots=[(0, 0, 0, np.inf)], seed=0)
@given(cfg=sized_configs(), spots=st.lists(SPOTS, min_size=1, max_size=3), seed=st.integers(0, 2**16))
@budget(15)
def test_numpy_nonfinite_matches_spec_reference(cfg, spots, seed, out_root):
    """NumPy target, x with +-inf/NaN: every output and gradient element for element (NaN and
    inf patterns exact) against float64 autograd with the ReLU gate [z > 0]."""
    mod = emitted(cfg, "numpy", out_root)
    params, x, gy, got = _nonfinite_run(mod, cfg, spots, seed)
    assert_results_agree(got, spec_gate_reference(cfg, params, x, gy), TOL[cfg.dtype], f"numpy {cfg.to_dict()}")


@needs_cc
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
@budget(4, shrink=False)
def test_c_matches_autograd_and_numpy_on_nonfinite(dtype, data, out_root, c_env):
    """C target (one compile per example serves both properties): finite inputs against torch
    autograd; then x with +-inf/NaN against the spec-gated reference and, element for element,
    against the NumPy target on the same inputs."""
    cfg = data.draw(sized_configs(dtype=dtype), label="cfg")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    mod = emitted(cfg, "c", out_root)
    assert_matches_autograd(mod, cfg, seed)
    assert_nonfinite_c_matches(mod, cfg, data.draw(st.lists(SPOTS, min_size=1, max_size=3), label="spots"),
                               seed, out_root)


@needs_cc
def test_c_nonfinite_issue_example(out_root, c_env):
    """Issue 10 item 8 as reported: examples/small.yaml, x[0, 0, 0] = inf."""
    cfg = _small("float32")
    assert_nonfinite_c_matches(emitted(cfg, "c", out_root), cfg, [(0, 0, 0, np.inf)], 0, out_root)


def assert_nonfinite_c_matches(mod, cfg: Config, spots, seed: int, out_root) -> None:
    params, x, gy, got = _nonfinite_run(mod, cfg, spots, seed)
    assert_results_agree(got, spec_gate_reference(cfg, params, x, gy), TOL[cfg.dtype], f"c {cfg.to_dict()}")
    _, _, _, ref = _nonfinite_run(emitted(cfg, "numpy", out_root), cfg, spots, seed)
    assert_results_agree(got, ref, TOL[cfg.dtype], f"c vs numpy {cfg.to_dict()}")


def test_spec_gate_reference_differs_from_torch_gate():
    """The reference really gates at NaN: with a NaN pixel, torch's own relu passes dy where z is
    NaN, the spec's gate does not, so grad_x (finite in both) differs; on finite inputs both are
    torch autograd."""
    cfg = dataclasses.replace(_small("float64"), name="gate_probe")
    rng = np.random.default_rng(0)
    params = {k: v.detach().numpy() for k, v in torch_module(cfg).double().state_dict().items()}
    x = rng.standard_normal((cfg.in_c, cfg.in_h, cfg.in_w))
    gy = rng.standard_normal((cfg.out_c, cfg.in_h, cfg.in_w))
    spec, torch_gate = spec_gate_reference(cfg, params, x, gy), torch_reference(cfg, params, x, gy)
    assert all(rel_err(spec[1][k], torch_gate[1][k]) <= 1e-14 for k in spec[1])
    assert rel_err(spec[0], torch_gate[0]) <= 1e-14 and rel_err(spec[2], torch_gate[2]) <= 1e-14
    x[0, 5, 5] = np.nan
    spec, torch_gate = spec_gate_reference(cfg, params, x, gy), torch_reference(cfg, params, x, gy)
    assert np.isfinite(spec[2]).all() and np.isfinite(torch_gate[2]).all()
    assert rel_err(spec[2], torch_gate[2]) > 1e-3
