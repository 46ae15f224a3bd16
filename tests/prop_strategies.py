"""Hypothesis strategies and independent oracles for tests/test_properties.py: random geometries
(the ranges and bias of conftest.random_geometry), sized configs drawn from the checker's valid set,
sizes computed by running real PyTorch layers, and a float64 autograd reference whose ReLU gate is
the spec's [z > 0] (torch's own relu passes the gradient where z is NaN)."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os

import numpy as np
from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis import strategies as st

from conftest import GEOMETRY_KEYS
from torch_ref import spec_pool
from unetc.checker import check
from unetc.config import Config
from unetc.torch_interop import torch_module

# ---- profiles: "ci" (default, deterministic), "dev" and "thorough" (random, more examples) ----
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("dev", derandomize=False, **_COMMON)
settings.register_profile("thorough", derandomize=False, **_COMMON)
PROFILE = os.environ.get("UNETC_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "dev", "thorough"):
    raise ValueError(f"UNETC_HYPOTHESIS_PROFILE={PROFILE!r}: choose ci, dev or thorough")
SCALE = {"ci": 1, "dev": 4, "thorough": 20}[PROFILE]
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)


def budget(examples: int, shrink: bool = True) -> settings:
    """Settings of the active profile with ``examples`` x its scale. ``shrink=False`` (ci only)
    for tests that compile C per example: a failure reports its example without minutising."""
    phases = NO_SHRINK if not shrink and PROFILE == "ci" else tuple(Phase)
    return settings(settings.get_profile(PROFILE), max_examples=examples * SCALE, phases=phases)


# ---- geometries and configs ----
KERNELS = st.integers(1, 7)
STRIDES = st.sampled_from([1, 2, 3, 4]) | st.sampled_from([1, 2])  # 1 and 2 twice as likely
PADDINGS = st.integers(0, 3)


@st.composite
def geometries(draw, pool_inverse_up: bool = False) -> dict:
    """Every geometry key: kernels 1-7, strides 1-4, paddings 0-3; half the time size-preserving
    convs and head. ``pool_inverse_up``: three times in four the up-conv undoes the pool
    (stride = pool stride, kernel - 2 padding = pool kernel), so valid sizes <= 40 are common."""
    strategy = {"kernel": KERNELS, "stride": STRIDES, "padding": PADDINGS}
    g = {key: draw(strategy[key.rsplit("_", 1)[1]]) for key in GEOMETRY_KEYS}
    if draw(st.booleans()):
        k = draw(st.sampled_from([1, 3, 5, 7]))
        g.update(conv_kernel=k, conv_stride=1, conv_padding=k // 2)
        k = draw(st.sampled_from([1, 3]))
        g.update(head_kernel=k, head_stride=1, head_padding=k // 2)
    if pool_inverse_up and draw(st.integers(0, 3)) > 0:
        pad = draw(st.integers(0, (7 - g["pool_kernel"]) // 2))
        g.update(up_stride=g["pool_stride"], up_padding=pad, up_kernel=g["pool_kernel"] + 2 * pad)
    return g


@functools.lru_cache(maxsize=4096)
def _valid_sizes(geo: tuple, limit: int) -> tuple[int, ...]:
    r = check(Config(**dict(geo)))
    return tuple(n for n in range(1, limit + 1) if n in r.valid["in_h"])


def config_name(cfg_dict: dict) -> str:
    """A unique identifier per config content (generated module names and C symbols)."""
    return "prop_" + hashlib.sha256(repr(sorted(cfg_dict.items())).encode()).hexdigest()[:12]


@st.composite
def sized_configs(draw, dtype: str | None = None, max_base: int = 4) -> Config:
    """A valid concrete Config: a geometry with a valid size <= 40 (others are rejected), in_h and
    in_w drawn from the checker's valid set, in_c/out_c 1-8, base_c 1-max_base, both pool modes."""
    geo = draw(geometries(pool_inverse_up=True))
    sizes = _valid_sizes(tuple(sorted(geo.items())), 40)
    assume(sizes)
    c = dict(geo, in_h=draw(st.sampled_from(sizes)), in_w=draw(st.sampled_from(sizes)),
             in_c=draw(st.integers(1, 8)), out_c=draw(st.integers(1, 8)), base_c=draw(st.integers(1, max_base)),
             dtype=dtype or draw(st.sampled_from(["float64", "float32"])),
             maxpool_backward=draw(st.sampled_from(["pytorch", "spec"])))
    return Config(name=config_name(c), **c)


# ---- sizes from real PyTorch layers ----
@functools.lru_cache(maxsize=None)
def torch_size(op: str, n: int, k: int, s: int, p: int) -> int | None:
    """Output size of a real torch layer ("conv", "pool", "convT") on a 1x1xn x n input with a
    k x k window, or None where torch refuses (RuntimeError)."""
    import torch

    F = torch.nn.functional
    x = torch.zeros(1, 1, n, n, dtype=torch.float64)
    w = torch.zeros(1, 1, k, k, dtype=torch.float64)
    try:
        if op == "conv":
            y = F.conv2d(x, w, stride=s, padding=p)
        elif op == "pool":
            y = F.max_pool2d(x, k, s, p)
        else:
            y = F.conv_transpose2d(x, w, stride=s, padding=p)
    except RuntimeError:
        return None
    assert y.shape[-1] == y.shape[-2]
    return int(y.shape[-1])


def torch_hypotheses(g: dict, n: int) -> dict[str, tuple[int | None, int | None]]:
    """For one axis of size n, per hypothesis (conv, conv_down, up, out): (size the layer gives,
    size the spec expects) computed by torch layers; (None, None) where a layer on the way (as in
    the spec, each hypothesis assumes the earlier ones rewrite sizes) is undefined."""
    conv = (g["conv_kernel"], g["conv_stride"], g["conv_padding"])
    z1 = torch_size("conv", n, *conv)
    d = torch_size("pool", n, g["pool_kernel"], g["pool_stride"], 0) if z1 is not None else None
    z3 = torch_size("conv", d, *conv) if d is not None else None
    up = torch_size("convT", d, g["up_kernel"], g["up_stride"], g["up_padding"]) if z3 is not None else None
    y = torch_size("conv", n, g["head_kernel"], g["head_stride"], g["head_padding"]) if up is not None else None
    return {"conv": (z1, n), "conv_down": (z3, d if z3 is not None else None),
            "up": (up, n if up is not None else None), "out": (y, n if y is not None else None)}


def torch_network_runs(m, n: int) -> bool:
    """Run the real network m (torch_module, 1 channel) on a 1x1xn x n input: True iff every layer
    is defined, the concat fits and every conv keeps its input's size (what the spec assumes)."""
    import torch

    kept = []
    hooks = [getattr(m, name).register_forward_hook(
        lambda mod, inp, out: kept.append(inp[0].shape[-2:] == out.shape[-2:]))
        for name in ("down1_1", "down1_2", "down2_1", "down2_2", "up1_1", "up1_2", "out1x1")]
    try:
        with torch.no_grad():
            m(torch.zeros(1, 1, n, n, dtype=torch.float64))
        return all(kept) and len(kept) == 7
    except RuntimeError:
        return False
    finally:
        for h in hooks:
            h.remove()


# ---- modules and the spec-gated reference ----
def load_module(path, name: str):
    """Import a generated file under a unique module name (not put in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def spec_gate_reference(cfg: Config, params: dict, x: np.ndarray, grad_y: np.ndarray):
    """(y, grads, grad_x) by float64 autograd through torch's layers, with the ReLU backward gate
    [z > 0] of SPEC.md (+0.0 elsewhere, whatever dy is) instead of torch's (which passes dy at
    z = NaN); forward of SPEC.md written out over torch_module's layers."""
    import torch

    class SpecRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.relu(z)

        @staticmethod
        def backward(ctx, dy):
            (z,) = ctx.saved_tensors
            return torch.where(z > 0, dy, torch.zeros_like(dy))

    m = torch_module(cfg).double()
    m.load_state_dict({k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()})
    r = SpecRelu.apply
    xt = torch.tensor(np.asarray(x, dtype=np.float64)[None], requires_grad=True)
    skip1 = r(m.down1_2(r(m.down1_1(xt))))
    if cfg.maxpool_backward == "spec":
        pooled = spec_pool(skip1, cfg.pool_kernel, cfg.pool_stride)
    else:
        pooled = torch.nn.functional.max_pool2d(skip1, cfg.pool_kernel, cfg.pool_stride)
    bottleneck = r(m.down2_2(r(m.down2_1(pooled))))
    merged = torch.cat([skip1, m.upT(bottleneck)], dim=1)
    y = m.out1x1(r(m.up1_2(r(m.up1_1(merged)))))
    y.backward(torch.tensor(np.asarray(grad_y, dtype=np.float64)[None]))
    grads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    return y.detach().numpy()[0], grads, xt.grad.numpy()[0]


def torch_float32_errors(cfg: Config, params: dict, x: np.ndarray, grad_y: np.ndarray, ref) -> dict[str, float]:
    """rel_err of PyTorch's own float32 autograd against ref = torch_reference(...) (float64):
    the yardstick for float32 where the data make 1e-4 unreachable (e.g. a bias gradient summing
    ~1000 terms that cancel)."""
    from torch_ref import rel_err, torch_reference

    y, grads, gx = torch_reference(cfg, params, x, grad_y, dtype="float32")
    errs = {k: rel_err(g, ref[1][k]) for k, g in grads.items()}
    return {"y": rel_err(y, ref[0]), "grad_x": rel_err(gx, ref[2]), **errs}

