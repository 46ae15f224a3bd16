"""Config -> the smallest edits of its geometry keys that make it valid (issue 13 item 3).

Candidates change one key (by up to 4), then two keys (by up to 2 each); they are ranked by
the number of keys changed, then the total change, then how many sizes they make valid. A fast
integer model of the spec's size rules (NumPy, sizes 1..:data:`SCAN`) screens the candidates;
every repair shown is the exact checker's verdict on the edited config (:func:`unetc.checker.check`).
The search stops at :data:`BUDGET_S` seconds (what it found by then is exact, just fewer).
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass

import numpy as np

from .checker import AXES, GEOMETRY_KEYS, Report, check
from .config import Config
from .errors import UnetcError

SCAN = 512  # sizes screened for a symbolic axis
BUDGET_S = 2.0  # wall-clock budget of one search
MAX_VALUE = 64  # candidates keep every geometry key <= this


@dataclass(frozen=True)
class Repair:
    """An edit of the config and the exact check of the edited config (``report.ok`` is True)."""

    changes: tuple[tuple[str, int, int], ...]  # (key, old value, new value)
    report: Report

    def text(self) -> str:
        """'set head_padding: 0 → 1'."""
        return "set " + ", ".join(f"{k}: {old} → {new}" for k, old, new in self.changes)


def _out(n: np.ndarray, k: int, s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, defined) of a conv/pool along one axis for an array of input sizes."""
    ok = n + 2 * p >= k
    return np.where(ok, (n + 2 * p - k) // s + 1, 0), ok


def _screen(g: dict[str, int], ns: np.ndarray) -> np.ndarray:
    """The spec's four hypotheses at once, with every layer on the way defined, for sizes ns."""
    conv = (g["conv_kernel"], g["conv_stride"], g["conv_padding"])
    full, ok1 = _out(ns, *conv)
    d, ok2 = _out(ns, g["pool_kernel"], g["pool_stride"], 0)
    low, ok3 = _out(d, *conv)
    up = (d - 1) * g["up_stride"] + g["up_kernel"] - 2 * g["up_padding"]
    head, ok4 = _out(ns, g["head_kernel"], g["head_stride"], g["head_padding"])
    return ok1 & ok2 & ok3 & ok4 & (full == ns) & (low == d) & (up == ns) & (up >= 1) & (head == ns)


def _targets(cfg: Config) -> list[np.ndarray]:
    """Per axis, the sizes of which one must be valid: the bound size, or any of 1..SCAN."""
    scan = np.arange(1, SCAN + 1, dtype=np.int64)
    return [np.array([v], dtype=np.int64) if isinstance(v, int) else scan for v in (cfg.in_h, cfg.in_w)]


def _candidates(cfg: Config, keys: int) -> list[tuple[tuple[str, int, int], ...]]:
    """Edits of ``keys`` geometry keys, smallest total change first."""
    span = 4 if keys == 1 else 2
    steps = {}
    for key in GEOMETRY_KEYS:
        v, least = getattr(cfg, key), 0 if key.endswith("padding") else 1
        steps[key] = [(key, v, v + d) for d in range(-span, span + 1) if d and least <= v + d <= MAX_VALUE]
    out = [c for ks in itertools.combinations(GEOMETRY_KEYS, keys) for c in itertools.product(*(steps[k] for k in ks))]
    return sorted(out, key=lambda c: sum(abs(new - old) for _, old, new in c))


def _screened(cfg: Config, keys: int, deadline: float, better: int) -> list[tuple[tuple, int]]:
    """(edit, sizes it makes valid among the screened) for each edit passing the screen: some
    size valid on each axis (the bound size where bound), and more than ``better`` of 1..SCAN."""
    base, targets, out = dataclasses.asdict(cfg), _targets(cfg), []
    scan = np.arange(1, SCAN + 1, dtype=np.int64)
    for edit in _candidates(cfg, keys):
        if time.monotonic() > deadline:
            break
        g = {**base, **{k: new for k, _, new in edit}}
        hits = [int(_screen(g, t).sum()) for t in targets]
        count = int(_screen(g, scan).sum()) if better else min(hits)
        if all(hits) and count > better:
            out.append((edit, count))
    return out


def _improves(r: Report, base: Report | None) -> bool:
    """The edited config passes; when the original passed too, its valid sets grow strictly."""
    if not r.ok or any(r.valid[a].empty for a in AXES):
        return False
    if base is None:
        return True
    grows = [(r.valid[a] & base.valid[a]) == base.valid[a] for a in AXES]
    return all(grows) and any(r.valid[a] != base.valid[a] for a in AXES)


def repairs(cfg: Config, few: int = 3, budget_s: float = BUDGET_S, base: Report | None = None) -> list[Repair]:
    """At most ``few`` edits of one (else two) geometry keys after which ``check`` passes (every
    hypothesis can hold; at bound sizes, holds there) or, for a config that passes already, its
    valid sets grow strictly; smallest change first, each re-checked by the exact checker.
    [] when none is found within the budget. ``base``: check(cfg) when the caller has it."""
    deadline = time.monotonic() + budget_s
    base = base or check(cfg)
    base = base if base.ok else None
    better = int(_screen(dataclasses.asdict(cfg), np.arange(1, SCAN + 1, dtype=np.int64)).sum()) if base else 0
    found: list[Repair] = []
    for keys in (1, 2):
        ranked = sorted(_screened(cfg, keys, deadline, better),
                        key=lambda e: (sum(abs(n - o) for _, o, n in e[0]), -e[1]))
        for edit, _ in ranked:
            if len(found) >= few or time.monotonic() > deadline:
                break
            try:
                r = check(dataclasses.replace(cfg, **{k: new for k, _, new in edit}))
            except UnetcError:
                continue
            if _improves(r, base):
                found.append(Repair(edit, r))
        if found:
            break
    return found
