"""PyTorch interop: the network of a Config as a ``torch.nn.Module`` whose ``state_dict`` keys and
layouts are exactly PARAM_SHAPES of the generated code, so weights move both ways unchanged.

torch is imported when this is called, never by ``unetc check``/``emit`` or generated code.
"""
from __future__ import annotations

from typing import Any, Callable

from .config import Config


def torch_module(cfg: Config, pool: Callable[[Any], Any] | None = None):
    """An ``nn.Module`` computing SPEC.md's U-Net-2 on (N, C, H, W) batches, in cfg.dtype.
    ``pool`` replaces the max-pool call (e.g. with a custom backward rule); default
    ``torch.nn.functional.max_pool2d`` (PyTorch's rule, as ``maxpool_backward: pytorch``)."""
    import torch
    from torch import nn

    b = cfg.base_c
    conv = dict(kernel_size=cfg.conv_kernel, stride=cfg.conv_stride, padding=cfg.conv_padding)

    class UNet2(nn.Module):
        def __init__(self):
            super().__init__()
            self.down1_1 = nn.Conv2d(cfg.in_c, b, **conv)
            self.down1_2 = nn.Conv2d(b, b, **conv)
            self.down2_1 = nn.Conv2d(b, 2 * b, **conv)
            self.down2_2 = nn.Conv2d(2 * b, 2 * b, **conv)
            self.upT = nn.ConvTranspose2d(2 * b, b, cfg.up_kernel, cfg.up_stride, cfg.up_padding)
            self.up1_1 = nn.Conv2d(2 * b, b, **conv)
            self.up1_2 = nn.Conv2d(b, b, **conv)
            self.out1x1 = nn.Conv2d(b, cfg.out_c, cfg.head_kernel, cfg.head_stride, cfg.head_padding)

        def forward(self, x):
            r = torch.relu
            skip1 = r(self.down1_2(r(self.down1_1(x))))
            if pool is None:
                pooled = nn.functional.max_pool2d(skip1, cfg.pool_kernel, cfg.pool_stride)
            else:
                pooled = pool(skip1)
            bottleneck = r(self.down2_2(r(self.down2_1(pooled))))
            merged = torch.cat([skip1, self.upT(bottleneck)], dim=1)
            return self.out1x1(r(self.up1_2(r(self.up1_1(merged)))))

    return UNet2().to(getattr(torch, cfg.dtype))
