"""Report -> text (for people) or a JSON-ready dict (for tools)."""
from __future__ import annotations

from typing import Any

from .checker import Report
from .intset import IntSet


def _progs(s: IntSet) -> list[dict[str, int]]:
    return [{"start": a, "step": b} for a, b in s.progressions()]


def to_json(r: Report) -> dict[str, Any]:
    """The ``--json`` object: ok, constraints, valid, layers, config (and errors/messages)."""
    return {
        "ok": r.ok,
        "config": r.config.to_dict(),
        "constraints": [{"name": c.name, "layer": c.layer, "axis": c.axis, "status": c.status,
                         "lhs": c.lhs, "rhs": c.rhs, "valid": _progs(c.valid),
                         **({"message": c.message} if c.message else {})} for c in r.constraints],
        "valid": {axis: _progs(s) for axis, s in r.valid.items()},
        "valid_text": {axis: s.describe() for axis, s in r.valid.items()},
        "smallest_failing": {axis: s.smallest_missing() for axis, s in r.valid.items()},
        "layers": [{"name": l.name, "op": l.op, "inputs": l.inputs, "output": l.output,
                    "params": l.params} for l in r.layers],
        **({"workspace_bytes": r.workspace_bytes} if r.workspace_bytes is not None else {}),
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def to_text(r: Report) -> str:
    """A human-readable report: layer table, hypotheses, valid sizes, verdict."""
    cfg = r.config
    out = [f"unetc check: {cfg.name} from {cfg.source}, input ({cfg.in_c}, {cfg.in_h}, {cfg.in_w}), "
           f"base_c {cfg.base_c}, {cfg.dtype}"]
    if r.layers:
        rows = [["layer", "op", "input", "output", "params"]]
        rows += [[l.name, l.op, " + ".join(l.inputs), l.output, f"{l.params:,}"] for l in r.layers]
        rows.append(["total", "", "", "", f"{sum(l.params for l in r.layers):,}"])
        out += ["", *_table(rows)]
    out += ["", "shape hypotheses:"]
    rows = []
    for c in r.constraints:
        where = c.message or f"holds for {c.axis} ∈ {c.valid.describe()}"
        rows.append([c.name, c.status, f"{c.lhs} = {c.rhs}", f"({c.layer})", where])
    out += ["  " + line for line in _table(rows)]
    out += ["", "valid input sizes:"]
    for axis, s in r.valid.items():
        miss = s.smallest_missing()
        extra = f" (smallest failing: {miss})" if miss is not None else ""
        out.append(f"  {axis} ∈ {s.describe()}{extra}")
    if r.workspace_bytes is not None:
        out.append(f"\nC target workspace: {r.workspace_bytes:,} bytes ({cfg.name.upper()}_WORKSPACE_BYTES)")
    if r.ok:
        out.append("\nok: every hypothesis can hold" + ("" if cfg.symbolic else " and holds at this size"))
    else:
        out.append("\nFAILED: " + _first_failure(r))
    return "\n".join(out)


def _first_failure(r: Report) -> str:
    for c in r.constraints:
        if c.status == "violated":
            return c.message
        if c.status == "impossible":
            return f"{c.name} holds for no {c.axis} ({c.lhs} = {c.rhs} at {c.layer})"
    empty = [a for a, s in r.valid.items() if s.empty]
    return f"no {' or '.join(empty)} satisfies every hypothesis at once"
