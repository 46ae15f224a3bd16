"""The report's new parts against oracles: where PyTorch runs (unetc.runs) against the real
torch module run at every size, the layer table's PyTorch shapes against hooked torch shapes,
simplified size formulas against the originals, conflicts, the 100-column text and the JSON."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import sympy as sp
import torch

from conftest import random_geometry
from unetc.checker import check, conflicts
from unetc.config import Config
from unetc.report import details, readable, simplified, to_json, to_text
from unetc.runs import runs, torch_shapes
from unetc.graph import build
from unetc.sizes import int_evaluator
from unetc.torch_interop import torch_module

TINY = dict(in_c=1, out_c=1, base_c=1, dtype="float64")


def torch_net(**geo):
    m = torch_module(Config(**TINY, **geo)).eval()

    def run(h: int, w: int):
        """PyTorch's output (H, W) at h x w, or None where it raises."""
        try:
            with torch.no_grad():
                return tuple(m(torch.zeros(1, 1, h, w, dtype=torch.float64)).shape[-2:])
        except RuntimeError:
            return None
    return run


def test_stride2_conv_runs_exactly_at_5_to_8_with_output_1():
    run = torch_net(conv_stride=2)
    truth = {n for n in range(1, 41) if run(n, n) is not None}
    assert truth == {5, 6, 7, 8} and {run(n, n) for n in truth} == {(1, 1)}
    a = runs(check(Config(conv_stride=2)))["in_h"]
    assert {n for n in range(1, 41) if n in a.runs} == truth and not a.runs.infinite
    assert a.output_values() == [1] and a.spec.empty


def test_head3_pad0_runs_at_even_sizes_from_4_with_output_minus_2():
    run = torch_net(head_kernel=3, head_padding=0)
    r = runs(check(Config(head_kernel=3, head_padding=0)))
    for n in range(1, 31):  # one axis at a time: the other held at a size that runs
        assert (run(n, 8) is not None) == (n in r["in_h"].runs) == (n % 2 == 0 and n >= 4)
        assert (run(8, n) is not None) == (n in r["in_w"].runs)
        if run(n, 8):
            assert run(n, 8) == (n - 2, 6)
    assert readable(r["in_h"].output) == "H - 2" and readable(r["in_w"].output) == "W - 2"
    assert r["in_h"].runs.describe() == "{4, 6, 8, 10, …}: even, ≥ 4"


@pytest.mark.parametrize("seed", range(16))
def test_runs_set_and_output_match_torch_on_random_geometries(seed):
    geo = random_geometry(random.Random(3000 + seed))
    run = torch_net(**geo)
    r = runs(check(Config(**geo)))
    h = r["in_h"]
    for n in range(1, 41):
        got = run(n, n)
        assert (got is not None) == (n in h.runs), (geo, n, got)
        if got is not None:
            assert got[0] == int(h.output.subs(h.symbol, n)) == int(simplified(h.output).subs(h.symbol, n))
    if h.runs.empty:
        assert h.breaks is not None and h.breaks[0] in {op.name for op in build(Config(**geo)).ops}


@pytest.mark.parametrize("seed", range(24))
def test_simplified_sizes_equal_the_originals(seed):
    geo = random_geometry(random.Random(4000 + seed))
    g = build(Config(**geo), symbolic=True)
    ns = np.arange(-40, 200, dtype=np.int64)
    for shape in torch_shapes(g).values():
        for e, sym in ((shape[1], g.h), (shape[2], g.w)):
            s = simplified(e)  # exact integer evaluation of both (floats misround floor(4/3 - 7/3))
            assert list(int_evaluator(e, sym, 200)(ns)) == list(int_evaluator(s, sym, 200)(ns)), (e, s)


def test_simplified_readings():
    H = sp.Symbol("H", integer=True, positive=True)
    assert readable(sp.floor(H / 2 - sp.Rational(1, 2)) + 1) == "ceiling(H/2)"
    assert readable(sp.floor(sp.floor(H / 2 - sp.Rational(1, 2)) / 2) + 1) == "ceiling(H/4)"
    assert readable(sp.floor(H / 3 - sp.Rational(5, 3)) + 1) == "floor((H + 1)/3) - 1"
    assert readable(2 * sp.floor(H / 2)) == "2*floor(H/2)"


def hooked_shapes(cfg: Config, h: int, w: int) -> dict[str, tuple]:
    """Output (H, W) of every conv layer of the real module, recorded by hooks until it fails."""
    m = torch_module(cfg)
    seen: dict[str, tuple] = {}
    for name, mod in m.named_children():
        mod.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, tuple(o.shape[-2:])))
    with torch.no_grad(), pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        m(torch.zeros(1, cfg.in_c, h, w, dtype=torch.float32))
    return seen


def test_conv5_pad1_table_marks_rewrites_and_the_real_break():
    cfg = Config(conv_kernel=5, conv_padding=1, base_c=4).with_sizes(64, 64)
    real = hooked_shapes(cfg, 64, 64)
    assert real["down1_2"] == (60, 60) and real["upT"] == (52, 52)
    r = check(cfg)
    text = to_text(r, details(r))
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    for layer, (hh, ww) in real.items():
        assert f", {hh}, {ww})" in rows[layer], rows[layer]
    assert "(4, 62, 62)" in rows["down1_1"] and rows["down1_1"].endswith("→ spec assumes 64, 64")
    assert rows["pool"].endswith("→ spec assumes 32, 32")
    assert "✗ PyTorch fails here" in rows["merged"] and "not computed" in rows["up1_1"]
    assert "✗ PyTorch fails at merged: skip1 H = 60 but up H = 52" in text


def cut(text: str) -> bool:
    """A cell cut to fit ends in '…' (a set's listing '{2, 4, …}' is not a cut)."""
    return re.search(r"…(?!})", text) is not None


def test_stride2_table_reads_ceiling_and_names_long_sizes_to_fit():
    r = check(Config(conv_stride=2))
    d = details(r)
    wide = to_text(r, d, wide=True)
    row = next(line for line in wide.splitlines() if line.startswith("down1_1"))
    assert "(64, ceiling(H/2), ceiling(W/2))" in row and "→ spec assumes H, W" in row
    text = to_text(r, d)
    assert max(map(len, text.splitlines())) <= 100 and not cut(text)
    row = next(line for line in text.splitlines() if line.startswith("down1_1"))
    assert "(64, H_1, W_1)" in row and "where H_1 = ceiling(H/2), W_1 = ceiling(W/2)," in text


def test_conflicts_name_both_hypotheses_and_their_sets():
    r = check(Config(conv_stride=2))
    pairs = [(a.name, b.name) for a, b in conflicts(r, "in_h")]
    assert ("h_convH", "h_convH_down") in pairs
    for a, b in conflicts(r, "in_h"):
        assert not any(n in a.valid and n in b.valid for n in range(1, 300))
    text = to_text(r, details(r))
    assert "FAILED: no in_h satisfies every hypothesis at once: h_convH valid at {1} vs h_convH_down at {2, 3}" in text
    assert "conflict: h_convH valid at {1} vs h_convH_down at {2, 3}" in text


@pytest.mark.parametrize("sizes", [None, (128, 128)])
def test_default_text_fits_100_columns_with_legend(sizes):
    cfg = Config() if sizes is None else Config().with_sizes(*sizes)
    r = check(cfg)
    text = to_text(r, details(r), cost_table=True)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert not cut(to_text(r, details(r)))  # the default's own table needs no cut
    assert "proved = holds for every size" in text and "impossible = holds for no size" in text
    assert "holds / violated = at the bound size" in text and "conditional = holds for the sizes shown" in text
    assert "checker limits: geometry ≤ 2^20, period ≤ 2^22, span ≤ 2^23" in text


def test_long_formulas_named_unless_wide():
    cfg = Config(conv_stride=7, pool_stride=5, pool_kernel=5, up_stride=3, head_stride=2)
    r = check(cfg)
    d = details(r)
    narrow, wide = to_text(r, d, cost_table=True), to_text(r, d, wide=True, cost_table=True)
    assert max(map(len, narrow.splitlines())) <= 100 and "H_2 = ceiling(H/49)," in narrow and "(64, H_2, W_2)" in narrow
    assert max(map(len, wide.splitlines())) > 100 and "where" not in wide and not cut(wide)
    assert "(64, ceiling(H/49), ceiling(W/49))" in wide


def test_json_shapes_are_lists_and_nearest_is_a_list():
    r = check(Config().with_sizes(255, 64))
    obj = to_json(r, details(r))
    up = next(c for c in obj["constraints"] if c["name"] == "h_upH")
    assert up["nearest"] == [254, 256] and up["status"] == "violated"
    assert all(c["nearest"] is None for c in obj["constraints"] if c["status"] != "violated")
    layer = next(l for l in obj["layers"] if l["name"] == "upT")
    assert layer["pytorch"] == [64, 254, 64] and layer["spec"] == [64, 255, 64]
    assert obj["layers"][0]["inputs"] == [[3, 255, 64]]
    sym = to_json(check(Config()), details(check(Config())))
    pool = next(l for l in sym["layers"] if l["name"] == "pool")
    assert pool["pytorch"] == [64, "floor(H/2)", "floor(W/2)"] and sym["runs"]["in_h"]["output"] == "H"
