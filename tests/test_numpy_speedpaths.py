"""The NumPy target's stride-1 convolution kernels (shifted copies, one matmul, row-offset adds;
1x1 convolutions as one matmul) against PyTorch autograd in float64, one layer at a time: forward, input gradient and weight
gradient, over kernel sizes, paddings, images narrower than the kernel, batches, and non-finite
inputs (the weight gradient's one-matmul result is recomputed per kernel row when it is not
finite, so a 0 * inf outside every real window never becomes a NaN PyTorch does not have), and
both orders of the two gradients (the input gradient reuses the weight gradient's copies of dy
when padding >= 1, and makes them itself otherwise)."""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from conftest import assert_same_nonfinite as assert_same
from torch_ref import CONFIG_MATRIX
from unetc.emitter import emit


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    """A float64 NumPy module (its kernels do not depend on the config's sizes)."""
    cfg = dataclasses.replace(CONFIG_MATRIX["default"], dtype="float64", name="speedpaths")
    (path,) = emit(cfg, "numpy", tmp_path_factory.mktemp("speedpaths"))
    spec = importlib.util.spec_from_file_location("speedpaths_numpy", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def torch_conv(x, w, b, p, dy):
    """(y, dW, db, dx) of conv2d(x, w, b, padding=p) for the loss sum(y * dy), float64 autograd."""
    import torch

    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, torch.tensor(b), padding=p)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), wt.grad.numpy(), xt.grad.numpy()


def unetc_conv(mod, x, w, b, k, p, dy, dx_first=False):
    """The same through the module's kernels, on its (C, N, H, W) layout; the weight gradient
    first (as the generated backward orders them: the input gradient reuses its copies of dy)
    or the input gradient first."""
    n, c, h, wd = x.shape
    ho, wo = dy.shape[2:]
    mod._use_pool(n)
    xc = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    dyc = np.ascontiguousarray(dy.transpose(1, 0, 2, 3))
    cache = {}
    y = mod._conv2d(xc, w, b, k, 1, p, ho, wo, cache, "layer", None)
    if dx_first:
        dx = mod._conv2d_grad_input(dyc, w, k, 1, p, (c, n, h, wd), None)
    dw = mod._conv2d_grad_weight(xc, dyc, k, 1, p, cache.pop("layer"))
    if not dx_first:
        dx = mod._conv2d_grad_input(dyc, w, k, 1, p, (c, n, h, wd), None)
    y_fwd = mod._conv2d(xc, w, b, k, 1, p, ho, wo, None, None, None)  # forward only: no columns kept
    assert_same(y_fwd, y, "forward-only y", 1e-12)
    return y.transpose(1, 0, 2, 3), dw, dx.transpose(1, 0, 2, 3)


GEOMETRIES = [  # (k, p, H, W, N, C, O)
    (3, 1, 7, 9, 1, 2, 3),
    (3, 1, 6, 5, 3, 4, 2),  # batch; more input than output channels
    (3, 0, 6, 8, 2, 3, 3),  # no padding: junk columns hold real input
    (5, 2, 6, 7, 2, 2, 3),
    (5, 2, 3, 1, 2, 2, 2),  # image narrower than the kernel: empty copy ranges
    (3, 2, 4, 4, 1, 2, 2),  # padding > (k - 1) / 2: output larger than input
    (5, 1, 6, 6, 1, 3, 2),
    (1, 0, 5, 6, 2, 3, 2),  # 1x1: x itself as the columns
    (1, 1, 4, 3, 2, 2, 3),  # 1x1 padded: output larger than input
]
POISONS = {
    "finite": [],
    # only windows of kernel row k - 1 (column k - 1) reach the last input row (column) when
    # p = (k - 1) / 2: the one-matmul weight gradient multiplies it by zeros for the other rows
    "inf_last_row": [(0, 0, -1, 2, np.inf)],
    "inf_last_col": [(-1, -1, 1, -1, -np.inf)],
    "nan_corner": [(0, 0, 0, 0, np.nan)],
    "mixed": [(0, 0, -1, 0, np.inf), (-1, 0, 0, -1, -np.inf), (0, -1, 1, 1, np.nan)],
}


@pytest.mark.parametrize("dx_first", [False, True])
@pytest.mark.parametrize("zblock", [None, 1, 3], ids=["whole", "zblock1", "zblock3"])
@pytest.mark.parametrize("poison", sorted(POISONS))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}p{}_{}x{}_n{}_c{}o{}".format(*g))
def test_stride1_conv_kernels_match_torch(mod, geometry, poison, zblock, dx_first, monkeypatch):
    """zblock: the forward matmul in blocks of that many padded rows (small, to exercise the
    path large layers take), or at once."""
    k, p, h, wd, n, c, o = geometry
    if zblock is not None:
        monkeypatch.setattr(mod, "_ZBLOCK_MIN", 0)
        monkeypatch.setattr(mod, "_ZBLOCK_BYTES", zblock * k * o * (wd + 2 * p) * 8)
    rng = np.random.default_rng(k * 100 + h * 10 + wd)
    x = rng.standard_normal((n, c, h, wd))
    for i, ch, r, col, v in POISONS[poison]:
        x[i, ch, r, min(col, wd - 1) if col >= 0 else col] = v
    w, b = rng.standard_normal((o, c, k, k)), rng.standard_normal(o)
    dy = rng.standard_normal((n, o, h + 2 * p - k + 1, wd + 2 * p - k + 1))
    with np.errstate(all="ignore"):
        mod._POOL.widened = mod._POOL.dshifted = None  # as a backward call starts
        unetc_conv(mod, x, w, b, k, p, -dy, dx_first)  # first a layer whose dy has the same shape
        got = unetc_conv(mod, x, w, b, k, p, dy, dx_first)
    want = torch_conv(x, w, b, p, dy)
    for name, a, ref in zip(("y", "dW", "dx"), got, want):
        assert a.shape == ref.shape, name
        assert_same(a, ref, name, 1e-10)
