"""SMT certificates of `unetc check`: z3 confirms them on random geometries, refutes planted wrong
claims, and the certificate's hypotheses agree with the independent integer model (spec_truth)."""
from __future__ import annotations

import os
import random
import re
import stat
import subprocess
import sys
import time

import pytest
import sympy as sp
import z3

from conftest import GEOMETRY_KEYS, ROOT, random_geometry, spec_truth
from unetc import certify
from unetc.checker import check
from unetc.config import Config, validate
from unetc.errors import EmitError
from unetc.intset import IntSet

STRIDES = [k for k in GEOMETRY_KEYS if k.endswith("stride")]


def _geometries(count: int = 40, seed: int = 15) -> list[dict]:
    """conftest's random geometries, with every stride key cycling through 1..7 on odd draws."""
    rng, out = random.Random(seed), []
    for i in range(count):
        g = random_geometry(rng)
        if i % 2:
            for j, key in enumerate(STRIDES):
                g[key] = 1 + (i // 2 + 3 * j) % 7
        out.append(g)
    return out


GEOMS = _geometries()
_DEFAULT = {k: v for k, v in Config().to_dict().items() if k in GEOMETRY_KEYS}
# sets with a non-zero residue, which random draws rarely give: odd >= 3; 5 mod 3; 3 mod 7
FIXED = [{**_DEFAULT, "pool_kernel": 3, "up_kernel": 3},
         {**_DEFAULT, "pool_kernel": 3, "pool_stride": 3, "up_kernel": 7, "up_stride": 3, "up_padding": 1},
         {**_DEFAULT, "pool_kernel": 7, "pool_stride": 7, "up_kernel": 10, "up_stride": 7}]


def _key(hyp: str) -> str:
    """h_convH_down -> conv_down (spec_truth's name for it)."""
    return hyp[2:].replace("H", "").replace("W", "")


def _report(cfg: Config):
    return check(cfg)


def _z3_lines(script: str) -> list[str]:
    ctx = z3.Context()
    return z3.Z3_eval_smtlib2_string(ctx.ref(), script).split()


@pytest.fixture(scope="module")
def certified():
    """(geometry, certificate, z3 result) for every random geometry, built once."""
    return [(g, cert, certify.run_z3(cert)) for g in GEOMS + FIXED
            for cert in [certify.certificate(_report(validate(g)))]]


def test_geometries_cover_every_key():
    for key in GEOMETRY_KEYS:
        assert len({g[key] for g in GEOMS}) >= 3, key
    for key in STRIDES:
        assert {g[key] for g in GEOMS} >= set(range(1, 8)), key


def test_z3_certifies_random_geometries(certified):
    times, residues = [], set()
    for g, cert, result in certified:
        residues |= {(a % b, b) for a, b in _progressions(cert) if b > 1 and a % b}
        assert len(cert.claims) == 10 and all(c.expected == "unsat" for c in cert.claims)
        assert result.ok, (g, result.summary)
        assert result.summary == f"certified by z3 {z3.get_version_string()}: 10/10 claims"
        assert [got for _, _, got in result.results] == ["unsat"] * 10
        times.append(result.seconds)
    assert {(1, 2), (2, 3), (3, 7)} <= residues
    print(f"\n{len(certified)} geometries certified; z3 s/config mean {sum(times) / len(times):.3f} "
          f"max {max(times):.3f}")


def _progressions(cert) -> list[tuple[int, int]]:
    """(start, step) of every '(and (>= n start) (= (mod n step) r))' in the printed sets."""
    return [(int(a), int(b)) for a, b in re.findall(r"\(>= n (\d+)\) \(= \(mod n (\d+)\)", cert.definitions)]


def test_definitions_agree_with_brute_force(certified):
    """Each (define-fun <hyp>) equals spec_truth's set on n = 1..300: z3 finds no n where they differ."""
    for g, cert, _ in certified:
        names = [c.name for c in cert.claims if c.name.startswith("h_")]
        queries = []
        for h in names:
            truth = " ".join(f"(= n {n})" for n in range(1, 301) if spec_truth(g, n)[_key(h)])
            queries.append(f"(push)(assert (and (>= n 1) (<= n 300) (distinct ({h} n) (or false {truth}))))"
                           "(check-sat)(pop)")
        assert _z3_lines(cert.definitions + "\n".join(queries)) == ["unsat"] * len(names), g


@pytest.mark.parametrize("expr, lo", [
    ("floor((x - 7)/3) + 1", -40), ("2*floor(x/2)", -40), ("floor(floor(x/2)/3 + 1/3)", -40),
    ("ceiling(x/4)", -40), ("-floor(x/5) + 3*floor(2*x/7 - 5/2)", -40), ("3*x - 4", -5)])
def test_printer_is_floor_division_for_negative_numerators(expr, lo):
    x = sp.Symbol("x", integer=True)
    e = sp.sympify(expr, locals={"x": x})
    term = certify.SmtPrinter(x).doprint(e)
    assert "x" not in term.replace("mod", "")
    got = _z3_lines("".join(f"(simplify (let ((n {certify.SmtPrinter(x).doprint(sp.Integer(v))})) {term}))"
                            for v in range(lo, 41)))
    want = [certify.SmtPrinter(x).doprint(e.subs(x, v)) for v in range(lo, 41)]
    assert " ".join(got) == " ".join(want)


def test_printer_rejects_what_is_not_floor_linear():
    x, y = sp.Symbol("x", integer=True), sp.Symbol("y", integer=True)
    for bad in (x * x, x / 2, x + y, sp.Max(x, 1)):
        with pytest.raises(ValueError):
            certify.SmtPrinter(x).doprint(bad)


def _planted(report, name: str, pred, threshold: int) -> dict[str, IntSet]:
    s = next((c.valid for c in report.constraints if c.name == name), None) or report.valid[name]
    return {name: IntSet.from_predicate(lambda n: pred(n, n in s), max(threshold, s.threshold), s.period)}


@pytest.mark.parametrize("name, pred, threshold", [
    ("h_upH", lambda n, was: was and n >= 4, 5),          # shifted start: evens from 4
    ("h_convH", lambda n, was: was and n != 1001, 1002),  # a far point missing
    ("in_w", lambda n, was: was and n != 102, 103),
    ("h_upW", lambda n, was: was or n == 1001, 1002),     # an extra point
    ("in_h", lambda n, was: was or n == 7, 8),
])
def test_wrong_claims_are_refuted(name, pred, threshold, tmp_path):
    report = _report(Config())
    cert = certify.certificate(report, claimed=_planted(report, name, pred, threshold))
    result = certify.run_z3(cert)
    assert not result.ok
    assert [(c.name, got) for c, _, got in result.results if got != "unsat"] == [(name, "sat")]
    lines = certify.summary_lines(result, tmp_path / "c.smt2")
    assert f"refutes claim {name} " in lines[1] and "THIS IS A UNETC BUG" in lines[2]


@pytest.mark.parametrize("h, w", [(8, 8), (9, 8), (1, 30), (7, 3)])
def test_concrete_sizes_match_spec_truth(h, w):
    report = _report(Config().with_sizes(h, w))
    cert = certify.certificate(report)
    result = certify.run_z3(cert)
    assert result.ok, result.summary
    geom = Config().to_dict()
    for claim, expected, got in result.results:
        size = h if claim.axis == "in_h" else w
        truth = spec_truth(geom, size)
        holds = all(truth.values()) if claim.name == claim.axis else truth[_key(claim.name)]
        assert expected == got == ("unsat" if holds else "sat"), (claim.text, size)
        assert ("VIOLATED" in claim.text) == (not holds) and re.search(rf"= {size}\b", claim.text)
    assert result.summary.endswith(": 10/10 claims")


def test_concrete_random_geometries_match_spec_truth():
    for g in GEOMS[:8]:
        for size in (1, 16, 37):
            cert = certify.certificate(_report(validate({**g, "in_h": size, "in_w": size + 1})))
            result = certify.run_z3(cert)
            assert result.ok, (g, size, result.summary)
            for claim, expected, _ in result.results:
                truth = spec_truth(g, size if claim.axis == "in_h" else size + 1)
                holds = all(truth.values()) if claim.name == claim.axis else truth[_key(claim.name)]
                assert expected == ("unsat" if holds else "sat")


@pytest.mark.parametrize("h, w", [("S", "S"), ("W", "H"), ("n", 12), (9, "valid_in_h")])
def test_symbol_names_and_mixed_axes(h, w):
    cert = certify.certificate(_report(Config(in_h=h, in_w=w)))
    assert certify.run_z3(cert).ok
    for claim in cert.claims:
        size = {"in_h": h, "in_w": w}[claim.axis]
        assert (claim.expected == "unsat" and "exact" in claim.text) == isinstance(size, str)


def test_user_strings_stay_in_comments():
    """Hostile symbol and file names (past Config's own validation) print nothing live."""
    evil = '"))\n(assert false)\r(echo "x'
    cfg = Config(source="evil" + evil + ".yaml")
    object.__setattr__(cfg, "in_h", "H" + evil)  # Config() itself refuses this name
    cert = certify.certificate(_report(cfg))
    live = [line for line in cert.text.splitlines() if line and not line.startswith(";")]
    assert all(line.startswith(("(set-logic", "(declare-const n", "(define-fun ", "(echo \"",
                                "(push)", "(pop)", "(assert ", "(check-sat)")) for line in live)
    assert "false)" not in "\n".join(live) and "evil" not in "\n".join(live)
    result = certify.run_z3(cert)
    assert result.ok and len(result.results) == 10


def test_write_is_atomic_deterministic_and_respects_umask(tmp_path):
    cert = certify.certificate(_report(Config()))
    path = tmp_path / "cert.smt2"
    old = os.umask(0o027)
    try:
        certify.write(cert, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    first = path.read_bytes()
    certify.write(certify.certificate(_report(Config())), path)
    assert path.read_bytes() == first == cert.text.encode("ascii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.smt2"]
    code = ("import sys; from unetc import certify, checker, config; "
            "sys.stdout.write(certify.certificate(checker.check(config.Config())).text)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True, cwd=ROOT)
    assert other.stdout == first


@pytest.mark.parametrize("where", ["dir", "missing/cert.smt2"])
def test_write_failure_is_one_line(tmp_path, where):
    (tmp_path / "dir").mkdir()
    with pytest.raises(EmitError, match=r"^cannot write certificate .*: [A-Z][a-z ]+$"):
        certify.write(certify.certificate(_report(Config())), tmp_path / where)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"] and not list((tmp_path / "dir").iterdir())


def test_summary_lines(tmp_path):
    path = tmp_path / "c.smt2"
    assert certify.summary_lines(None, path) == [f"wrote {path}; check it with: z3 {path}"]
    assert certify.z3_available() == z3.get_version_string()
    start = time.perf_counter()
    result = certify.run_z3(certify.certificate(_report(Config())))
    assert time.perf_counter() - start < 10
    assert certify.summary_lines(result, path) == [
        f"wrote {path}", f"certified by z3 {z3.get_version_string()}: 10/10 claims"]


def test_without_z3_the_file_is_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "z3", None)  # import z3 now raises ImportError
    assert certify.z3_available() is None
    path = tmp_path / "odd name.smt2"
    certify.write(certify.certificate(_report(Config())), path)
    assert path.read_text().count("(check-sat)") == 10
    assert certify.summary_lines(None, path) == [f"wrote '{path}'; check it with: z3 '{path}'"]
