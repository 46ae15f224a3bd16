"""Exact eventually-periodic sets of integers >= 1, and their reading as progressions and words.

A set is stored as: the members below ``threshold`` (finite), plus, for n >= threshold,
membership by residue ``n % period``. Every valid-size set unetc computes has this form.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Callable


@dataclass(frozen=True)
class IntSet:
    """An eventually periodic subset of {1, 2, 3, ...}."""

    threshold: int
    period: int
    finite: frozenset[int]
    residues: frozenset[int]

    @staticmethod
    def from_predicate(pred: Callable[[int], bool], threshold: int, period: int) -> "IntSet":
        """Build from a membership test that is exact everywhere and ``period``-periodic from
        ``threshold`` on (the caller guarantees this)."""
        threshold = max(threshold, 1)
        finite = frozenset(n for n in range(1, threshold) if pred(n))
        residues = frozenset(r for r in range(period) if pred(threshold + (r - threshold) % period))
        return IntSet(threshold, period, finite, residues)

    def __contains__(self, n: int) -> bool:
        if n < 1:
            return False
        if n < self.threshold:
            return n in self.finite
        return n % self.period in self.residues

    def __and__(self, other: "IntSet") -> "IntSet":
        period = self.period * other.period // gcd(self.period, other.period)
        return IntSet.from_predicate(lambda n: n in self and n in other,
                                     max(self.threshold, other.threshold), period)

    @property
    def empty(self) -> bool:
        return not self.finite and not self.residues

    @property
    def infinite(self) -> bool:
        return bool(self.residues)

    def min_period(self) -> int:
        """The smallest period of the tail (a divisor of ``period``)."""
        for p in range(1, self.period + 1):
            if self.period % p == 0 and all(
                    ((r + p) % self.period in self.residues) == (r in self.residues)
                    for r in range(self.period)):
                return p
        return self.period  # pragma: no cover

    def progressions(self) -> list[tuple[int, int]]:
        """Canonical list of (start, step) whose union is the set; step 0 = the single value start.
        Each infinite residue class starts as early as the set allows."""
        p = self.min_period()
        out: list[tuple[int, int]] = []
        covered: set[int] = set()
        for c in range(p):
            n = self.threshold + (c - self.threshold) % p
            if n not in self:
                continue
            while n - p >= 1 and (n - p) in self:
                n -= p
            out.append((n, p))
            covered.update(range(n, self.threshold + p, p))
        out += [(m, 0) for m in sorted(self.finite) if m not in covered]
        return sorted(out)

    def nearest(self, n: int) -> tuple[int | None, int | None]:
        """The closest members strictly below and strictly above n (None where there is none)."""
        below = next((m for m in range(n - 1, 0, -1) if m in self), None)
        limit = max(n, self.threshold) + self.period + 1
        above = next((m for m in range(n + 1, limit + 1) if m in self), None)
        return below, above

    def smallest_missing(self) -> int | None:
        """The smallest integer >= 1 not in the set (None if the set is every integer >= 1)."""
        limit = self.threshold + self.period
        return next((n for n in range(1, limit + 1) if n not in self), None)

    def first(self, count: int) -> list[int]:
        """The first ``count`` members (fewer if the set is finite and smaller)."""
        out, n = [], 1
        limit = self.threshold if not self.infinite else None
        while len(out) < count and (limit is None or n < limit):
            if n in self:
                out.append(n)
            n += 1
        return out

    def describe(self) -> str:
        """Plain words, e.g. '{2, 4, 6, …}: even, >= 2' or '{5}: only 5' or 'no size'."""
        if self.empty:
            return "∅: no size"
        shown = self.first(4 if self.infinite else 8)
        listing = "{" + ", ".join(map(str, shown)) + (", …}" if self.infinite or len(shown) == 8 else "}")
        progs = self.progressions()
        words = [_words(s, st) for s, st in progs if st]
        points = [str(s) for s, st in progs if not st]
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
