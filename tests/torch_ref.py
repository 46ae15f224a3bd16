"""The PyTorch oracle: the spec's network as torch.nn layers, float64 autograd, and the config
matrix every target is tested on. Only tests import this (torch is never a runtime dependency)."""
from __future__ import annotations

import numpy as np

from unetc.config import Config
from unetc.torch_interop import torch_module

# default-like + the non-default geometries every target must match PyTorch on
CONFIG_MATRIX = {
    "default": Config(name="m_default", in_c=3, out_c=2, in_h=8, in_w=8, base_c=4),
    "conv5": Config(name="m_conv5", in_c=2, out_c=1, in_h=8, in_w=10, base_c=3, conv_kernel=5, conv_padding=2),
    "head3": Config(name="m_head3", in_c=1, out_c=3, in_h=6, in_w=8, base_c=4, head_kernel=3, head_padding=1),
    "pool3_up3": Config(name="m_pool3", in_c=2, out_c=2, in_h=9, in_w=12, base_c=3,
                        pool_kernel=3, pool_stride=3, up_kernel=3, up_stride=3),
    "pool3s2_up3s2_odd": Config(name="m_pool3s2", in_c=1, out_c=2, in_h=9, in_w=7, base_c=3,
                                pool_kernel=3, pool_stride=2, up_kernel=3, up_stride=2),
    "overlap_pool": Config(name="m_overlap", in_c=2, out_c=2, in_h=7, in_w=6, base_c=3,
                           pool_kernel=3, pool_stride=1, up_kernel=3, up_stride=1),
    "up_padding": Config(name="m_uppad", in_c=1, out_c=1, in_h=8, in_w=6, base_c=3,
                         up_kernel=4, up_stride=2, up_padding=1),
    "odd_channels_hw": Config(name="m_odd", in_c=5, out_c=3, in_h=10, in_w=6, base_c=5),
    # wide and tall enough for every vector tile (32/16/8 lanes + scalar tail); several weight-
    # gradient pixel blocks in the sanitizer testbench (-DWG_PIX=512)
    "wide_tall": Config(name="m_wide", in_c=2, out_c=2, in_h=68, in_w=56, base_c=9),
    # >= 16 output channels: the outer-product weight gradient (17 and 34 channels: padded vectors,
    # partial tiles; 40x36 pixels: two pixel blocks, the second one short)
    "many_channels": Config(name="m_many", in_c=2, out_c=2, in_h=40, in_w=36, base_c=17),
    # the only valid geometries with strided convs are 1x1 inputs: they exercise the im2col paths
    "stride2_1x1": Config(name="m_stride2", in_c=2, out_c=2, in_h=1, in_w=1, base_c=3, conv_stride=2,
                          pool_kernel=1, pool_stride=1, up_kernel=1, up_stride=1),
    "k1p1s3_1x1": Config(name="m_k1p1s3", in_c=1, out_c=1, in_h=1, in_w=1, base_c=2, conv_kernel=1,
                         conv_padding=1, conv_stride=3, pool_kernel=1, pool_stride=1, up_kernel=3,
                         up_stride=1, up_padding=1, head_kernel=3, head_stride=2, head_padding=1),
    "spec_pool": Config(name="m_specpool", in_c=2, out_c=2, in_h=8, in_w=6, base_c=3, maxpool_backward="spec"),
}


def spec_select(window: np.ndarray) -> tuple[int, int]:
    """Direct transcription of SPEC.md's max-pool selection rule for one k x k window."""
    best = (0, 0)
    for r in range(window.shape[0]):
        v = window[best]
        pick = best
        for c in range(window.shape[1]):
            if window[r, c] > v:
                pick = (r, c)
        best = pick
    return best


def spec_pool(x, k: int, s: int):
    """torch max-pool whose backward routes by :func:`spec_select` (loops; tiny inputs only)."""
    import torch

    class SpecPool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp):
            ctx.save_for_backward(inp)
            return torch.nn.functional.max_pool2d(inp, k, s)

        @staticmethod
        def backward(ctx, g):
            (inp,) = ctx.saved_tensors
            xa, ga = inp.detach().numpy(), g.numpy()
            dx = np.zeros_like(xa)
            for n in range(xa.shape[0]):
                for c in range(xa.shape[1]):
                    for i in range(ga.shape[2]):
                        for j in range(ga.shape[3]):
                            r, q = spec_select(xa[n, c, i * s:i * s + k, j * s:j * s + k])
                            dx[n, c, i * s + r, j * s + q] += ga[n, c, i, j]
            return torch.tensor(dx)

    return SpecPool.apply(x)


def torch_reference(cfg: Config, params: dict, x: np.ndarray, grad_y: np.ndarray, dtype: str = "float64"):
    """(y, grads, grad_x) by PyTorch autograd in ``dtype`` (float64: the oracle), inputs (C, H, W)
    without batch axis. ``maxpool_backward: spec`` uses :func:`spec_pool` (the spec's routing)."""
    import torch

    pool = (lambda t: spec_pool(t, cfg.pool_kernel, cfg.pool_stride)) if cfg.maxpool_backward == "spec" else None
    m = torch_module(cfg, pool).to(getattr(torch, dtype))
    m.load_state_dict({k: torch.tensor(np.asarray(v, dtype=dtype)) for k, v in params.items()})
    xt = torch.tensor(np.asarray(x, dtype=dtype)[None], requires_grad=True)
    y = m(xt)
    y.backward(torch.tensor(np.asarray(grad_y, dtype=dtype)[None]))
    grads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    return y.detach().numpy()[0], grads, xt.grad.numpy()[0]


def random_inputs(mod, seed: int = 0):
    """params (from the module's init_params), x and grad_y of the module's dtype."""
    rng = np.random.default_rng(seed + 1)
    params = mod.init_params(seed)
    x = rng.standard_normal(mod.IN_SHAPE).astype(mod.DTYPE)
    gy = rng.standard_normal(mod.OUT_SHAPE).astype(mod.DTYPE)
    return params, x, gy


def rel_err(a, b) -> float:
    """max |a - b| / max(|b|, tiny): relative to the reference's scale."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
