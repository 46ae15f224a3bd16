"""NumPy target: forward, 16 parameter gradients and grad_x against PyTorch autograd, finite
differences, the spec's max-pool rule, API errors, determinism and the committed copy."""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT, assert_api_errors
from torch_ref import CONFIG_MATRIX, random_inputs, rel_err, spec_select, torch_reference
from unetc.config import Config, load
from unetc.emitter import emit
from unetc.errors import ShapeError


def load_module(path, name=None):
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def emitted(cfg: Config, tmp_path):
    (path,) = emit(cfg, "numpy", tmp_path)
    return load_module(path, f"{cfg.name}_{cfg.dtype}")


TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(k for k in CONFIG_MATRIX if k != "spec_pool"))
def test_matches_pytorch_autograd(case, dtype, tmp_path):
    cfg = dataclasses.replace(CONFIG_MATRIX[case], dtype=dtype)
    mod = emitted(cfg, tmp_path)
    params, x, gy = random_inputs(mod, seed=3)
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
    assert y.dtype == mod.DTYPE and gx.dtype == mod.DTYPE
    assert list(grads) == list(mod.PARAM_SHAPES) and len(grads) == 16
    errs = {"y": rel_err(y, ry), "grad_x": rel_err(gx, rgx)}
    errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
    assert all(grads[k].dtype == mod.DTYPE for k in grads)
    assert max(errs.values()) <= TOL[dtype], errs


def test_finite_differences_tiny_float64(tmp_path):
    cfg = Config(name="fd", dtype="float64", in_c=1, out_c=1, in_h=4, in_w=4, base_c=2)
    mod = emitted(cfg, tmp_path)
    params, x, gy = random_inputs(mod, seed=7)
    grads, gx = mod.backward(params, x, gy)
    loss = lambda p, xx: float(np.sum(mod.forward(p, xx) * gy))
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in params:
        for _ in range(3):
            idx = tuple(rng.integers(0, n) for n in params[name].shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (loss(plus, x) - loss(minus, x)) / (2 * eps)
            assert abs(fd - grads[name][idx]) <= 1e-6 * max(1.0, abs(fd)), (name, idx, fd, grads[name][idx])
    for _ in range(5):
        idx = tuple(rng.integers(0, n) for n in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd = (loss(params, xp) - loss(params, xm)) / (2 * eps)
        assert abs(fd - gx[idx]) <= 1e-6 * max(1.0, abs(fd))


def pool_only_grad(mod, kind, x, dy, k, s):
    return getattr(mod, f"_maxpool2d_grad_{kind}")(x, dy, k, s)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 3), (3, 1), (3, 2)])
def test_spec_maxpool_rule_matches_transcription(k, s, tmp_path):
    mod = emitted(CONFIG_MATRIX["spec_pool"], tmp_path)
    rng = np.random.default_rng(k * 10 + s)
    # values with many ties (ReLU zeros and repeated small integers)
    x = np.maximum(rng.integers(-2, 3, size=(3, 9, 8)), 0).astype(np.float64)
    ho, wo = (9 - k) // s + 1, (8 - k) // s + 1
    dy = rng.standard_normal((3, ho, wo))
    want = np.zeros_like(x)
    for c in range(3):
        for i in range(ho):
            for j in range(wo):
                r, cc = spec_select(x[c, i * s:i * s + k, j * s:j * s + k])
                want[c, i * s + r, j * s + cc] += dy[c, i, j]
    got = pool_only_grad(mod, "spec", x, dy, k, s)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)  # only summation order may differ


def test_spec_window_example_routes_to_three(tmp_path):
    mod = emitted(CONFIG_MATRIX["spec_pool"], tmp_path)
    x = np.array([[[0.0, 0.0], [5.0, 3.0]]])
    dy = np.array([[[1.0]]])
    assert spec_select(x[0]) == (1, 1)
    assert np.array_equal(pool_only_grad(mod, "spec", x, dy, 2, 2)[0], [[0, 0], [0, 1]])
    assert np.array_equal(pool_only_grad(mod, "pytorch", x, dy, 2, 2)[0], [[0, 0], [1, 0]])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spec_mode_network_matches_transcribed_rule(dtype, tmp_path):
    """The whole network in spec mode against autograd with the spec's routing transcribed;
    the data must hit windows where the spec rule and argmax disagree."""
    cfg = dataclasses.replace(CONFIG_MATRIX["spec_pool"], dtype=dtype)
    mod = emitted(cfg, tmp_path)
    params, x, gy = random_inputs(mod, seed=5)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_reference(cfg, params, x, gy)
    errs = [rel_err(gx, rgx)] + [rel_err(grads[k], rgrads[k]) for k in rgrads]
    assert max(errs) <= TOL[dtype]
    pt_cfg = dataclasses.replace(cfg, maxpool_backward="pytorch")
    _, _, pt_gx = torch_reference(pt_cfg, params, x, gy)
    assert rel_err(gx, pt_gx) > 1e-3  # the two rules really differ on this input


def test_pytorch_rule_takes_first_max_on_ties(tmp_path):
    mod = emitted(CONFIG_MATRIX["default"], tmp_path)
    x = np.array([[[1.0, 1.0], [1.0, 0.0]]], dtype=np.float32)
    dy = np.array([[[2.0]]], dtype=np.float32)
    assert np.array_equal(pool_only_grad(mod, "pytorch", x, dy, 2, 2)[0], [[2, 0], [0, 0]])


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("k,s", [(2, 2), (3, 3), (3, 1), (3, 2), (2, 3)])
def test_pytorch_maxpool_rule_matches_torch(k, s, with_nan, tmp_path):
    """The max-pool backward kernel against torch's, on windows full of ties (and NaNs: torch
    routes to the last NaN of a window), for disjoint, overlapping and gapped windows."""
    import torch

    mod = emitted(CONFIG_MATRIX["default"], tmp_path)
    rng = np.random.default_rng(k * 10 + s)
    x = np.maximum(rng.integers(-2, 3, size=(3, 10, 9)), 0).astype(np.float64)
    if with_nan:
        x[rng.random(x.shape) < 0.15] = np.nan
    xt = torch.tensor(x[None], requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, k, s)
    dy = rng.standard_normal(yt.shape[1:])
    yt.backward(torch.tensor(dy[None]))
    got = pool_only_grad(mod, "pytorch", x, dy, k, s)
    np.testing.assert_allclose(got, xt.grad.numpy()[0], rtol=1e-13, atol=1e-14)
    assert np.isnan(yt.detach().numpy()).any() == with_nan


def test_api_errors(tmp_path):
    mod = emitted(CONFIG_MATRIX["default"], tmp_path)
    params, x, gy = random_inputs(mod)
    assert_api_errors(mod, params, x)


def test_init_params_matches_pytorch_distribution(tmp_path):
    mod = emitted(Config(name="init", in_h=8, in_w=8, base_c=16), tmp_path)
    p = mod.init_params(0)
    assert list(p) == list(mod.PARAM_SHAPES)
    for name, shape in mod.PARAM_SHAPES.items():
        w = mod.PARAM_SHAPES[name.rsplit(".", 1)[0] + ".weight"]
        bound = 1 / np.sqrt(w[1] * w[2] * w[3])
        assert p[name].shape == shape and np.abs(p[name]).max() <= bound
    assert np.abs(p["down2_2.weight"]).max() > 0.9 / np.sqrt(32 * 9)  # fills the range
    assert all(np.array_equal(p[k], mod.init_params(0)[k]) for k in p)


def test_emit_refuses_invalid_sizes_and_empty_valid_sets(tmp_path):
    with pytest.raises(ShapeError, match="in_h = 255 fails h_upH"):
        emit(Config(in_h=255, in_w=8), "numpy", tmp_path)
    with pytest.raises(ShapeError, match=r"h_convH \(down1_1 gives H - 2, expected H\) holds for no in_h"):
        emit(Config(conv_padding=0), "numpy", tmp_path)  # symbolic, but no size is valid
    assert list(tmp_path.iterdir()) == []


def test_emit_is_deterministic(tmp_path):
    cfg = CONFIG_MATRIX["pool3_up3"]
    a = emit(cfg, "numpy", tmp_path / "a")[0].read_bytes()
    b = emit(cfg, "numpy", tmp_path / "b")[0].read_bytes()
    assert a == b and a.startswith(b"# generated by unetc from")
    assert b"do not edit" in a.splitlines()[0]


def test_committed_numpy_module_in_sync(tmp_path):
    (path,) = emit(load(EXAMPLES / "small.yaml"), "numpy", tmp_path)
    committed = ROOT / "generated" / path.name
    assert committed.read_bytes() == path.read_bytes(), (
        "generated/ is stale: run `unetc emit examples/small.yaml --target numpy`")


def test_cli_emit_errors_are_one_line(tmp_path, tmp_config):
    bad = tmp_config("conv_padding: 0\n")  # symbolic sizes, none of them valid
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "unetc", "emit", str(bad), "--target", "numpy", "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("unetc: error: ") and p.stderr.count("\n") == 1
    assert "holds for no in_h" in p.stderr and not out.exists()
    p = subprocess.run([sys.executable, "-m", "unetc", "emit", str(EXAMPLES / "odd_255.yaml"),
                        "--target", "numpy", "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 1 and "h_upH" in p.stderr and not out.exists()


def test_torch_module_state_dict_is_param_shapes(tmp_path):
    """unetc.torch_interop.torch_module: state_dict keys and layouts are PARAM_SHAPES."""
    from unetc.torch_interop import torch_module

    cfg = CONFIG_MATRIX["up_padding"]
    mod = emitted(cfg, tmp_path)
    m = torch_module(cfg)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == mod.PARAM_SHAPES
    assert list(m.state_dict()) == list(mod.PARAM_SHAPES)


@pytest.mark.parametrize("args,needle", [
    (["--target", "numpy", "--testbench"], "--testbench is only for --target c"),
    (["--target", "c", "-o", "FILE"], "is a file"),
])
def test_cli_emit_usage_errors(args, needle, tmp_path):
    target = tmp_path / "afile"
    target.write_text("")
    argv = [a if a != "FILE" else str(target) for a in args]
    p = subprocess.run([sys.executable, "-m", "unetc", "emit", str(EXAMPLES / "small.yaml"), *argv],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and needle in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("case", ["default", "up_padding", "pool3s2_up3s2_odd"])
def test_results_survive_later_calls(case, tmp_path):
    """The module reuses per-thread work arrays between calls: what it returns must not be one."""
    mod = emitted(dataclasses.replace(CONFIG_MATRIX[case], dtype="float64"), tmp_path)
    params, x, gy = random_inputs(mod, seed=1)
    y1 = mod.forward(params, x)
    g1, gx1 = mod.backward(params, x, gy)
    saved = (y1.copy(), {k: v.copy() for k, v in g1.items()}, gx1.copy())
    _, x2, gy2 = random_inputs(mod, seed=2)
    mod.forward(params, x2)
    mod.backward(params, x2, gy2)
    assert np.array_equal(y1, saved[0]) and np.array_equal(gx1, saved[2])
    assert all(np.array_equal(g1[k], saved[1][k]) for k in g1)
    assert np.array_equal(mod.forward(params, x), y1)
    # the same grad_output array, changed in place between calls, is read afresh
    gy_buf = gy.copy()
    mod.backward(params, x, gy_buf)
    gy_buf[...] = gy2
    g3, gx3 = mod.backward(params, x, gy_buf)
    g4, gx4 = mod.backward(params, x, gy2.copy())
    assert np.array_equal(gx3, gx4) and all(np.array_equal(g3[k], g4[k]) for k in g3)
