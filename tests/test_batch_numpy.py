"""NumPy target, batch axis (issue 11): forward/backward of (N, C, H, W) batches against PyTorch
autograd on the whole config matrix (N = 1 and 3, both dtypes, gradients summed over the batch
like torch's), a training loop's changing batch sizes (odd last batch), one matmul per conv for
the whole batch, non-finite inputs kept per image, the API's errors, and save_params/load_params."""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from conftest import assert_same_nonfinite as assert_same
from torch_ref import CONFIG_MATRIX, rel_err, spec_pool
from unetc.config import Config
from unetc.emitter import emit
from unetc.torch_interop import torch_module

TOL = {"float64": 1e-10, "float32": 1e-4}
_MODS: dict = {}


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    """cfg -> its NumPy module, emitted once per module run."""
    def get(cfg: Config):
        key = (cfg.name, cfg.dtype, cfg)
        if key not in _MODS:
            (path,) = emit(cfg, "numpy", tmp_path_factory.mktemp(f"{cfg.name}_{cfg.dtype}"))
            spec = importlib.util.spec_from_file_location(f"batch_{cfg.name}_{cfg.dtype}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _MODS[key] = mod
        return _MODS[key]
    return get


def torch_batch_reference(cfg: Config, params: dict, x: np.ndarray, grad_y: np.ndarray):
    """(y, grads, grad_x) by PyTorch autograd in float64 on the batch x (N, C, H, W): the loss
    sum(y * grad_y) over the batch, so parameter gradients are summed over the images."""
    import torch

    pool = (lambda t: spec_pool(t, cfg.pool_kernel, cfg.pool_stride)) if cfg.maxpool_backward == "spec" else None
    m = torch_module(cfg, pool).double()
    m.load_state_dict({k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()})
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    y = m(xt)
    y.backward(torch.tensor(np.asarray(grad_y, dtype=np.float64)))
    return y.detach().numpy(), {k: p.grad.numpy() for k, p in m.named_parameters()}, xt.grad.numpy()


def batch_inputs(mod, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *mod.IN_SHAPE)).astype(mod.DTYPE)
    gy = rng.standard_normal((n, *mod.OUT_SHAPE)).astype(mod.DTYPE)
    return x, gy


def errors_vs_torch(mod, cfg, params, x, gy) -> dict[str, float]:
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    ry, rgrads, rgx = torch_batch_reference(cfg, params, x, gy)
    assert y.shape == ry.shape and gx.shape == x.shape and y.dtype == gx.dtype == mod.DTYPE
    assert y.flags.c_contiguous and gx.flags.c_contiguous
    assert list(grads) == list(mod.PARAM_SHAPES) and all(grads[k].shape == mod.PARAM_SHAPES[k] for k in grads)
    errs = {"y": rel_err(y, ry), "grad_x": rel_err(gx, rgx)}
    errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
    return errs


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CONFIG_MATRIX))
def test_batch_matches_pytorch_autograd(case, dtype, n, emitted):
    cfg = dataclasses.replace(CONFIG_MATRIX[case], dtype=dtype)
    mod = emitted(cfg)
    params = mod.init_params(4)
    x, gy = batch_inputs(mod, n, seed=10 + n)
    errs = errors_vs_torch(mod, cfg, params, x, gy)
    assert max(errs.values()) <= TOL[dtype], errs


@pytest.mark.parametrize("case", ["default", "pool3s2_up3s2_odd", "up_padding", "spec_pool", "stride2_1x1"])
def test_training_loop_batch_sizes_incl_odd_last_batch(case, emitted):
    """An epoch of 11 images in batches of 4 (last batch 3), then single images and again 4: each
    call against torch (work arrays kept per batch size must not leak between sizes)."""
    cfg = dataclasses.replace(CONFIG_MATRIX[case], dtype="float64")
    mod = emitted(cfg)
    params = mod.init_params(2)
    x_all, gy_all = batch_inputs(mod, 11, seed=3)
    for lo, hi in [(0, 4), (4, 8), (8, 11), (0, 1), (5, 9), (8, 11)]:
        errs = errors_vs_torch(mod, cfg, params, x_all[lo:hi], gy_all[lo:hi])
        assert max(errs.values()) <= TOL["float64"], (lo, hi, errs)
    assert len(mod._POOL.pools) <= mod._KEEP_BATCH_SIZES


def test_unbatched_is_batch_of_one_and_batch_is_its_images(emitted):
    """(C, H, W) gives the same bits as the batch of one; a batch's y and grad_x are its images',
    its parameter gradients their sum (up to rounding: BLAS may order sums by matrix size)."""
    cfg = dataclasses.replace(CONFIG_MATRIX["pool3_up3"], dtype="float64")
    mod = emitted(cfg)
    params = mod.init_params(0)
    x, gy = batch_inputs(mod, 3, seed=1)
    g1, gx1 = mod.backward(params, x[0], gy[0])
    gb, gxb = mod.backward(params, x[:1], gy[:1])
    assert np.array_equal(mod.forward(params, x[0]), mod.forward(params, x[:1])[0]) and gx1.shape == x[0].shape
    assert np.array_equal(gx1, gxb[0]) and all(np.array_equal(g1[k], gb[k]) for k in g1)
    y3 = mod.forward(params, x)
    g3, gx3 = mod.backward(params, x, gy)
    singles = [mod.backward(params, x[i], gy[i]) for i in range(3)]
    for i in range(3):
        np.testing.assert_allclose(y3[i], mod.forward(params, x[i]), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(gx3[i], singles[i][1], rtol=1e-12, atol=1e-13)
    for k in g3:
        np.testing.assert_allclose(g3[k], sum(s[0][k] for s in singles), rtol=1e-12, atol=1e-13)


class _Counting:
    """Stands for the numpy module inside a generated module: counts calls of its functions."""

    def __init__(self, counts: dict):
        self._counts = counts

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not (callable(attr) and not isinstance(attr, type)):
            return attr

        def call(*args, **kw):
            self._counts[name] = self._counts.get(name, 0) + 1
            return attr(*args, **kw)
        return call


@pytest.mark.parametrize("case", ["default", "pool3s2_up3s2_odd", "stride2_1x1"])
def test_vectorised_over_the_batch(case, emitted, monkeypatch):
    """The same NumPy calls (matmuls included) for a batch of 1 and of 5: no loop over images."""
    cfg = dataclasses.replace(CONFIG_MATRIX[case], dtype="float64")
    mod = emitted(cfg)
    params = mod.init_params(0)
    counts = {}
    for n in (1, 5):
        x, gy = batch_inputs(mod, n, seed=n)
        mod.forward(params, x)  # warm the work arrays of this size
        mod.backward(params, x, gy)
        c: dict = {}
        monkeypatch.setattr(mod, "np", _Counting(c))
        mod.forward(params, x)
        mod.backward(params, x, gy)
        monkeypatch.setattr(mod, "np", np)
        counts[n] = c
    assert counts[1]["matmul"] >= 8 and counts[1] == counts[5]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nonfinite_inputs_stay_in_their_image(dtype, emitted):
    """Inf/NaN in one image: y and grad_x of the other images are untouched, NaN positions of the
    parameter gradients are those of the per-image sum (junk columns zeroed per image)."""
    cfg = dataclasses.replace(CONFIG_MATRIX["conv5"], dtype=dtype)
    mod = emitted(cfg)
    params = mod.init_params(1)
    x, gy = batch_inputs(mod, 3, seed=4)
    x[1, 0, 0, 0] = np.inf
    x[1, -1, 3, -1] = -np.inf
    x[2, 0, 2, 2] = np.nan
    with np.errstate(all="ignore"):
        y = mod.forward(params, x)
        g, gx = mod.backward(params, x, gy)
        singles = [(mod.forward(params, x[i]), *mod.backward(params, x[i], gy[i])) for i in range(3)]
        for i, (yi, gi, gxi) in enumerate(singles):
            assert_same(y[i], yi, f"y[{i}]", TOL[dtype])
            assert_same(gx[i], gxi, f"grad_x[{i}]", TOL[dtype])
        for k in g:
            assert_same(g[k], sum(s[1][k] for s in singles), k, TOL[dtype])
    assert np.isfinite(y[0]).all() and np.isfinite(gx[0]).all() and not np.isfinite(y[1]).all()


def test_batch_api_errors(emitted):
    mod = emitted(CONFIG_MATRIX["default"])  # float32, (3, 8, 8) -> (2, 8, 8)
    params = mod.init_params(0)
    x, gy = batch_inputs(mod, 2, seed=0)
    cases = [
        (lambda: mod.forward(params, x[:0]), "x: empty batch (N = 0), expected N >= 1"),
        (lambda: mod.forward(params, x[:, :2]), "x: expected shape (N, 3, 8, 8), got (2, 2, 8, 8)"),
        (lambda: mod.forward(params, x.astype(np.float64)), "x: expected dtype float32, got float64"),
        (lambda: mod.forward(params, x[None]), "x: expected shape (3, 8, 8), got (1, 2, 3, 8, 8)"),
        (lambda: mod.forward(params, np.ma.masked_array(x)), "x: masked arrays are not supported (use .filled())"),
        (lambda: mod.backward(params, x, gy[:1]), "grad_output: expected shape (2, 2, 8, 8), got (1, 2, 8, 8)"),
        (lambda: mod.backward(params, x, gy[0]), "grad_output: expected shape (2, 2, 8, 8), got (2, 8, 8)"),
        (lambda: mod.backward(params, x[0], gy), "grad_output: expected shape (2, 8, 8), got (2, 2, 8, 8)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message


@pytest.mark.parametrize("case", ["default", "conv5", "stride2_1x1"])
def test_large_batches_run_in_chunks(case, emitted, monkeypatch):
    """A batch larger than _CHUNK_PIXELS runs in chunks (here 2 + 2 + 1 images): results as torch's."""
    cfg = dataclasses.replace(CONFIG_MATRIX[case], dtype="float64")
    mod = emitted(cfg)
    monkeypatch.setattr(mod, "_CHUNK_PIXELS", 2 * cfg.in_h * cfg.in_w + cfg.in_h * cfg.in_w // 2)
    assert [(s.start, s.stop) for s in mod._chunks(5, cfg.in_h * cfg.in_w)] == [(0, 2), (2, 4), (4, 5)]
    params = mod.init_params(6)
    x, gy = batch_inputs(mod, 5, seed=8)
    errs = errors_vs_torch(mod, cfg, params, x, gy)
    assert max(errs.values()) <= TOL["float64"], errs
    errs = errors_vs_torch(mod, cfg, params, x[0], gy[0])  # one image: one chunk
    assert max(errs.values()) <= TOL["float64"], errs


def test_results_are_fresh_across_batch_sizes(emitted):
    mod = emitted(dataclasses.replace(CONFIG_MATRIX["default"], dtype="float64"))
    params = mod.init_params(0)
    x, gy = batch_inputs(mod, 4, seed=0)
    y, (g, gx) = mod.forward(params, x), mod.backward(params, x, gy)
    saved = (y.copy(), gx.copy(), {k: v.copy() for k, v in g.items()})
    for n in (3, 4, 1):
        x2, gy2 = batch_inputs(mod, n, seed=9)
        mod.forward(params, x2)
        mod.backward(params, x2, gy2)
    assert np.array_equal(y, saved[0]) and np.array_equal(gx, saved[1])
    assert all(np.array_equal(g[k], saved[2][k]) for k in g)


# ---- save_params / load_params ----

def test_save_load_roundtrip_bit_exact(emitted, tmp_path):
    mod = emitted(CONFIG_MATRIX["odd_channels_hw"])
    params = mod.init_params(3)
    path = tmp_path / "w.npz"
    mod.save_params(path, params)
    back = mod.load_params(path)
    assert list(back) == list(mod.PARAM_SHAPES)
    assert all(back[k].dtype == mod.DTYPE and np.array_equal(back[k], params[k]) for k in params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]  # no temporary left behind
    with np.load(path) as f:  # a plain .npz with the PARAM_SHAPES keys
        assert sorted(f.files) == sorted(mod.PARAM_SHAPES)
    mod.save_params(str(path), back)  # overwrite, str path
    assert np.array_equal(mod.load_params(str(path))["upT.bias"], params["upT.bias"])


def test_save_refuses_bad_params_and_writes_nothing(emitted, tmp_path):
    mod = emitted(CONFIG_MATRIX["default"])
    params = mod.init_params(0)
    with pytest.raises(ValueError, match="params: missing key 'upT.bias'"):
        mod.save_params(tmp_path / "w.npz", {k: v for k, v in params.items() if k != "upT.bias"})
    assert list(tmp_path.iterdir()) == []


def test_load_errors_are_one_line_naming_file_and_culprit(emitted, tmp_path):
    mod = emitted(CONFIG_MATRIX["default"])  # float32
    params = mod.init_params(0)
    def save(**arrays):
        f = tmp_path / f"w{len(list(tmp_path.iterdir()))}.npz"
        np.savez(f, **arrays)
        return str(f)

    cases = [
        (save(**{k: v for k, v in params.items() if k != "out1x1.bias"}), "params: missing key 'out1x1.bias'"),
        (save(**params, extra=np.zeros(1)), "params: unexpected key 'extra'"),
        (save(**{**params, "upT.weight": params["upT.weight"].astype(np.float64)}),
         "params['upT.weight']: expected dtype float32, got float64"),
        (save(**{**params, "down1_1.bias": np.zeros(5, np.float32)}),
         "params['down1_1.bias']: expected shape (4,), got (5,)"),
    ]
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    cases += [(str(garbage), "cannot load parameters"), (str(npy), "not an .npz archive"),
              (str(tmp_path / "missing.npz"), "cannot load parameters")]
    for path, needle in cases:
        with pytest.raises(ValueError) as err:
            mod.load_params(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and needle in msg and "\n" not in msg, msg
