"""Exact eventually-periodic sets of integers >= 1, and their reading as progressions and words.

A set is stored in its canonical form: a period P (the smallest period of its tail), for each
residue class c mod P the first member ``starts[c]`` of an infinite progression
starts[c], starts[c] + P, ... (0 = none; each starts as early as the set allows), and the
sorted ``finite`` members on no progression. Every valid-size set unetc computes has this form.
Operations use NumPy arrays and arithmetic per progression: none loops in Python over a period
or over the sizes below the threshold, so their cost is bounded by the limits below.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import lcm
from typing import Callable

import numpy as np

from .errors import UsageError

MAX_PERIOD = 2 ** 22  # largest period (lcm of strides) of a set the checker builds
MAX_SPAN = 2 ** 23  # largest range of sizes 1..N examined explicitly before a set turns periodic
_CHUNK = 2 ** 16


def _prime_factors(n: int) -> list[int]:
    out, f = [], 2
    while f * f <= n:
        if n % f == 0:
            out.append(f)
            while n % f == 0:
                n //= f
        f += 1
    return out + ([n] if n > 1 else [])


def _min_period(tail: np.ndarray) -> int:
    """Smallest p dividing len(tail) with tail[i] == tail[(i + p) % len] for all i: one prime
    factor of the length at a time (a divisor t of the length is a period iff the min one divides t)."""
    L = p = len(tail)
    for f in _prime_factors(L):
        while p % f == 0 and np.array_equal(tail[: L - p // f], tail[p // f:]):
            p //= f
    return p


def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.int64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class IntSet:
    """An eventually periodic subset of {1, 2, 3, ...} in canonical form (see the module doc)."""

    period: int
    starts: np.ndarray  # int64, length period; 0 = no progression in that class
    finite: np.ndarray  # sorted int64 members not on a progression

    @staticmethod
    def from_dense(head: np.ndarray, tail: np.ndarray) -> "IntSet":
        """Build from membership ``head[n]`` for 0 <= n < len(head) (n = 0 is ignored) and
        ``tail[n % len(tail)]`` for every n >= len(head) (the caller guarantees both are exact)."""
        head = np.array(head, dtype=bool).reshape(-1)
        if head.size == 0:
            head = np.zeros(1, dtype=bool)
        head[0] = False
        tail = np.asarray(tail, dtype=bool)
        P = _min_period(tail)
        inf = tail[:P]
        if not inf.any():
            return IntSet(1, _frozen([0]), _frozen(np.flatnonzero(head)))
        # a class's progression starts right after its last non-member (there is none past head)
        nonmem = np.flatnonzero(~head)
        cls = nonmem % P
        keep = inf[cls]
        last = np.arange(P, dtype=np.int64) - P
        np.maximum.at(last, cls[keep], nonmem[keep])
        del nonmem, cls, keep
        starts = np.where(inf, last + P, 0)
        mem = np.flatnonzero(head)
        mc = mem % P
        covered = inf[mc] & (mem >= starts[mc])
        return IntSet(P, _frozen(starts), _frozen(mem[~covered]))

    @staticmethod
    def from_predicate(pred: Callable[[int], bool], threshold: int, period: int) -> "IntSet":
        """Build from a membership test that is exact everywhere and ``period``-periodic from
        ``threshold`` on (the caller guarantees this). Calls ``pred`` threshold + period times."""
        threshold = max(threshold, 1)
        head = [n >= 1 and pred(n) for n in range(threshold)]
        tail = [pred(threshold + (r - threshold) % period) for r in range(period)]
        return IntSet.from_dense(np.array(head, dtype=bool), np.array(tail, dtype=bool))

    # ---- membership ----

    def members(self, ns: np.ndarray) -> np.ndarray:
        """Vectorised membership of an int64 array."""
        ns = np.asarray(ns, dtype=np.int64)
        s = self.starts[ns % self.period]
        hit = (s > 0) & (ns >= s)
        if self.finite.size:
            i = np.minimum(np.searchsorted(self.finite, ns), self.finite.size - 1)
            hit |= self.finite[i] == ns
        return hit & (ns >= 1)

    def __contains__(self, n: int) -> bool:
        n = int(n)
        if n < 1:
            return False
        s = int(self.starts[n % self.period])
        if s and n >= s:
            return True
        if not self.finite.size or n > int(self.finite[-1]):
            return False
        return bool(self.finite[np.searchsorted(self.finite, n)] == n)

    def __and__(self, other: "IntSet") -> "IntSet":
        if not self.infinite or not other.infinite:
            small, big = (self, other) if not self.infinite else (other, self)
            return IntSet(1, _frozen([0]), _frozen(small.finite[big.members(small.finite)]))
        period = lcm(self.period, other.period)
        if period > MAX_PERIOD:
            raise UsageError(f"valid sizes repeat with period {period}, above the checker's limit "
                             f"{MAX_PERIOD} (2^22); use smaller strides")
        ns = np.arange(max(self.threshold, other.threshold), dtype=np.int64)
        r = np.arange(period, dtype=np.int64)
        tail = (self.starts[r % self.period] > 0) & (other.starts[r % other.period] > 0)
        return IntSet.from_dense(self.members(ns) & other.members(ns), tail)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, IntSet) and self.period == other.period
                and np.array_equal(self.starts, other.starts) and np.array_equal(self.finite, other.finite))

    def __hash__(self) -> int:
        return hash((self.period, self.starts.tobytes(), self.finite.tobytes()))

    def __repr__(self) -> str:
        return f"IntSet({self.progressions()[:8]}{' …' if len(self.progressions()) > 8 else ''})"

    # ---- readings ----

    @property
    def empty(self) -> bool:
        return not self.finite.size and not self.infinite

    @property
    def infinite(self) -> bool:
        return bool(self.starts.any())

    @property
    def threshold(self) -> int:
        """From here on membership depends on n % period only."""
        return max(int(self.starts.max()), int(self.finite[-1]) + 1 if self.finite.size else 1, 1)

    def min_period(self) -> int:
        """The smallest period of the tail (the canonical form keeps it)."""
        return self.period

    def progressions(self) -> list[tuple[int, int]]:
        """Canonical list of (start, step) whose union is the set; step 0 = the single value start.
        Each infinite residue class starts as early as the set allows."""
        out = [(int(s), self.period) for s in self.starts[self.starts > 0]]
        return sorted(out + [(int(m), 0) for m in self.finite])

    def nearest(self, n: int) -> tuple[int | None, int | None]:
        """The closest members strictly below and strictly above n (None where there is none);
        exact for any integer n, in time independent of n."""
        n, P, T = int(n), self.period, self.threshold
        if self.infinite and n >= T + P:  # periodic region: shift n down by whole periods
            shift = (n - T - P) // P * P
            below, above = self._nearest_small(n - shift)
            return below + shift, above + shift  # type: ignore[operator]
        if n > T + P:  # finite set, n above all of it
            return (int(self.finite[-1]) if self.finite.size else None), None
        return self._nearest_small(n)

    def _nearest_small(self, n: int) -> tuple[int | None, int | None]:
        P, S, fin = self.period, self.starts[self.starts > 0], self.finite
        below = [int(((n - 1) - (n - 1 - S[S <= n - 1]) % P).max())] if (S <= n - 1).any() else []
        above = [int(np.where(S > n, S, n + 1 + (S - n - 1) % P).min())] if S.size else []
        i = int(np.searchsorted(fin, n))  # fin[:i] < n <= fin[i:]
        below += [int(fin[i - 1])] if i > 0 else []
        j = int(np.searchsorted(fin, n, side="right"))
        above += [int(fin[j])] if j < fin.size else []
        return (max(below) if below else None), (min(above) if above else None)

    def smallest_missing(self) -> int | None:
        """The smallest integer >= 1 not in the set (None if the set is every integer >= 1)."""
        if self.period == 1 and int(self.starts[0]) == 1:
            return None
        for lo in range(1, self.threshold + self.period + 1, _CHUNK):
            miss = np.flatnonzero(~self.members(np.arange(lo, lo + _CHUNK, dtype=np.int64)))
            if miss.size:
                return lo + int(miss[0])
        return None  # pragma: no cover - a set that is not everything misses below T + P

    def first(self, count: int) -> list[int]:
        """The first ``count`` members (fewer if the set is finite and smaller)."""
        S = np.sort(self.starts[self.starts > 0])[:count]
        cand = np.concatenate([(S[:, None] + self.period * np.arange(count)).ravel(), self.finite[:count]])
        return [int(m) for m in np.sort(cand)[:count]]

    def describe(self) -> str:
        """Plain words, e.g. '{2, 4, 6, …}: even, >= 2' or '{5}: only 5' or 'no size'."""
        if self.empty:
            return "∅: no size"
        shown = self.first(4 if self.infinite else 8)
        listing = "{" + ", ".join(map(str, shown)) + (", …}" if self.infinite or len(shown) == 8 else "}")
        progs = self.progressions()
        words = [_words(s, st) for s, st in progs if st]
        points = [str(s) for s, st in progs if not st]
        if len(words) > 12:
            words = words[:10] + [f"{len(words) - 10} more classes mod {self.period}"]
        if len(points) > 12:
            points = points[:10] + [f"… ({len(points) - 10} more single sizes, up to {points[-1]})"]
        if points:
            words.append(f"{'only ' if not words else ''}{', '.join(points)}")
        return f"{listing}: {'; or '.join(words)}"


def _words(start: int, step: int) -> str:
    if step == 1:
        return "every size" if start == 1 else f"every size ≥ {start}"
    if step == 2:
        return f"{'even' if start % 2 == 0 else 'odd'}, ≥ {start}"
    if start % step == 0:
        return f"multiple of {step}, ≥ {start}"
    return f"≡ {start % step} (mod {step}), ≥ {start}"
