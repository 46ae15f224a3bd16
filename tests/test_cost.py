"""unetc.cost against oracles written here: MACs counted from forward hooks on the real PyTorch
module, torchinfo's count, every forward tensor recorded by a TorchFunctionMode, and
sum(p.numel()) of the module's parameters."""
from __future__ import annotations

import pytest
import sympy as sp
import torch
from torch.overrides import TorchFunctionMode

from unetc.config import load, parse
from unetc.cost import cost
from unetc.errors import ShapeError, UsageError
from unetc.torch_interop import torch_module

from conftest import EXAMPLES

SMALL = "base_c: 4\nin_c: 3\nout_c: 2\n"  # fast torch runs at many sizes


def hook_macs(cfg, h: int, w: int) -> dict[str, int]:
    """Per-layer forward MACs of the torch module at h x w, from hooked shapes and weights:
    Conv2d weight.numel()*Hout*Wout, ConvTranspose2d weight.numel()*Hin*Win."""
    m = torch_module(cfg)
    counts: dict[str, int] = {}

    def hook(name):
        def run(mod, inputs, output):
            (_, _, hi, wi), (_, _, ho, wo) = inputs[0].shape, output.shape
            pixels = hi * wi if isinstance(mod, torch.nn.ConvTranspose2d) else ho * wo
            counts[name] = mod.weight.numel() * pixels
        return run

    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        m(torch.zeros(1, cfg.in_c, h, w, dtype=getattr(torch, cfg.dtype)))
    return counts


class Record(TorchFunctionMode):
    """Records (function name, output numel) of every torch call of a forward."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.calls.append((getattr(func, "__name__", str(func)), out.numel()))
        return out


def forward_tensors(cfg, h: int, w: int) -> list[tuple[str, int]]:
    """[("input", numel of x)] + (function, output numel) of every call of the forward."""
    m = torch_module(cfg)
    x = torch.zeros(1, cfg.in_c, h, w, dtype=getattr(torch, cfg.dtype))
    with torch.no_grad(), Record() as rec:
        m(x)
    return [("input", x.numel())] + rec.calls


@pytest.fixture(scope="module")
def default_128():
    return cost(load(None).with_sizes(128, 128))


def test_default_128_macs_equal_hook_count(default_128):
    cfg = load(None)
    hooked = hook_macs(cfg, 128, 128)
    ours = {l.name: default_128.value(l.macs) for l in default_128.layers if l.macs != 0}
    assert ours == hooked
    assert default_128.total("macs") == sum(hooked.values()) == 3_486_515_200


def test_default_128_against_torchinfo(default_128):
    """torchinfo counts (weight + bias).numel() * Hout*Wout for every Conv*: for Conv2d that is our
    MACs + bias adds; for the stride-2 ConvTranspose2d it counts Hout*Wout = 4x the input pixels,
    so upT is compared with the hand count Cin*Cout*k^2*Hin*Win instead."""
    import torchinfo  # in the test extra (pure Python); an oracle test, never skipped

    m = torch_module(load(None))
    s = torchinfo.summary(m, input_size=(1, 3, 128, 128), verbose=0)
    theirs = {l.var_name: l.macs for l in s.summary_list if l.is_leaf_layer}
    ours = {l.name: l for l in default_128.layers}
    for name, macs in theirs.items():
        if name == "upT":
            assert default_128.value(ours[name].macs) == 128 * 64 * 2 * 2 * 64 * 64
            assert macs == (128 * 64 * 4 + 64) * 128 * 128  # torchinfo's own rule, on the output
        else:
            assert default_128.value(ours[name].macs + ours[name].other) == macs, name
    conv2d = [n for n in theirs if n != "upT"]
    assert s.total_mult_adds == sum(theirs[n] for n in conv2d) + theirs["upT"] == 3_895_492_608


def test_params_equal_module_numel(default_128):
    m = torch_module(load(None))
    assert default_128.total("params") == sum(p.numel() for p in m.parameters()) == 403_842
    per = {l.name: l.params for l in default_128.layers if l.params}
    assert per == {n: sum(p.numel() for p in mod.parameters()) for n, mod in m.named_children()}


@pytest.mark.parametrize("extra", ["", "conv_kernel: 5\nconv_padding: 2\nhead_kernel: 3\nhead_padding: 1\n",
                                   "pool_kernel: 3\npool_stride: 3\nup_kernel: 3\nup_stride: 3\n",
                                   "pool_kernel: 3\npool_stride: 2\nup_kernel: 3\nup_stride: 2\n"])
def test_symbolic_formulas_equal_hook_count_at_sizes(extra):
    cfg = parse(SMALL + extra)
    sym = cost(cfg)
    assert sym.h.name == "H" and sym.w.name == "W" and not sym.concrete
    assert str(sym.formulas["macs"].free_symbols) in ("{H, W}", "{W, H}")
    ran = 0
    for h, w in [(6, 6), (12, 9), (18, 24), (7, 9), (13, 11)]:
        try:
            hooked = hook_macs(cfg, h, w)
        except RuntimeError:  # PyTorch cannot run this geometry here: neither may cost
            with pytest.raises(ShapeError, match="PyTorch cannot run"):
                sym.at(h, w)
            continue
        c = sym.at(h, w)
        assert c.concrete and c.total("macs") == sum(hooked.values()), (h, w)
        assert c.total("bwd_macs") == 2 * sum(hooked.values())
        assert cost(cfg.with_sizes(h, w)).to_json()["total"] == c.to_json()["total"]
        ran += 1
    assert ran >= 2


def test_activations_and_train_peak_against_recorded_forward():
    cfg = parse(SMALL + "dtype: float64\n")
    c = cost(cfg).at(10, 14)
    calls = forward_tensors(cfg, 10, 14)
    x, outs = calls[0][1], [n for _, n in calls[1:]]
    assert [f for f, _ in calls[1:]] == ["conv2d", "relu", "conv2d", "relu", "max_pool2d", "conv2d", "relu",
                                         "conv2d", "relu", "conv_transpose2d", "cat", "conv2d", "relu",
                                         "conv2d", "relu", "conv2d"]
    assert [c.value(l.elements) for l in c.layers] == outs
    assert c.total("activations") == sum(outs) and c.total("activation_bytes") == 8 * sum(outs)
    assert c.total("input") == x
    # kept for the backward: x and the outputs s1, skip1, pooled, b1, bottleneck, merged, u1, u2
    saved = x + sum(outs[i] for i in (1, 3, 4, 6, 8, 10, 12, 14))
    params = sum(p.numel() for p in torch_module(cfg).parameters())
    assert c.total("train_peak") == saved + (x + sum(outs)) + params
    assert c.total("train_peak_bytes") == 8 * c.total("train_peak")


def test_other_ops_counted_apart_from_macs():
    c = cost(parse(SMALL)).at(8, 8)
    assert c.total("comparisons") == 4 * 4 * 64 + 2 * 8 * 16 + 3 * 4 * 16  # 4+2 ReLUs, pool k^2-1 = 3
    assert c.total("copies") == 8 * 64
    assert c.total("bias_adds") == (4 * 4 + 4 + 2) * 64 + 8 * 2 * 16  # upT adds at full res


def test_json_formulas_parse_back_and_values_are_ints(default_128):
    j = default_128.to_json()
    H, W = sp.Symbol("H", integer=True, positive=True), sp.Symbol("W", integer=True, positive=True)
    macs = sp.sympify(j["total"]["macs"]["formula"], locals={"H": H, "W": W})
    assert macs.subs({H: 128, W: 128}) == j["total"]["macs"]["value"] == 3_486_515_200
    assert all(type(v["value"]) is int for v in j["total"].values())
    assert j["layers"][0]["output"] == [64, 128, 128] and j["sizes"] == {"in_h": 128, "in_w": 128}
    sym = cost(load(None)).to_json()
    assert sym["total"]["macs"] == {"formula": "149312*H*W + 253952*floor(H/2)*floor(W/2)", "value": None}
    assert sym["layers"][4]["output"] == [64, "floor(H/2)", "floor(W/2)"]


def test_table_rows_short_formulas_and_numbers(default_128):
    rows = cost(load(None)).table_rows()
    assert rows[0][:4] == ["layer", "op", "output", "params"]
    assert rows[-1][0] == "total" and rows[-1][4] == "149312*H*W + 253952*floor(H/2)*floor(W/2)"
    assert default_128.table_rows()[-1][4] == "3,486,515,200"
    assert dict(default_128.summary_rows())["macs"] == "3,486,515,200"


def test_odd_size_breaks_at_concat_like_pytorch():
    cfg = parse(SMALL + "in_h: 9\nin_w: 8\n")
    with pytest.raises(RuntimeError):
        hook_macs(cfg, 9, 8)
    with pytest.raises(ShapeError, match=r"merged: skip1 H = 9 but up H = 8; PyTorch cannot run"):
        cost(cfg)


def test_concat_mismatch_found_at_bound_sizes():
    """conv_kernel 5, padding 1: skip1 is H - 4, up 2*floor(H/2) - 12; PyTorch fails the concat."""
    cfg = parse(SMALL + "conv_kernel: 5\nconv_padding: 1\n")
    with pytest.raises(RuntimeError):
        hook_macs(cfg, 64, 64)
    with pytest.raises(ShapeError, match=r"cost at 64x64: merged: skip1 H = 60 but up H = 52; PyTorch"):
        cost(cfg).at(64, 64)


def test_concat_mismatch_at_every_size_is_an_error():
    """pool 1x1 s1 and upT 2x2 s1: up is H + 1 next to skip1's H, at every size."""
    cfg = parse(SMALL + "pool_kernel: 1\npool_stride: 1\nup_stride: 1\n")
    with pytest.raises(RuntimeError):
        hook_macs(cfg, 8, 8)
    with pytest.raises(ShapeError, match=r"cost: merged: skip1 \(4, H, W\) and up \(4, H \+ 1, W \+ 1\) differ"):
        cost(cfg)


def test_undefined_layer_and_bad_sizes():
    c = cost(parse(SMALL))
    with pytest.raises(ShapeError, match=r"pool: window 2 <= input 1 fails"):
        c.at(1, 8)
    with pytest.raises(UsageError, match="integers >= 1"):
        c.at(0, 8)


def test_concrete_axis_does_not_capture_the_other_axis_symbol():
    c = cost(parse(SMALL + "in_h: 8\nin_w: H\n"))
    assert str(c.w) == "H" and str(c.h) == "H0" and not c.concrete
    W = sp.Symbol("W", integer=True, positive=True)
    assert c.total("macs") == cost(parse(SMALL)).at(8, None).total("macs").subs(W, c.w)
    assert c.at(None, 6).total("macs") == sum(hook_macs(parse(SMALL), 8, 6).values())


def test_shared_symbol_means_square_input():
    c = cost(parse(SMALL + "in_h: S\nin_w: S\n"))
    assert c.at(6, 6).total("macs") == sum(hook_macs(parse(SMALL), 6, 6).values())
    with pytest.raises(UsageError, match="share"):
        c.at(6, 8)


def test_examples_cost_or_fail_cleanly():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        cfg = load(path)
        try:
            c = cost(cfg)
        except ShapeError as err:
            assert "PyTorch cannot run" in str(err), path
            continue
        assert c.total("params") == sum(p.numel() for p in torch_module(cfg).parameters()), path
