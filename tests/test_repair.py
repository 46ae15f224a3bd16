"""Repairs (unetc.repair): smallest edits first, each actually valid by an independent brute force
of the spec's size rules (conftest.spec_truth), within the time budget."""
from __future__ import annotations

import dataclasses
import random
import time

import numpy as np
import pytest

from conftest import random_geometry, spec_truth
from unetc.checker import check
from unetc.config import Config
from unetc.repair import BUDGET_S, _screen, repairs

GEOMETRY = ("pool_kernel", "pool_stride", "conv_kernel", "conv_stride", "conv_padding", "up_kernel",
            "up_stride", "up_padding", "head_kernel", "head_stride", "head_padding")


def geometry(cfg: Config) -> dict:
    return {k: getattr(cfg, k) for k in GEOMETRY}


def truly_valid(cfg: Config, n: int) -> bool:
    return all(spec_truth(geometry(cfg), n).values())


def assert_repair_is_valid(cfg: Config, rep) -> None:
    """The edited config is what the repair says, and its valid sets are exactly brute force's."""
    edited = dataclasses.replace(cfg, **{k: new for k, _, new in rep.changes})
    assert all(getattr(cfg, k) == old for k, old, _ in rep.changes)
    assert rep.report.config == edited and rep.report.ok
    for axis in ("in_h", "in_w"):
        truth = {n for n in range(1, 161) if truly_valid(edited, n)}
        assert {n for n in range(1, 161) if n in rep.report.valid[axis]} == truth
        value = getattr(cfg, axis)
        if isinstance(value, int):
            assert truly_valid(edited, value), (rep.text(), axis, value)
        else:
            assert truth, rep.text()


def test_head_kernel_3_padding_0_first_repair_is_head_padding_1():
    cfg = Config(head_kernel=3, head_padding=0)
    found = repairs(cfg)
    assert found and found[0].changes == (("head_padding", 0, 1),)
    assert found[0].text() == "set head_padding: 0 → 1"
    assert found[0].report.valid["in_h"].describe() == "{2, 4, 6, 8, …}: even, ≥ 2"
    for rep in found:
        assert_repair_is_valid(cfg, rep)


def test_stride2_conv_first_repair_is_stride_1():
    cfg = Config(conv_stride=2)
    found = repairs(cfg)
    assert found[0].changes == (("conv_stride", 2, 1),)
    for rep in found:
        assert_repair_is_valid(cfg, rep)


@pytest.mark.parametrize("sizes", [(64, 64), (255, 64)])
def test_repairs_make_the_bound_size_valid(sizes):
    cfg = Config(conv_kernel=5, conv_padding=1) if sizes == (64, 64) else Config()
    cfg = cfg.with_sizes(*sizes)
    assert not check(cfg).ok
    found = repairs(cfg)
    assert found
    for rep in found:
        assert_repair_is_valid(cfg, rep)
    if sizes == (64, 64):
        assert found[0].changes == (("conv_padding", 1, 2),)


def test_smallest_change_first():
    found = repairs(Config(head_kernel=3, head_padding=0), few=5)
    cost = [(len(r.changes), sum(abs(new - old) for _, old, new in r.changes)) for r in found]
    assert cost == sorted(cost)


def test_valid_config_suggestions_strictly_grow_the_valid_set():
    base = check(Config())
    found = repairs(Config())
    assert found and found[0].changes == (("pool_stride", 2, 1), ("up_stride", 2, 1))
    for rep in found:
        for axis in ("in_h", "in_w"):
            old, new = base.valid[axis], rep.report.valid[axis]
            assert all(n in new for n in range(1, 200) if n in old)
            assert any(n in new and n not in old for n in range(1, 200))


@pytest.mark.parametrize("seed", range(8))
def test_random_broken_geometries_repairs_are_valid_and_bounded(seed):
    rng = random.Random(500 + seed)
    while True:
        cfg = Config(**random_geometry(rng))
        if not check(cfg).ok:
            break
    start = time.monotonic()
    found = repairs(cfg)
    assert time.monotonic() - start < BUDGET_S + 1.5  # the budget, plus one exact check in flight
    for rep in found:
        assert_repair_is_valid(cfg, rep)


@pytest.mark.parametrize("seed", range(40))
def test_screen_is_spec_truth(seed):
    """The fast screen agrees with the brute force on sizes 1..150 (so it drops no true repair there)."""
    geo = random_geometry(random.Random(900 + seed))
    got = _screen(geo, np.arange(1, 151, dtype=np.int64))
    assert [bool(v) for v in got] == [all(spec_truth(geo, n).values()) for n in range(1, 151)]


def test_every_repair_is_rechecked_even_when_the_screen_accepts_everything(monkeypatch):
    """With a screen that lets every candidate through, only the exact checker stands between a
    wrong edit and the user: what is shown must still be valid."""
    import unetc.repair as repair

    monkeypatch.setattr(repair, "_screen", lambda g, ns: np.ones(len(ns), dtype=bool))
    for cfg in (Config(head_kernel=3, head_padding=0), Config(conv_stride=2).with_sizes(64, 48)):
        found = repair.repairs(cfg, few=2, budget_s=60)
        assert found
        for rep in found:
            assert_repair_is_valid(cfg, rep)
