"""Shared test helpers: repo paths and an independent integer model of the spec's size rules."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def out_i(n, k, s, p):
    """Conv/pool output size, or None where PyTorch raises (written independently of unetc)."""
    if n is None or n + 2 * p < k:
        return None
    return (n + 2 * p - k) // s + 1


def out_t_i(n, k, s, p):
    if n is None:
        return None
    v = (n - 1) * s + k - 2 * p
    return v if v >= 1 else None


def spec_truth(c: dict, n: int) -> dict[str, bool]:
    """For one axis of size n: which of the spec's hypotheses hold, with every layer on the way defined."""
    conv = (c["conv_kernel"], c["conv_stride"], c["conv_padding"])
    full_ok = out_i(n, *conv) is not None
    d = out_i(n, c["pool_kernel"], c["pool_stride"], 0) if full_ok else None
    low = out_i(d, *conv)
    u = out_t_i(d, c["up_kernel"], c["up_stride"], c["up_padding"]) if low is not None else None
    head = out_i(n, c["head_kernel"], c["head_stride"], c["head_padding"]) if u is not None else None
    return {
        "conv": full_ok and out_i(n, *conv) == n,
        "conv_down": low is not None and low == d,
        "up": u is not None and u == n,
        "out": head is not None and head == n,
    }


GEOMETRY_KEYS = ["pool_kernel", "pool_stride", "conv_kernel", "conv_stride", "conv_padding",
                 "up_kernel", "up_stride", "up_padding", "head_kernel", "head_stride", "head_padding"]


def random_geometry(rng: random.Random) -> dict:
    """Kernels 1-7, strides 1-4, paddings 0-3 (biased towards size-preserving choices)."""
    c = {}
    for key in GEOMETRY_KEYS:
        if key.endswith("kernel"):
            c[key] = rng.randint(1, 7)
        elif key.endswith("stride"):
            c[key] = rng.choice([1, 1, 2, 2, 3, 4])
        else:
            c[key] = rng.randint(0, 3)
    if rng.random() < 0.5:  # make the convs size-preserving half of the time
        c["conv_kernel"] = rng.choice([1, 3, 5, 7]); c["conv_stride"] = 1; c["conv_padding"] = c["conv_kernel"] // 2
        c["head_kernel"] = rng.choice([1, 3]); c["head_stride"] = 1; c["head_padding"] = c["head_kernel"] // 2
    return c


def model_valid(geometry: dict, limit: int = 40) -> list[int]:
    """Valid sizes <= limit by the independent integer model (spec_truth)."""
    return [n for n in range(1, limit + 1) if all(spec_truth(geometry, n).values())]


def valid_geometries(count: int, seed: int, limit: int = 40) -> list[dict]:
    """The first ``count`` seeded random geometries with >= 3 valid sizes <= limit."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        g = random_geometry(rng)
        if len(model_valid(g, limit)) >= 3:
            out.append(g)
    return out


def assert_same_nonfinite(a, b, what: str, tol: float) -> None:
    """Same NaN positions, same infinities, finite values within tol (relative to b's scale)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN at {np.isnan(a).sum()} vs {np.isnan(b).sum()} places"
    inf = np.isinf(b)
    assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], b[inf]), f"{what}: infinities differ"
    fin = np.isfinite(b)
    scale = max(float(np.max(np.abs(b[fin]), initial=0.0)), 1e-300)
    assert float(np.max(np.abs(a[fin] - b[fin]), initial=0.0)) <= tol * scale, what


def assert_api_errors(mod, params, x) -> None:
    """The generated API's ValueErrors (same for every target), on CONFIG_MATRIX['default']."""
    import numpy as np

    with pytest.raises(ValueError, match=r"x: expected shape \(3, 8, 8\), got \(3, 8, 9\)"):
        mod.forward(params, np.zeros((3, 8, 9), np.float32))
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        mod.forward(params, x.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected a numpy.ndarray, got list"):
        mod.forward(params, x.tolist())
    with pytest.raises(ValueError, match="params: missing key 'upT.bias'"):
        mod.forward({k: v for k, v in params.items() if k != "upT.bias"}, x)
    with pytest.raises(ValueError, match="params: unexpected key 'extra'"):
        mod.forward({**params, "extra": x}, x)
    with pytest.raises(ValueError, match=r"params\['down1_1.weight'\]: expected shape"):
        mod.forward({**params, "down1_1.weight": np.zeros((4, 3, 3), np.float32)}, x)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2, 8, 8\)"):
        mod.backward(params, x, np.zeros((2, 8), np.float32))


@pytest.fixture
def tmp_config(tmp_path):
    def write(text: str, name: str = "cfg.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return write
