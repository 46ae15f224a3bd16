"""Stage 3b: :class:`Report` -> an SMT-LIB 2 certificate that an SMT solver (z3) re-checks.

The certificate restates, per axis, each shape hypothesis as ``(define-fun <hyp> ((n Int)) Bool
...)`` -- the hypothesis on an axis of size n and the definedness of every layer on its way,
printed by :class:`SmtPrinter` from the graph's SymPy size expressions -- and the set unetc
reports for it as ``valid_<hyp>`` (from its progressions). Each claim is one ``(check-sat)``:
for a symbolic axis "the hypothesis and the reported set differ for some n >= 1" (expected
``unsat``); at a concrete size N, "the hypothesis fails at N" (``unsat`` where unetc says it
holds, a ``sat`` witness where unetc says it is violated). Integer arithmetic with ``div``/``mod``
by constants only. User strings reach the file only through :func:`render.safe_comment_text`.
"""
from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass
from math import lcm
from pathlib import Path

import sympy as sp
from sympy.printing.printer import Printer

from .checker import Report
from .errors import EmitError
from .graph import Equation, build, hypotheses
from .intset import IntSet
from .render import banner

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SmtPrinter(Printer):
    """Floor-linear SymPy integer expressions in one symbol -> SMT-LIB Int terms in ``n``.

    ``floor(sum c_i t_i)`` with rational c_i prints as ``(div (+ ... (* D c_i) t_i ...) D)``, D the
    common denominator: SMT-LIB ``div`` is floor division for a positive divisor."""

    def __init__(self, symbol: sp.Symbol):
        super().__init__()
        self._symbol = symbol

    def emptyPrinter(self, expr):
        raise ValueError(f"not a floor-linear size expression: {expr}")

    def _print_Symbol(self, expr):
        """The axis symbol is ``n``; any other symbol is an error (never printed)."""
        if expr != self._symbol:
            raise ValueError("a size expression mentions a second axis symbol")
        return "n"

    def _print_Integer(self, expr):
        """SMT-LIB numerals are non-negative: -k prints as (- k)."""
        return str(expr) if expr >= 0 else f"(- {-expr})"

    def _print_Rational(self, expr):
        """A fraction outside floor has no Int reading."""
        raise ValueError(f"non-integer coefficient {expr} outside floor")

    def _term(self, coeff, rest) -> str:
        if rest == 1:
            return self._print(sp.Integer(coeff))
        return self._print(rest) if coeff == 1 else f"(* {self._print(sp.Integer(coeff))} {self._print(rest)})"

    def _print_Add(self, expr):
        """(+ t1 t2 ...) in SymPy's printing order."""
        return "(+ " + " ".join(self._print(t) for t in expr.as_ordered_terms()) + ")"

    def _print_Mul(self, expr):
        """Integer constant times one non-constant factor (linear only)."""
        coeff, rest = expr.as_coeff_Mul()
        if not coeff.is_Integer or rest.is_Mul or rest.is_Number:
            raise ValueError(f"not a linear integer term: {expr}")
        return self._term(coeff, rest)

    def _print_floor(self, expr):
        """floor(sum c_i t_i) -> (div (+ ... D*c_i*t_i ...) D), D the lcm of the denominators."""
        terms = [t.as_coeff_Mul() for t in expr.args[0].as_ordered_terms()]
        d = lcm(*(int(c.q) for c, _ in terms))
        parts = [self._term(c * d, rest) for c, rest in terms]
        body = parts[0] if len(parts) == 1 else "(+ " + " ".join(parts) + ")"
        return body if d == 1 else f"(div {body} {d})"

    def _print_ceiling(self, expr):
        """ceiling(x) = -floor(-x)."""
        return f"(- {self._print_floor(sp.floor(-expr.args[0], evaluate=False))})"

    def _print_Equality(self, expr):
        return f"(= {self._print(expr.lhs)} {self._print(expr.rhs)})"

    def _print_GreaterThan(self, expr):
        return f"(>= {self._print(expr.lhs)} {self._print(expr.rhs)})"


@dataclass
class Claim:
    """One (check-sat) of the certificate: ``expected`` is "unsat" or "sat" (a witness query)."""

    name: str  # hypothesis name or axis, e.g. "h_upH", "in_h"
    expected: str
    axis: str
    text: str  # the (echo ...) line z3 prints before the answer


@dataclass
class Certificate:
    """The SMT-LIB 2 text, its definitions part (a prefix of ``text``) and its claims in order."""

    text: str
    claims: list[Claim]
    definitions: str


@dataclass
class CheckResult:
    """What z3 said: ``results`` lists (claim, expected, got) in file order."""

    ok: bool
    version: str
    results: list[tuple[Claim, str, str]]
    summary: str
    seconds: float = 0.0


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "(and " + " ".join(parts) + ")"


def _or(parts: list[str]) -> str:
    return "false" if not parts else parts[0] if len(parts) == 1 else "(or " + " ".join(parts) + ")"


def _ident(name: str) -> str:
    if not _NAME.match(name):  # names come from graph.HYPOTHESES; never print anything else
        raise ValueError(f"not an SMT-LIB symbol: {name!r}")
    return name


def hypothesis_body(eq: Equation, symbol: sp.Symbol) -> str:
    """The hypothesis ``eq`` on an axis of size n: every requirement on this axis, then lhs = rhs."""
    p = SmtPrinter(symbol)
    reqs = [r for r in eq.requires if sp.sympify(r.expr).free_symbols <= {symbol}]
    facts = [p.doprint(sp.Ge(sp.sympify(r.expr), sp.Integer(r.bound), evaluate=False)) for r in reqs]
    facts.append(p.doprint(sp.Eq(sp.sympify(eq.lhs), sp.sympify(eq.rhs), evaluate=False)))
    return _and(facts)


def set_body(s: IntSet) -> str:
    """Membership of n in s, from its progressions: n = a, or n >= a and n = a (mod step)."""
    parts = []
    for start, step in s.progressions():
        if step == 0:
            parts.append(f"(= n {start})")
        elif step == 1:
            parts.append(f"(>= n {start})")
        else:
            parts.append(f"(and (>= n {start}) (= (mod n {step}) {start % step}))")
    return _or(parts)


def _symbolic_claims(axis: str, names: list[str]) -> list[tuple[Claim, str]]:
    out = []
    for name in names + [axis]:
        lhs = f"(valid_{name} n)"
        rhs = _and([f"({h} n)" for h in names]) if name == axis else f"({name} n)"
        what = "valid set" if name == axis else "set where it holds"
        claim = Claim(name, "unsat", axis, f"{name}: the {what} unetc reports is exact (expect unsat)")
        out.append((claim, f"(assert (and (>= n 1) (distinct {rhs} {lhs})))"))
    return out


def _concrete_claims(report: Report, axis: str, names: list[str], size: int) -> list[tuple[Claim, str]]:
    status = {c.name: c.status for c in report.constraints if c.axis == axis}
    out = []
    for name in names + [axis]:
        holds = size in report.valid[axis] if name == axis else status[name] == "holds"
        fact = _and([f"({h} {size})" for h in names]) if name == axis else f"({name} {size})"
        what = "valid" if name == axis else "holds"
        text = (f"{name}: {what} at {axis} = {size} (expect unsat)" if holds else
                f"{name}: VIOLATED at {axis} = {size}, witness query (expect sat)")
        out.append((Claim(name, "unsat" if holds else "sat", axis, text), f"(assert (not {fact}))"))
    return out


def certificate(report: Report, claimed: dict[str, IntSet] | None = None) -> Certificate:
    """Build the certificate of ``report`` (its config gives the graph). ``claimed`` overrides
    the printed set of a hypothesis or axis by name (tests use it to plant wrong claims)."""
    cfg = report.config
    g = build(cfg, symbolic=True)
    sets = {c.name: c.valid for c in report.constraints} | dict(report.valid) | (claimed or {})
    lines = [banner(cfg, ";"), "; check with: z3 FILE -- each answer follows its claim's echo line",
             "(set-logic ALL)", "(declare-const n Int)"]
    claims: list[tuple[Claim, str]] = []
    for axis, symbol in (("in_h", g.h), ("in_w", g.w)):
        eqs = [eq for eq in hypotheses(g) if eq.axis == axis]
        names = [_ident(eq.name) for eq in eqs]
        size = report.concrete.get(axis)
        lines.append(f"\n; {axis}: each hypothesis on an axis of size n, every layer on its way defined")
        lines += [f"(define-fun {name} ((n Int)) Bool {hypothesis_body(eq, symbol)})" for name, eq in zip(names, eqs)]
        lines.append(f"; {axis}: the sets unetc reports")
        lines += [f"(define-fun valid_{name} ((n Int)) Bool {set_body(sets[name])})" for name in names + [axis]]
        claims += (_symbolic_claims(axis, names) if size is None
                   else _concrete_claims(report, axis, names, size))
    definitions = "\n".join(lines) + "\n"
    body = ["\n; claims: z3 prints each claim, then its answer"]
    for claim, assertion in claims:
        body += [f'(echo "{claim.text}")', "(push)", assertion, "(check-sat)", "(pop)"]
    return Certificate(definitions + "\n".join(body) + "\n", [c for c, _ in claims], definitions)


def write(cert: Certificate, path: str | os.PathLike) -> None:
    """Write the certificate atomically (temp file in the same directory, then rename); the file
    mode is 0666 minus the umask. Raises EmitError with one line on any I/O failure."""
    from .emitter import write_atomic

    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        write_atomic(path, cert.text)
    except OSError as err:
        raise EmitError(f"cannot write certificate {_shown(path)}: {err.strerror}") from None


def z3_available() -> str | None:
    """The installed z3 Python package's version, or None."""
    try:
        import z3
    except ImportError:
        return None
    return z3.get_version_string()


def run_z3(cert: Certificate, timeout_s: float = 20) -> CheckResult:
    """Run the certificate's text through z3 (as ``z3 FILE`` would; ``timeout_s`` per query)."""
    import z3

    version = z3.get_version_string()
    start = time.perf_counter()
    try:
        script = f"(set-option :timeout {max(1, int(timeout_s * 1000))})\n" + cert.text
        ctx = z3.Context()  # kept alive: the call below uses its raw pointer
        out = z3.Z3_eval_smtlib2_string(ctx.ref(), script)
    except z3.Z3Exception as err:
        return CheckResult(False, version, [], f"z3 {version} rejected the certificate: {err}")
    seconds = time.perf_counter() - start
    lines = [line.strip() for line in out.splitlines()]
    answers = [line for line in lines if line in ("sat", "unsat", "unknown")]
    errors = [line for line in lines if line.startswith("(error")]
    if errors or len(answers) != len(cert.claims):
        why = errors[0] if errors else f"{len(answers)} answers for {len(cert.claims)} claims"
        return CheckResult(False, version, [], f"z3 {version} could not read the certificate: {why}", seconds)
    results = [(c, c.expected, got) for c, got in zip(cert.claims, answers)]
    bad = [(c, got) for c, _, got in results if got != c.expected]
    if not bad:
        summary = f"certified by z3 {version}: {len(results)}/{len(results)} claims"
    elif bad[0][1] == "unknown":
        summary = f"z3 {version} could not decide claim {bad[0][0].name} ({bad[0][0].axis}) within {timeout_s:g} s"
    else:
        c, got = bad[0]
        summary = (f"z3 {version} refutes claim {c.name} ({c.axis}): expected {c.expected}, got {got} "
                   f"({len(results) - len(bad)}/{len(results)} claims confirmed)")
    return CheckResult(not bad, version, results, summary, seconds)


def _shown(path) -> str:
    text = str(path)
    return shlex.quote(text) if text.isprintable() else repr(text)


def summary_lines(result: CheckResult | None, path) -> list[str]:
    """What the CLI prints after writing the certificate to ``path``: how to check it (no z3),
    the certification line, or the failure and a loud unetc-bug line (exit 1 when not ok)."""
    shown = _shown(path)
    if result is None:
        return [f"wrote {shown}; check it with: z3 {shown}"]
    if result.ok:
        return [f"wrote {shown}", result.summary]
    lines = [f"wrote {shown}", result.summary]
    if any(got in ("sat", "unsat") and got != exp for _, exp, got in result.results):
        lines.append(f"THIS IS A UNETC BUG: its checker and its certificate disagree; please report it "
                     f"with the config and {shown}")
    else:
        lines.append(f"the certificate is not confirmed; check it with: z3 {shown}")
    return lines
