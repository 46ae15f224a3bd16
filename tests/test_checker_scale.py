"""The checker at the edges of the geometry limits: every config answers in bounded time (the
slow cases of issue 10 run in a subprocess with a timeout, so a hang fails), refuses what is
beyond its limits with one clear line, and stays exact: its sets against a vectorised brute
force of the spec's size rules (itself checked against conftest.spec_truth) on large kernels,
strides and paddings, and IntSet's readings against brute force on random eventually periodic sets."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from conftest import spec_truth
from unetc.checker import GEOMETRY_LIMIT, check
from unetc.config import Config
from unetc.errors import UsageError
from unetc.intset import IntSet

HYP = {"h_convH": "conv", "h_convW": "conv", "h_convH_down": "conv_down", "h_convW_down": "conv_down",
       "h_upH": "up", "h_upW": "up", "h_outH": "out", "h_outW": "out"}
BIG = 10 ** 30


def unchecked(**kw) -> Config:
    """A Config with ``kw`` set past Config's own validation: check() must stay safe on its own."""
    cfg = Config()
    for key, value in kw.items():
        object.__setattr__(cfg, key, value)
    return cfg


def truth_arrays(c: dict, n: np.ndarray) -> dict[str, np.ndarray]:
    """spec_truth for every n of an int64 array at once (same rules, written independently of unetc)."""
    def out(x, k, s, p):
        ok = x + 2 * p >= k
        return np.where(ok, (x + 2 * p - k) // s + 1, 0), ok

    conv = (c["conv_kernel"], c["conv_stride"], c["conv_padding"])
    z, full_ok = out(n, *conv)
    d, pool_ok = out(n, c["pool_kernel"], c["pool_stride"], 0)
    low, low_ok = out(d, *conv)
    low_ok &= pool_ok & full_ok
    u = (d - 1) * c["up_stride"] + c["up_kernel"] - 2 * c["up_padding"]
    up_ok = low_ok & (u >= 1)
    head, head_ok = out(n, c["head_kernel"], c["head_stride"], c["head_padding"])
    head_ok &= up_ok
    return {"conv": full_ok & (z == n), "conv_down": low_ok & (low == d),
            "up": up_ok & (u == n), "out": head_ok & (head == n)}


def big_geometry(rng: random.Random) -> dict:
    """Kernels, strides and paddings up to 1024, biased towards sets that are infinite."""
    ps = rng.choice([1, 2, 3, 7, 64, 100, 1000, 1023, 1024])
    cs = rng.choice([1, 1, 1, 2, 3, 1024])
    ck = rng.randint(1, 1024)
    hs = rng.choice([1, 1, 2, 1024])
    hk = rng.randint(1, 1024)
    us = rng.choice([ps, ps, rng.randint(1, 1024)])
    if rng.random() < 0.5:  # a size-preserving head: h_out then hinges on the layers being defined
        hs, hk = 1, 2 * rng.randint(0, 511) + 1
    return {"pool_kernel": rng.choice([ps, ps, rng.randint(1, 1024)]), "pool_stride": ps,
            "conv_kernel": ck, "conv_stride": cs, "conv_padding": rng.choice([(ck - 1) // 2, rng.randint(0, 1024)]),
            "up_kernel": rng.choice([us, rng.randint(1, 1024)]), "up_stride": us,
            "up_padding": rng.choice([0, rng.randint(0, 1024), rng.randint(0, 1024)]),
            "head_kernel": hk, "head_stride": hs, "head_padding": rng.choice([(hk - 1) // 2, rng.randint(0, 1024)])}


def progression_mask(s: IntSet, limit: int) -> np.ndarray:
    """Membership of 0..limit read from the progressions alone."""
    m = np.zeros(limit + 1, dtype=bool)
    for start, step in s.progressions():
        if start <= limit:
            m[start::step or limit + 1] = True
    return m


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_model_is_spec_truth(seed):
    from conftest import random_geometry

    geo = random_geometry(random.Random(seed))
    got = truth_arrays(geo, np.arange(1, 301, dtype=np.int64))
    for i, n in enumerate(range(1, 301)):
        assert {k: bool(v[i]) for k, v in got.items()} == spec_truth(geo, n), (geo, n)


@pytest.mark.parametrize("seed", range(24))
def test_large_geometry_matches_brute_force(seed):
    """Exact on kernels/strides/paddings up to 1024: every n up to past the periodic part."""
    geo = big_geometry(random.Random(seed))
    r = check(Config(**geo))
    sets = [c.valid for c in r.constraints] + list(r.valid.values())
    # the formulas' own period (lcm of the strides met in floors), capped to bound the brute force
    formulas = int(np.lcm.reduce([geo["pool_stride"] * geo["conv_stride"], geo["head_stride"]]))
    limit = max(s.threshold for s in sets) + 2 * max(s.period for s in sets) + min(2 * formulas, 2 ** 21) + 4096
    assert limit < 2 ** 23
    n = np.arange(1, limit + 1, dtype=np.int64)
    truth = truth_arrays(geo, n)
    overall = truth["conv"] & truth["conv_down"] & truth["up"] & truth["out"]
    for name, s in [(c.name, c.valid) for c in r.constraints] + list(r.valid.items()):
        want = truth[HYP[name]] if name in HYP else overall
        got = s.members(n)
        bad = np.flatnonzero(got != want)
        assert not bad.size, (name, geo, (n[bad[:5]]).tolist())
        assert np.array_equal(progression_mask(s, limit)[1:], want), (name, geo)
        for m in random.Random(seed).sample(range(1, limit + 1), 50):  # scalar membership agrees
            assert (m in s) == bool(want[m - 1])


def test_pool_and_up_1000_is_multiples_of_1000():
    geo = dict(pool_kernel=1000, pool_stride=1000, up_kernel=1000, up_stride=1000)
    r = check(Config(**geo))
    full = {**Config().to_dict(), **geo}
    brute = [n for n in range(1, 5001) if all(spec_truth(full, n).values())]
    assert brute == [1000, 2000, 3000, 4000, 5000]
    for axis in ("in_h", "in_w"):
        assert r.valid[axis].progressions() == [(1000, 1000)]
        assert r.valid[axis].describe() == "{1000, 2000, 3000, 4000, …}: multiple of 1000, ≥ 1000"


def test_huge_concrete_size_nearest_is_exact():
    r = check(unchecked(in_h=10 ** 30 + 1, in_w=64))
    up = next(c for c in r.constraints if c.name == "h_upH")
    assert up.status == "violated" and f"nearest valid: {10 ** 30}, {10 ** 30 + 2}" in up.message
    r = check(unchecked(pool_kernel=1000, pool_stride=1000, up_kernel=1000, up_stride=1000, in_h=10 ** 12 + 7,
                        in_w=1000))
    assert not r.ok and f"nearest valid: {10 ** 12}, {10 ** 12 + 1000}" in r.constraints[4].message


@pytest.mark.parametrize("seed", range(40))
def test_intset_readings_match_brute_force(seed):
    """Random eventually periodic sets: membership, &, progressions, nearest, smallest_missing, first."""
    rng = random.Random(seed)

    def rand_set():
        period, threshold = rng.choice([1, 2, 3, 4, 6, 12, 30]), rng.randint(1, 40)
        head = {n for n in range(1, threshold) if rng.random() < rng.random()}
        tail = {r for r in range(period) if rng.random() < 0.4}
        pred = lambda n: n in head if n < threshold else n % period in tail  # noqa: E731
        return IntSet.from_predicate(pred, threshold, period), pred

    (a, pa), (b, pb) = rand_set(), rand_set()
    limit = 400
    for s, pred in ((a, pa), (b, pb), (a & b, lambda n: pa(n) and pb(n))):
        members = [n for n in range(1, limit) if pred(n)]
        assert [n for n in range(1, limit) if n in s] == members
        assert list(np.flatnonzero(s.members(np.arange(limit)))) == members
        assert list(np.flatnonzero(progression_mask(s, limit - 1))) == members
        assert s.first(5) == members[:5]
        assert s.smallest_missing() == next((n for n in range(1, limit) if not pred(n)), None)
        assert s.empty == (not members) and s.infinite == any(pred(n) for n in range(300, 400))
        for n in range(0, 300):
            below = next((m for m in range(n - 1, 0, -1) if pred(m)), None)
            above = next((m for m in range(n + 1, limit) if pred(m)), None)
            assert s.nearest(n) == (below, above), (n, s)
        if s.infinite:  # periodicity: nearest of a huge n is a shift of a small one
            k = 10 ** 40 * s.period
            below, above = s.nearest(250)
            assert s.nearest(250 + k) == (below + k, above + k)
        # canonical: the progressions start as early as the set allows and the period is minimal
        for start, step in s.progressions():
            assert not step or not pred(start - step) or start - step < 1
        assert all(any(pred(n) != pred(n + p) for n in range(200, 300)) for p in range(1, s.period)
                   if s.period % p == 0)


# ---- the slow cases of issue 10, each in a subprocess with a timeout: a hang or blow-up fails ----

SLOW = {
    **{f"{k}_1e30": {k: BIG} for k in ("pool_kernel", "pool_stride", "conv_kernel", "conv_stride",
                                      "up_padding", "head_kernel", "head_stride")},
    "pool_stride_1000": {"pool_stride": 1000},
    "pool_stride_1024": {"pool_stride": 1024},
    "pool_stride_1024_conv_stride_1024": {"pool_stride": 1024, "conv_stride": 1024},
    "all_strides_about_1024": {"pool_stride": 1023, "conv_stride": 1024, "up_stride": 1021, "head_stride": 1019},
    "kernels_and_paddings_1024": {"conv_kernel": 1024, "conv_padding": 0, "pool_kernel": 1024,
                                  "pool_stride": 1024, "up_kernel": 1, "up_padding": 1024},
    "conv_stride_2_in_h_1e8": {"conv_stride": 2, "in_w": 1, "in_h": 10 ** 8},
    "size_4001x3999": {"in_c": 1, "out_c": 1, "base_c": 3, "pool_kernel": 1, "pool_stride": 1,
                       "up_kernel": 1, "up_stride": 1, "in_h": 4001, "in_w": 3999},
    "size_9973x9967": {"in_c": 1, "out_c": 1, "base_c": 3, "pool_kernel": 1, "pool_stride": 1,
                       "up_kernel": 1, "up_stride": 1, "in_h": 9973, "in_w": 9967},
}
_RUN = """
import json, sys
from unetc.checker import check
from unetc.config import Config
from unetc.errors import UnetcError
cfg = Config()
for key, value in json.loads(sys.argv[1]).items():  # past Config's validation: check() must be safe alone
    object.__setattr__(cfg, key, value)
try:
    r = check(cfg)
    print(json.dumps({"ok": r.ok, "valid": {a: s.progressions()[:4] for a, s in r.valid.items()},
                      "ws": r.workspace_bytes}))
except UnetcError as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err)}))
"""


@pytest.mark.parametrize("case", sorted(SLOW))
def test_slow_case_answers_quickly(case):
    geo = SLOW[case]
    p = subprocess.run([sys.executable, "-c", _RUN, json.dumps(geo)], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    if BIG in geo.values():
        key = next(k for k, v in geo.items() if v == BIG)
        assert out == {"error": "UsageError",
                       "message": f"{key} = 1.000e+30 is above the checker's limit {GEOMETRY_LIMIT} (2^20)"}
        return
    assert "error" not in out and out["ws"] is None  # the checker computes no C workspace
    if case.startswith("size_"):
        assert out["ok"] is True
    if case == "pool_stride_1024":  # pool 2/1024, up 2/2: only H = 2 has d = 1 and 2*d = H
        assert out["valid"] == {"in_h": [[2, 0]], "in_w": [[2, 0]]}


def test_refusals_name_the_limit():
    with pytest.raises(UsageError, match=r"conv_stride = 1048577 is above the checker's limit 1048576"):
        check(unchecked(conv_stride=GEOMETRY_LIMIT + 1))
    with pytest.raises(UsageError, match=r"h_convH_down: in_h sizes repeat with period \d+ .*limit 4194304"):
        check(unchecked(pool_stride=2 ** 20, conv_stride=2 ** 20))


def test_checker_imports_no_target():
    code = "import unetc.checker, sys; print([m for m in sys.modules if 'targets' in m])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


@pytest.mark.parametrize("in_h, in_w", [("H", "W"), (16, 12)])
def test_specialize_reuses_the_checkers_graph(in_h, in_w, monkeypatch):
    """Emit builds the symbolic graph once: specialize takes the one the checker analysed."""
    from unetc import graph, specialize

    built = []
    real = graph.build_at
    monkeypatch.setattr(graph, "build_at", lambda *a: built.append(a) or real(*a))
    monkeypatch.setattr(specialize, "build_at", lambda *a: built.append(a) or real(*a))
    cfg = Config(name="once", in_h=in_h, in_w=in_w)
    report = check(cfg)
    n_check = len(built)
    sp = specialize.specialize(cfg, report)
    assert len(built) == n_check  # specialize built no graph of its own
    assert sp.shapes["y"] == (2, *(graph.SIZE_SYMBOLS if in_h == "H" else (16, 12)))
