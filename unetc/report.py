"""Report (+ :class:`Details`) -> text for people (fits 100 columns) or a JSON-ready dict for tools.

Sizes are printed simplified for reading (:func:`simplified`); the JSON keeps SymPy's own form.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import sympy as sp

from .checker import Report, conflicts
from .config import show
from .intset import IntSet

if TYPE_CHECKING:  # pragma: no cover
    from .cost import Cost
    from .repair import Repair
    from .runs import AxisRuns, LayerView

SCHEMA = 1
WIDTH = 100  # the text report fits this many columns (unless wide)
LEGEND = ["status: proved = holds for every size; conditional = holds for the sizes shown;",
          "        holds / violated = at the bound size; impossible = holds for no size"]


@dataclass
class Details:
    """What ``unetc check`` adds to the checker's Report; None = not computed."""

    runs: dict[str, "AxisRuns"] | None = None
    layers: list["LayerView"] | None = None
    cost: "Cost | None" = None
    cost_error: str | None = None
    repairs: list["Repair"] | None = None  # None: not searched
    workspace_note: str | None = None
    runs_error: str | None = None  # why ``runs`` is None (e.g. a period above the checker's limit)


def details(r: Report, suggest: bool = False) -> Details:
    """Runs, layer views, cost and (when no size is valid, or ``suggest``) repairs of a report."""
    from .cost import cost
    from .errors import ShapeError, UsageError
    from .repair import repairs
    from .runs import layer_views, runs

    d = Details()
    try:
        d.runs = runs(r)
    except UsageError as err:
        d.runs_error = str(err)
    d.layers = layer_views(r, d.runs)
    never = next((a for a in (d.runs or {}).values() if a.runs.empty), None)
    if never is not None:
        d.cost_error = f"PyTorch runs at no {never.axis} (it fails at {never.breaks[0]})"
    elif d.runs is None:
        d.cost_error = "not computed: where PyTorch runs is beyond the checker's limits"
    else:
        try:
            d.cost = cost(r.config)
        except ShapeError as err:
            d.cost_error = str(err)
    if suggest or not r.ok:
        d.repairs = repairs(r.config, base=r)
    return d


# ---------------------------------------------------------------- sizes for reading

def _floor_form(e) -> tuple[Any, int, int] | None:
    """floor(u/q + n/q), u a symbol or itself such a form -> (X, m, D) with e = floor((X + m)/D)."""
    const, rest = e.args[0].as_coeff_Add()
    coeff, u = rest.as_coeff_Mul()
    if not (coeff.is_Rational and coeff.p == 1 and const.is_Rational and (const * coeff.q).is_Integer):
        return None
    n = int(const * coeff.q)
    if u.is_Symbol:
        return u, n, coeff.q
    inner = _form(u)
    if inner is None:
        return None
    X, m, D, c = inner  # floor((floor((X + m)/D) + c + n)/q) = floor((X + m + (c + n)*D)/(D*q))
    return X, m + (c + n) * D, D * coeff.q


def _form(e) -> tuple[Any, int, int, int] | None:
    """e = floor((X + m)/D) + c -> (X, m, D, c), or None."""
    c, rest = e.as_coeff_Add()
    if not c.is_Integer or not isinstance(rest, sp.floor):
        return None
    f = _floor_form(rest)
    return None if f is None else (*f, int(c))


@lru_cache(maxsize=4096)
def simplified(e):
    """An expression equal to ``e`` at every integer size, for reading: nested floors of one size
    merged and floor(x/D + k/D) + c shown as ceiling(x/D) or floor((x + m)/D):
    floor(H/2 - 1/2) + 1 -> ceiling(H/2); floor(floor(H/2 - 1/2)/2) + 1 -> ceiling(H/4)."""
    e = sp.sympify(e)
    if e.is_Atom:
        return e
    f = _form(e)
    if f is None:
        return e.func(*[simplified(a) for a in e.args]) if isinstance(e, (sp.Add, sp.Mul)) else e
    X, m, D, c = f
    j, m0 = divmod(m, D)
    over = lambda t: sp.Mul(sp.Rational(1, D), t, evaluate=False)  # noqa: E731 - prints as t/D
    core = (sp.floor(over(X), evaluate=False) if m0 == 0 else sp.ceiling(over(X), evaluate=False)
            if m0 == D - 1 else sp.floor(over(sp.Add(X, m0, evaluate=False)), evaluate=False))
    return core + (c + j)


def readable(e) -> str:
    """SymPy's text of :func:`simplified`."""
    return sp.sstr(simplified(e))


def _item(n) -> int | str:
    n = sp.sympify(n)
    return int(n) if n.is_Integer else sp.sstr(n)


def shape_list(shape) -> list[int | str] | None:
    """A shape for JSON: ints for concrete sizes, SymPy strings for formulas."""
    return None if shape is None else [_item(n) for n in shape]


def _shape_text(shape) -> str:
    return "(" + ", ".join(readable(n) for n in shape) + ")"


# ---------------------------------------------------------------- JSON

def _progs(s: IntSet) -> list[dict[str, int]]:
    return [{"start": a, "step": b} for a, b in s.progressions()]


def _nearest(r: Report, c) -> list[int] | None:
    value = r.concrete.get(c.axis)
    if c.status != "violated" or value is None:
        return None
    return [n for n in r.valid[c.axis].nearest(value) if n is not None]


def _conflicts_json(r: Report) -> list[dict[str, Any]]:
    return [{"axis": a, "hypotheses": [x.name, y.name], "valid": [_progs(x.valid), _progs(y.valid)],
             "valid_text": [x.valid.describe(), y.valid.describe()]}
            for a, s in r.valid.items() if s.empty for x, y in conflicts(r, a)]


def _layers_json(r: Report, d: Details) -> list[dict[str, Any]]:
    if d.layers is None:
        return [{"name": l.name, "op": l.op, "params": l.params} for l in r.layers]
    macs = {l.name: l.macs for l in d.cost.layers} if d.cost else {}
    return [{"name": v.op.name, "op": v.op.describe(), "inputs": [shape_list(s) for s in v.inputs],
             "output": shape_list(v.raw), "spec": shape_list(v.spec), "pytorch": shape_list(v.torch),
             "pytorch_fails": v.breaks, "params": sum(int(sp.prod(s)) for s in v.op.params().values()),
             "macs": _item(d.cost.value(macs[v.op.name])) if v.op.name in macs else None}
            for v in d.layers]


def _runs_json(d: Details) -> dict[str, Any] | None:
    if d.runs is None:
        return None
    return {a.axis: {"pytorch": _progs(a.runs), "pytorch_text": a.runs.describe(), "spec": _progs(a.spec),
                     "spec_text": a.spec.describe(), "output": sp.sstr(a.output), "output_values": a.output_values(),
                     "pytorch_fails": ({"layer": a.breaks[0], "reason": a.breaks[1]} if a.breaks else None)}
            for a in d.runs.values()}


def _repairs_json(d: Details) -> list[dict[str, Any]] | None:
    if d.repairs is None:
        return None
    return [{"set": {k: new for k, _, new in x.changes}, "from": {k: old for k, old, _ in x.changes},
             "text": x.text(), "valid": {a: _progs(s) for a, s in x.report.valid.items()},
             "valid_text": {a: s.describe() for a, s in x.report.valid.items()}} for x in d.repairs]


def to_json(r: Report, d: Details | None = None) -> dict[str, Any]:
    """The ``--json`` object (schema 1; see README): ok, config, constraints, valid, layers, runs,
    repairs, cost, limits, warnings, workspace_bytes."""
    d = d or Details()
    return {
        "schema": SCHEMA,
        "ok": r.ok,
        "config": r.config.to_dict(),
        "sizes": dict(r.concrete),
        "constraints": [{"name": c.name, "layer": c.layer, "axis": c.axis, "status": c.status,
                         "lhs": c.lhs, "rhs": c.rhs, "valid": _progs(c.valid), "valid_text": c.valid.describe(),
                         "nearest": _nearest(r, c), "message": c.message or None} for c in r.constraints],
        "valid": {axis: _progs(s) for axis, s in r.valid.items()},
        "valid_text": {axis: s.describe() for axis, s in r.valid.items()},
        "smallest_failing": {axis: s.smallest_missing() for axis, s in r.valid.items()},
        "conflicts": _conflicts_json(r),
        "layers": _layers_json(r, d),
        "runs": _runs_json(d),
        "runs_error": d.runs_error,
        "repairs": _repairs_json(d),
        "cost": d.cost.to_json() if d.cost else ({"error": d.cost_error} if d.cost_error else None),
        "limits": dict(r.limits),
        "warnings": list(r.warnings),
        "workspace_bytes": r.workspace_bytes,
        "workspace_note": d.workspace_note,
    }


# ---------------------------------------------------------------- text

class _Names:
    """Prints sizes with every outermost floor/ceiling named (H_1, W_1, ...), and lists the names:
    how a table too wide for :data:`WIDTH` columns abbreviates its formulas (--wide: never)."""

    def __init__(self, taken: set[str], longer: int = 0):
        self.names: dict[Any, sp.Symbol] = {}
        self.taken, self.longer = set(taken), longer

    def _outer(self, e) -> list:
        if isinstance(e, (sp.floor, sp.ceiling)):
            return [e]
        return [f for a in e.args for f in self._outer(a)]

    def __call__(self, e) -> str:
        s = simplified(e)
        for f in self._outer(s):
            if f not in self.names and len(sp.sstr(f)) > self.longer:
                base = "_".join(sorted(str(x) for x in f.free_symbols)) or "N"
                k = 1
                while f"{base}_{k}" in self.taken:
                    k += 1
                self.taken.add(f"{base}_{k}")
                self.names[f] = sp.Symbol(f"{base}_{k}")
        return sp.sstr(s.xreplace(self.names))

    def where(self, indent: str) -> list[str]:
        """'where H_1 = ..., W_1 = ...' on as few lines as fit, never breaking a definition."""
        lines: list[str] = []
        for i, (f, n) in enumerate(self.names.items()):
            item = f"{n} = {sp.sstr(f)}" + ("," if i + 1 < len(self.names) else "")
            if lines and len(lines[-1]) + 1 + len(item) <= WIDTH:
                lines[-1] += " " + item
            else:
                lines.append((indent + "where " if not lines else indent + "      ") + item)
        return lines


def _width(rows: list[list[str]]) -> int:
    return sum(max(len(row[i]) for row in rows) for i in range(len(rows[0]))) + 2 * (len(rows[0]) - 1)


def _fit(rows: list[list[str]], shrink: tuple[int, ...], wide: bool, right: tuple[int, ...] = (),
         indent: str = "") -> list[str]:
    """Aligned columns (``right`` ones right-aligned); unless ``wide``, cells of the ``shrink``
    columns are cut (ending in '…') until the table fits :data:`WIDTH` columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    while not wide and sum(widths) + 2 * (len(widths) - 1) + len(indent) > WIDTH:
        i = max(shrink, key=lambda j: widths[j])
        if widths[i] <= 12:
            break
        widths[i] -= 1
    cut = lambda s, w: s if len(s) <= w else s[:w - 1] + "…"  # noqa: E731
    return [indent + "  ".join(cut(cell, w).rjust(w) if i in right else cut(cell, w).ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _named_table(r: Report, make_rows, shrink: tuple[int, ...], wide: bool, right: tuple[int, ...] = (),
                 indent: str = "") -> list[str]:
    """``make_rows(fmt)`` with fmt = :func:`readable`; when that is too wide (and not ``wide``),
    again with the floors named (:class:`_Names`) and their definitions below."""
    rows = make_rows(readable)
    if wide or _width(rows) + len(indent) <= WIDTH:
        return _fit(rows, shrink, wide, right, indent)
    for longer in (len("ceiling(H/2)"), 0):  # name the long floors; if still too wide, all of them
        names = _Names({str(v) for v in (r.config.in_h, r.config.in_w)}, longer)
        rows = make_rows(names)
        if _width(rows) + len(indent) <= WIDTH:
            break
    return _fit(rows, shrink, wide, right, indent) + names.where(indent)


def _wrap(text: str, indent: str = "  ", wide: bool = False, hang: str = "  ") -> list[str]:
    """text on lines of at most WIDTH columns (one line if ``wide``), continuations indented."""
    import textwrap

    if wide:
        return [indent + text]
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + hang,
                         break_on_hyphens=False) or [indent]


def _op_text(op, wide: bool) -> str:
    return op.describe() if wide else op.describe().replace("conv_transpose2d", "convT2d")


def _params(d: Details) -> int:
    return sum(int(sp.prod(s)) for v in d.layers for s in v.op.params().values())


def _layer_table(r: Report, d: Details, wide: bool) -> list[str]:
    concrete = d.cost is not None and d.cost.concrete
    macs = {l.name: l.macs for l in d.cost.layers} if concrete else {}

    def rows(fmt) -> list[list[str]]:
        out = [["layer", "op", "output (PyTorch)", "params"] + (["MACs fwd"] if concrete else []) + [""]]
        for v in d.layers:
            params = sum(int(sp.prod(s)) for s in v.op.params().values())
            if v.torch is None:
                shape, note = "—", "✗ PyTorch fails here" if v.breaks else "not computed"
            else:
                shape, note = "(" + ", ".join(fmt(n) for n in v.torch) + ")", ""
                if any(sp.expand(a - b) != 0 for a, b in zip(v.torch[1:], v.spec[1:])):
                    note = "→ spec assumes " + ", ".join(fmt(n) for n in v.spec[1:])
            mac = [f"{d.cost.value(macs[v.op.name]):,}"] if concrete else []
            out.append([v.op.name, _op_text(v.op, wide), shape, f"{params:,}"] + mac + [note])
        out.append(["total", "", "", f"{_params(d):,}"] + ([f"{d.cost.total('macs'):,}"] if concrete else []) + [""])
        return out

    lines = _named_table(r, rows, (2, 5 if concrete else 4), wide, right=(3, 4) if concrete else (3,))
    brk = next((v for v in d.layers if v.breaks), None)
    return lines + (_wrap(f"✗ PyTorch fails at {brk.op.name}: {brk.breaks}", "", wide) if brk else [])


def _amount(c: "Cost", name: str, fmt, unit: str = "") -> str:
    v = c.total(name)
    if not isinstance(v, int):
        return fmt(v) + unit
    return f"{v:,}{unit}" + (f" ({v / 1e9:.3g} G)" if v >= 10 ** 9 else f" ({v / 1e6:.3g} M)" if v >= 10 ** 6 else "")


def _cost_lines(d: Details, wide: bool) -> list[str]:
    """The totals, one per line; a formula too long for one line wraps under itself."""
    if d.cost is None:
        return ["", "cost: not available: " + (d.cost_error or "")] if d.cost_error else []
    c, per = d.cost, f" elements of {d.cost.dtype_bytes} bytes"
    rows = [["params", f"{c.total('params'):,}"], ["MACs forward", _amount(c, "macs", readable)],
            ["MACs backward", _amount(c, "bwd_macs", readable)],
            ["activations", _amount(c, "activations", readable, per)],
            ["training peak", _amount(c, "train_peak", readable, per)]]
    out = ["", "cost (one image, PyTorch's shapes; MAC = multiply-accumulate; --cost: every layer):"]
    for name, value in rows:
        out += _wrap(f"{name:<13}  {value}", "  ", wide, hang=" " * 15)
    return out


def _cost_table(r: Report, d: Details, wide: bool) -> list[str]:
    """Per layer: forward and backward MACs and other operations (formulas or values)."""
    if d.cost is None:
        return []
    c = d.cost

    def cell(e, fmt) -> str:
        v = c.value(e)
        return f"{v:,}" if isinstance(v, int) else fmt(v)

    def rows(fmt) -> list[list[str]]:
        out = [["layer", "MACs fwd", "MACs bwd", "other"]]
        out += [[l.name, cell(l.macs, fmt), cell(l.bwd_macs, fmt),
                 f"{cell(l.other, fmt)} {l.other_kind}" if l.other != 0 else ""] for l in c.layers]
        return out + [["total", cell(c.formulas["macs"], fmt), cell(c.formulas["bwd_macs"], fmt), ""]]
    return ["", "cost per layer:"] + _named_table(r, rows, (1, 2, 3), wide, indent="  ")


def _hyp_lines(r: Report, wide: bool) -> list[str]:
    def rows(fmt) -> list[list[str]]:
        return [[c.name, c.status, f"{fmt(c.exprs[0])} = {fmt(c.exprs[1])}" if c.exprs else f"{c.lhs} = {c.rhs}",
                 c.layer, c.valid.describe()] for c in r.constraints]
    out = ["", "shape hypotheses:", *("  " + line for line in LEGEND)]
    out += _named_table(r, rows, (4, 2), wide, indent="  ")
    for c in r.constraints:
        if c.message:
            out += _wrap("✗ " + c.message, "  ", wide)
    return out


def _size_lines(r: Report, d: Details, wide: bool) -> list[str]:
    out = ["", "valid input sizes (every hypothesis holds):"]
    for axis, s in r.valid.items():
        miss = s.smallest_missing()
        out += _wrap(f"{axis} ∈ {s.describe()}" + (f" (smallest failing: {miss})" if miss is not None else ""),
                     "  ", wide)
        for a, b in conflicts(r, axis) if s.empty else []:
            out += _wrap(f"conflict: {a.name} valid at {_brief(a.valid)} vs {b.name} at {_brief(b.valid)}",
                         "    ", wide)
    if d.runs_error:
        out += _wrap(f"PyTorch runs: not computed: {d.runs_error}", "", wide)
    if d.runs:
        out.append("PyTorch runs (every layer defined, concat sizes equal):")
        for a in d.runs.values():
            vals = a.output_values()
            size = (f"output {', '.join(map(str, vals))}" if vals else
                    f"output {readable(a.output)}" if not a.runs.empty else "")
            fails = f"fails at {a.breaks[0]}: {a.breaks[1]}" if a.breaks else ""
            out += _wrap(f"{a.axis} ∈ {a.runs.describe()}; {size or fails}", "  ", wide)
    return out


def _brief(s: IntSet) -> str:
    return s.describe().split(":")[0]


def _repair_lines(r: Report, d: Details, wide: bool) -> list[str]:
    if d.repairs is None:
        return []
    what = "edits giving more valid sizes" if r.ok else "repairs"
    if not d.repairs:
        return ["", f"{what}: none found by changing one or two geometry keys by a little"]
    out = ["", f"{what} (smallest change first, each re-checked by the checker):"]
    for x in d.repairs:
        v = x.report.valid
        where = (f"in_h, in_w ∈ {v['in_h'].describe()}" if v["in_h"] == v["in_w"] else
                 f"in_h ∈ {v['in_h'].describe()}; in_w ∈ {v['in_w'].describe()}")
        out += _wrap(f"{x.text()} → valid for {where}", "  ", wide)
    return out


def _limit_text(r: Report) -> str:
    def power(v: int) -> str:
        return f"2^{v.bit_length() - 1}" if v > 0 and v & (v - 1) == 0 else f"{v:,}"
    return "checker limits: " + ", ".join(f"{k} ≤ {power(v)}" for k, v in r.limits.items()) + " (beyond: refused)"


def to_text(r: Report, d: Details | None = None, wide: bool = False, cost_table: bool = False) -> str:
    """The human-readable report: layer table (PyTorch's shapes next to the spec's), cost,
    hypotheses with a legend, valid and runnable sizes, repairs, limits, warnings, verdict."""
    d, cfg = d or Details(), r.config
    out = [f"unetc check: {cfg.name} from {show(cfg.source)}, input ({cfg.in_c}, {cfg.in_h}, {cfg.in_w}), "
           f"base_c {cfg.base_c}, {cfg.dtype}"]
    if d.layers:
        out += ["", *_layer_table(r, d, wide)]
    out += _cost_table(r, d, wide) if cost_table else []
    out += _cost_lines(d, wide) + _hyp_lines(r, wide) + _size_lines(r, d, wide) + _repair_lines(r, d, wide)
    if r.workspace_bytes is not None:
        out.append(f"\nC target workspace: {r.workspace_bytes:,} bytes ({cfg.name.upper()}_WORKSPACE_BYTES)")
    elif d.workspace_note:
        out.append(f"\nC target workspace: {d.workspace_note}")
    out += ["", _limit_text(r)] + [f"warning: {w}" for w in r.warnings]
    if r.ok:
        out.append("\nok: every hypothesis can hold" + ("" if cfg.symbolic else " and holds at this size"))
    else:
        out += _wrap("FAILED: " + first_failure(r), "", wide)
    return "\n".join(out)


def first_failure(r: Report) -> str:
    """One line: the first violated / impossible hypothesis, or the conflicting ones."""
    for c in r.constraints:
        if c.status == "violated":
            return c.message
        if c.status == "impossible":
            return f"{c.name} holds for no {c.axis} ({c.lhs} = {c.rhs} at {c.layer})"
    axis = next(a for a, s in r.valid.items() if s.empty)
    pairs = conflicts(r, axis)
    if pairs:
        a, b = pairs[0]
        return (f"no {axis} satisfies every hypothesis at once: {a.name} valid at {_brief(a.valid)} "
                f"vs {b.name} at {_brief(b.valid)}")
    sets = "; ".join(f"{c.name} at {_brief(c.valid)}" for c in r.constraints
                     if c.axis == axis and c.status != "proved")
    return f"no {axis} satisfies every hypothesis at once: {sets}"
