"""PyTorch interop: the network of a Config as a ``torch.nn.Module`` whose ``state_dict`` keys and
layouts are exactly PARAM_SHAPES of the generated code, so weights move both ways unchanged.

- :func:`torch_module`: the network in ``torch.nn`` layers (the oracle the tests compare with);
- :func:`compiled_module`: the same parameters, but forward and backward run the code unetc
  generates for the config (NumPy or C), through the autograd Function :class:`UNet2Function`.

Both modules are instances of module-level classes: they pickle (``torch.save``/``torch.load``)
and work with ``torch.optim``, ``DataLoader`` batches and ``DistributedDataParallel``. Importing
this module imports torch; ``unetc check``/``emit`` and generated code never import it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import __version__, load
from .config import Config

TARGETS = ("c", "numpy")


class UNet2(nn.Module):
    """SPEC.md's U-Net-2 in ``torch.nn`` layers, on (N, C, H, W) batches or one (C, H, W) image.
    ``pool`` replaces the max-pool call (e.g. with a custom backward rule; a picklable callable
    keeps the module picklable); None: ``max_pool2d`` (PyTorch's rule, ``maxpool_backward: pytorch``)."""

    def __init__(self, cfg: Config, pool: Callable[[Any], Any] | None = None):
        super().__init__()
        self.config, self.pool = cfg, pool
        b = cfg.base_c
        conv = dict(kernel_size=cfg.conv_kernel, stride=cfg.conv_stride, padding=cfg.conv_padding)
        self.down1_1 = nn.Conv2d(cfg.in_c, b, **conv)
        self.down1_2 = nn.Conv2d(b, b, **conv)
        self.down2_1 = nn.Conv2d(b, 2 * b, **conv)
        self.down2_2 = nn.Conv2d(2 * b, 2 * b, **conv)
        self.upT = nn.ConvTranspose2d(2 * b, b, cfg.up_kernel, cfg.up_stride, cfg.up_padding)
        self.up1_1 = nn.Conv2d(2 * b, b, **conv)
        self.up1_2 = nn.Conv2d(b, b, **conv)
        self.out1x1 = nn.Conv2d(b, cfg.out_c, cfg.head_kernel, cfg.head_stride, cfg.head_padding)

    def forward(self, x):
        cfg, r = self.config, torch.relu
        skip1 = r(self.down1_2(r(self.down1_1(x))))
        if self.pool is None:
            pooled = nn.functional.max_pool2d(skip1, cfg.pool_kernel, cfg.pool_stride)
        else:
            pooled = self.pool(skip1)
        bottleneck = r(self.down2_2(r(self.down2_1(pooled))))
        merged = torch.cat([skip1, self.upT(bottleneck)], dim=-3)
        return self.out1x1(r(self.up1_2(r(self.up1_1(merged)))))


def torch_module(cfg: Config, pool: Callable[[Any], Any] | None = None) -> UNet2:
    """An ``nn.Module`` computing SPEC.md's U-Net-2 on (N, C, H, W) batches, in cfg.dtype, with
    PyTorch's default init. ``pool``: see :class:`UNet2`."""
    return UNet2(cfg, pool).to(getattr(torch, cfg.dtype))


# ---- the generated code as an nn.Module ----

def _cache_root() -> Path:
    """$UNETC_CACHE_DIR, else $XDG_CACHE_HOME/unetc or ~/.cache/unetc (as the C loader)."""
    d = os.environ.get("UNETC_CACHE_DIR")
    if not d:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(root, "unetc")
    return Path(d)


def module_dir(cfg: Config, target: str) -> Path:
    """Where :func:`compiled_module` emits when no out_dir is given: a directory of the cache
    named by the config's name, the target and a hash of the config, target and unetc version."""
    key = hashlib.sha256(f"{cfg.to_yaml()}\0{target}\0{__version__}".encode()).hexdigest()[:16]
    return _cache_root() / "modules" / f"{cfg.name}_{target}_{key}"


_LOADED: dict[tuple, Any] = {}  # (config yaml, target, directory) -> the imported generated module
_LOADED_LOCK = threading.Lock()


def generated_module(cfg: Config, target: str, out_dir: str | os.PathLike | None = None):
    """Emit cfg's ``target`` code (into out_dir, else :func:`module_dir`, refreshed on every first
    use in a process) and import its Python module; one import per process and directory."""
    from .emitter import emit

    if target not in TARGETS:
        raise ValueError(f"target: expected 'c' or 'numpy', got {target!r}")
    where = Path(out_dir) if out_dir is not None else module_dir(cfg, target)
    key = (cfg.to_yaml(), target, str(where.resolve()))
    with _LOADED_LOCK:
        if key not in _LOADED:
            paths = emit(cfg, target, where, force=out_dir is None)
            (py,) = [p for p in paths if p.suffix == ".py"]
            name = "unetc_generated_" + hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
            spec = importlib.util.spec_from_file_location(name, py)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _LOADED[key] = mod
        return _LOADED[key]


class Runner:
    """Calls a generated module's forward/backward on NumPy views of tensors, with batches. Asks
    the module once whether its forward takes an (N, C, H, W) batch; if it raises ValueError for
    one (a C module emitted before the C batch axis), runs the images one by one and sums the
    parameter gradients. Picklable: holds the config, target and directory, not the module."""

    def __init__(self, cfg: Config, target: str, out_dir: str | None):
        self.config, self.target, self.out_dir = cfg, target, out_dir
        self.batched: bool | None = None  # unknown until the first batch

    @property
    def module(self):
        return generated_module(self.config, self.target, self.out_dir)

    def __getstate__(self):
        return {**self.__dict__, "batched": None}

    def forward(self, params: dict, x: np.ndarray) -> np.ndarray:
        mod = self.module
        if x.ndim == 3 or self.batched:
            return mod.forward(params, x)
        if self.batched is None:  # ask the module: is a batch refused while its images are taken?
            try:
                y = mod.forward(params, x)
                self.batched = True
                return y
            except ValueError as err:
                try:
                    mod.forward(params, x[0])
                except ValueError:
                    raise err from None  # a bad input, not a module without the batch axis
                self.batched = False
        return np.stack([mod.forward(params, xi) for xi in x])

    def backward(self, params: dict, x: np.ndarray, gy: np.ndarray) -> tuple[dict, np.ndarray]:
        mod = self.module
        if x.ndim == 4 and self.batched is None:
            self.forward(params, x)
        if x.ndim == 3 or self.batched:
            return mod.backward(params, x, gy)
        results = [mod.backward(params, xi, gi) for xi, gi in zip(x, gy)]
        grads = {k: np.sum([g[k] for g, _ in results], axis=0) for k in results[0][0]}
        return grads, np.stack([gx for _, gx in results])


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a C-contiguous NumPy array (a view when it already is one)."""
    return np.ascontiguousarray(t.detach().numpy())


class UNet2Function(torch.autograd.Function):
    """y = UNet2(params, x) by generated code. ``apply(runner, names, x, *params)``.

    What runs when: forward calls the generated forward once and saves only x and the parameters
    (no intermediates). backward calls the generated backward once; as the spec defines it, that
    recomputes the forward pass from x and then walks back, returning every parameter gradient
    (summed over the batch) and grad_x in the one call. So one training step runs the generated
    forward twice and the backward walk once; nothing else is recomputed."""

    @staticmethod
    def forward(ctx, runner: Runner, names: tuple, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        p = {k: _numpy(t) for k, t in zip(names, params)}
        y = runner.forward(p, _numpy(x))
        ctx.runner, ctx.names = runner, names
        ctx.save_for_backward(x, *params)
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, *params = ctx.saved_tensors
        p = {k: _numpy(t) for k, t in zip(ctx.names, params)}
        grads, gx = ctx.runner.backward(p, _numpy(x), _numpy(grad_y))
        gx = torch.from_numpy(gx) if ctx.needs_input_grad[2] else None
        return None, None, gx, *(torch.from_numpy(grads[k]) for k in ctx.names)


class CompiledUNet2(UNet2):
    """The parameters of :class:`UNet2` (same names, shapes, layouts and init), with forward and
    backward running the generated code of ``target`` (see :class:`UNet2Function`)."""

    def __init__(self, cfg: Config, target: str = "c", out_dir: str | None = None):
        super().__init__(cfg)
        self.target = target
        self.runner = Runner(cfg, target, out_dir)

    def forward(self, x):
        names = tuple(k for k, _ in self.named_parameters())
        return UNet2Function.apply(self.runner, names, x, *self.parameters())


def compiled_module(config, target: str = "c", out_dir: str | os.PathLike | None = None) -> CompiledUNet2:
    """A ``torch.nn.Module`` (a :class:`CompiledUNet2`, in the config's dtype, PyTorch's default
    init) whose forward/backward run the code unetc emits for ``config`` (a Config, a dict of
    config keys or a YAML path) and ``target`` ("c" or "numpy"). The code is emitted into
    ``out_dir`` or else into a directory of the cache ($UNETC_CACHE_DIR, default ~/.cache/unetc;
    see :func:`module_dir`) and imported; a C module compiles on import (cached). Its
    ``state_dict`` is that of ``torch_module(config)``: ``load_state_dict`` works both ways."""
    cfg = load(config)
    if target not in TARGETS:
        raise ValueError(f"target: expected 'c' or 'numpy', got {target!r}")
    out = os.fspath(out_dir) if out_dir is not None else None
    generated_module(cfg, target, out)  # emit, compile and import now: errors surface here
    return CompiledUNet2(cfg, target, out).to(getattr(torch, cfg.dtype))


__all__ = ["CompiledUNet2", "UNet2", "UNet2Function", "compiled_module", "module_dir", "torch_module"]
