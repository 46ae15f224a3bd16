"""The checker's exact valid sets against brute force, the spec formulas and real PyTorch layers."""
from __future__ import annotations

import random

import pytest

from conftest import random_geometry, spec_truth
from unetc.checker import check
from unetc.config import Config

HYP = {"h_convH": "conv", "h_convW": "conv", "h_convH_down": "conv_down", "h_convW_down": "conv_down",
       "h_upH": "up", "h_upW": "up", "h_outH": "out", "h_outW": "out"}


def test_default_is_exactly_even_sizes():
    r = check(Config())
    assert r.ok
    for axis in ("in_h", "in_w"):
        assert r.valid[axis].progressions() == [(2, 2)]
        assert [n for n in range(1, 500) if n in r.valid[axis]] == list(range(2, 500, 2))
        assert r.valid[axis].describe() == "{2, 4, 6, 8, …}: even, ≥ 2"
    status = {c.name: c.status for c in r.constraints}
    assert status["h_convH"] == "proved" and status["h_upH"] == "conditional"


def test_concrete_odd_size_names_layer_and_nearest():
    r = check(Config(in_h=255, in_w=64))
    assert not r.ok
    up = next(c for c in r.constraints if c.name == "h_upH")
    assert up.status == "violated" and up.lhs == "254" and up.rhs == "255"
    assert "upT gives 254" in up.message and "nearest valid: 254, 256" in up.message
    assert next(c for c in r.constraints if c.name == "h_upW").status == "holds"


def test_degenerate_window_is_an_error_not_a_size():
    r = check(Config(in_h=1, in_w=8))
    c = next(c for c in r.constraints if c.name == "h_convH_down")
    assert c.status == "violated" and c.lhs == "undefined"
    assert "pool" in c.message and "silently give size 0" in c.message


@pytest.mark.parametrize("seed", range(120))
def test_random_geometry_matches_brute_force(seed):
    rng = random.Random(seed)
    geo = random_geometry(rng)
    r = check(Config(**geo))
    for c in r.constraints:
        truth = {n for n in range(1, 201) if spec_truth(geo, n)[HYP[c.name]]}
        got = {n for n in range(1, 201) if n in c.valid}
        assert got == truth, (c.name, geo, sorted(got ^ truth)[:10])
        expected_status = ("impossible" if c.valid.empty else
                           "proved" if c.valid.smallest_missing() is None else "conditional")
        assert c.status == expected_status
    overall = {n for n in range(1, 201) if all(spec_truth(geo, n).values())}
    assert {n for n in range(1, 201) if n in r.valid["in_h"]} == overall
    # the progressions are an exact description of the set
    for s in r.valid.values():
        from_progs = {n for a, st in s.progressions() for n in ([a] if st == 0 else range(a, 201, st))}
        assert from_progs == {n for n in range(1, 201) if n in s}


def _torch_sizes(geo: dict, n: int):
    """Run the real layers on a 1x1xn x n zero tensor; sizes of (z1, pooled, z3, up, y) or None."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ck, cs, cp = geo["conv_kernel"], geo["conv_stride"], geo["conv_padding"]
    w = torch.zeros(1, 1, ck, ck, dtype=torch.float64)
    try:
        x = torch.zeros(1, 1, n, n, dtype=torch.float64)
        z1 = F.conv2d(x, w, stride=cs, padding=cp)
        pooled = F.max_pool2d(torch.zeros(1, 1, n, n, dtype=torch.float64), geo["pool_kernel"], geo["pool_stride"])
        z3 = F.conv2d(pooled, w, stride=cs, padding=cp)
        wt = torch.zeros(1, 1, geo["up_kernel"], geo["up_kernel"], dtype=torch.float64)
        up = F.conv_transpose2d(pooled, wt, stride=geo["up_stride"], padding=geo["up_padding"])
        wh = torch.zeros(1, 1, geo["head_kernel"], geo["head_kernel"], dtype=torch.float64)
        y = F.conv2d(x, wh, stride=geo["head_stride"], padding=geo["head_padding"])
    except RuntimeError:
        return None
    return z1.shape[-1], pooled.shape[-1], z3.shape[-1], up.shape[-1], y.shape[-1]


@pytest.mark.parametrize("seed", range(40))
def test_random_geometry_matches_pytorch(seed):
    """A size is valid iff PyTorch's own layers run and preserve the sizes the spec rewrites."""
    rng = random.Random(1000 + seed)
    geo = random_geometry(rng)
    r = check(Config(**geo))
    for n in range(1, 61):
        s = _torch_sizes(geo, n)
        torch_ok = s is not None and s[0] == n and s[2] == s[1] and s[3] == n and s[4] == n
        assert (n in r.valid["in_h"]) == torch_ok, (geo, n, s)


def test_examples_pool3_and_conv5():
    from conftest import EXAMPLES
    import unetc

    r = unetc.check(EXAMPLES / "pool3_up3.yaml")
    assert r.valid["in_h"].progressions() == [(3, 3)]
    r = unetc.check(EXAMPLES / "conv5_head3.yaml")
    assert r.ok and r.valid["in_w"].progressions() == [(2, 2)]


def test_overlapping_pool_every_size():
    r = check(Config(pool_kernel=3, pool_stride=1, up_kernel=3, up_stride=1))
    assert r.valid["in_h"].progressions() == [(3, 1)]


def test_stride2_conv_is_unsatisfiable():
    r = check(Config(conv_stride=2))
    assert not r.ok and r.valid["in_h"].empty
    assert next(c for c in r.constraints if c.name == "h_convH").valid.progressions() == [(1, 0)]


def test_large_tensor_warning_and_limits():
    """A forward tensor of 2^31 elements or more is named (channel counts are Python ints)."""
    r = check(Config(base_c=128, in_h=4096, in_w=4096))
    assert r.ok and r.warnings == ["tensor merged has 4,294,967,296 elements (>= 2^31): "
                                   "32-bit indexing cannot address it"]
    assert check(Config(base_c=64, in_h=128, in_w=128)).warnings == []
    assert r.limits == {"geometry": 2 ** 20, "period": 2 ** 22, "span": 2 ** 23}
