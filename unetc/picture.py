"""Config (+ Report) -> SVG text: the U-shaped layer graph of the network.

Python decides everything here (which nodes, their text, coordinates, colours by class name);
``templates/graph.svg.j2`` only writes the boxes, edges and texts it is given, escaping every
text for XML. Shapes are the ones PyTorch computes (:func:`unetc.cost.pytorch_shapes`), symbolic
or at the config's sizes. Layers named by a violated or impossible hypothesis of the report, and
the first layer where PyTorch itself fails, are drawn in red with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil
from pathlib import Path
from typing import TYPE_CHECKING

import sympy as sp

from .config import Config
from .cost import first_break, pytorch_shapes, real_infer, symbolic_graph
from .graph import Graph
from .ops import Conv2d, ConvTranspose2d, MaxPool2d, Relu, Shape
from .render import render, safe_comment_text

if TYPE_CHECKING:  # pragma: no cover
    from .checker import Report

CHAR_W = 7.3  # advance of a 12 px monospace glyph (DejaVu Sans Mono: 0.6 em), with a little slack
LINE_H = 16
MARGIN = 20
# (column, row) of each node in graph order: input, encoder down the left, bottleneck at the
# bottom, decoder up the right. Columns 0 / 1 / 2 = left / middle / right.
SLOTS = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (2, 4), (2, 3), (2, 2), (2, 1), (2, 0)]


@dataclass
class Node:
    """One box: the layer (with the ReLU folded in), its text lines and its class."""

    name: str
    lines: list[str]
    kind: str  # css class: input | conv | resample | concat
    bad: list[str] = field(default_factory=list)  # red annotation lines
    x: int = 0
    y: int = 0
    w: int = 0
    h: int = 0


ALIAS_AFTER = 18  # a size formula longer than this is shown as a named size (H_1 = ...)


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(sp.sstr(n) for n in shape) + ")"


def _display_shapes(g: Graph, subs: dict) -> tuple[dict[str, Shape], list[tuple[str, str]]]:
    """PyTorch's shapes for reading: bound sizes substituted, and every long size formula
    replaced by a named size defined from its input's (H_2 = floor(H_1/2 - 1/2) + 1) ->
    (tensor -> shape, (axis, definition) pairs)."""
    taken = {str(g.h), str(g.w)}
    names: dict = {}  # formula -> alias symbol
    defs: list[tuple[str, str]] = []  # (axis base name, "H_1 = ...")

    def short(e, base: str):
        e = sp.sympify(e)
        if e.is_number or len(sp.sstr(e)) <= ALIAS_AFTER:
            return e
        if e not in names:
            k = sum(b == base for b, _ in defs) + 1
            while f"{base}_{k}" in taken:
                k += 1
            names[e] = sp.Symbol(f"{base}_{k}", integer=True, positive=True)
            taken.add(str(names[e]))
            defs.append((base, f"{names[e]} = {sp.sstr(e)}"))
        return names[e]

    shown: dict[str, Shape] = {"x": tuple(sp.sympify(n).subs(subs) for n in g.shapes["x"])}
    for op in g.ops:
        out, _ = real_infer(op, [shown[t] for t in op.inputs])
        shown[op.output] = (out[0], short(out[1], str(g.h)), short(out[2], str(g.w)))
    return shown, defs


def _failing(report: "Report | None") -> dict[str, list[str]]:
    """layer -> red lines: hypotheses violated / impossible there, or (when an axis has no valid
    size) hypotheses that hold somewhere but conflict, with their sets."""
    out: dict[str, dict[str, list[str]]] = {}
    for c in (report.constraints if report else []):
        if c.status in ("violated", "impossible"):
            out.setdefault(c.layer, {}).setdefault(c.status, []).append(c.name)
        elif c.status == "conditional" and report.valid[c.axis].empty and c.valid.progressions():
            what = "conflict: only " + c.valid.describe().split(":")[0]
            out.setdefault(c.layer, {}).setdefault(what, []).append(c.name)
    return {layer: [f"✗ {', '.join(n)} {what}" for what, n in d.items()] for layer, d in out.items()}


def _nodes(cfg: Config, report: "Report | None") -> tuple[list[Node], list[tuple[str, str]], str | None]:
    """The 11 nodes in graph order, the named-size definitions and the PyTorch failure (or None)."""
    g = symbolic_graph(cfg)
    shapes, broken = pytorch_shapes(g)
    subs = {sym: v for sym, v in ((g.h, cfg.in_h), (g.w, cfg.in_w)) if isinstance(v, int)}
    shown, defs = _display_shapes(g, subs)
    brk = first_break(g, shapes, subs) if subs else None
    if brk is None and broken:
        a, b = next(op for op in g.ops if op.name == broken).inputs
        brk = (broken, f"{a} {_fmt_shape(shown[a])} vs {b} {_fmt_shape(shown[b])}")
    failing = _failing(report)
    nodes = [Node("x", ["input x", _fmt_shape(shown["x"])], "input")]
    dead, ops, i = False, list(g.ops), 0
    while i < len(ops):
        op, relu = ops[i], None
        if i + 1 < len(ops) and isinstance(ops[i + 1], Relu) and ops[i + 1].inputs == (op.output,):
            relu = ops[i + 1]
        out = relu.output if relu else op.output
        here = bool(brk and brk[0] in (op.name, relu.name if relu else None))
        dead = dead or here
        kind = ("conv" if type(op) is Conv2d else "resample" if isinstance(op, (MaxPool2d, ConvTranspose2d))
                else "concat")
        node = Node(op.name, [f"{op.name}: {op.describe()}" + (" + relu" if relu else ""),
                              f"{out} " + ("not computed" if dead else _fmt_shape(shown[out]))], kind)
        node.bad = failing.get(op.name, []) + ([f"✗ PyTorch fails: {brk[1]}"] if here else [])
        nodes.append(node)
        i += 2 if relu else 1
    return nodes, defs, (f"PyTorch fails at {brk[0]}: {brk[1]}" if brk else None)


def _text_w(text: str) -> int:
    return ceil(len(text) * CHAR_W)


def _status(cfg: Config, report: "Report | None", torch_fail: str | None) -> list[tuple[str, str]]:
    """(text, css class) lines under the title: the verdict and the first few failures."""
    out = []
    if report is not None:
        bad = [c for c in report.constraints if c.status in ("violated", "impossible")]
        if report.ok:
            out.append(("ok: every shape hypothesis " + ("can hold" if cfg.symbolic else "holds at this size"), "ok"))
        for c in bad[:3]:
            out.append((c.message or f"{c.name} holds for no {c.axis} ({c.lhs} = {c.rhs} at {c.layer})", "bad"))
        empty = [a for a, v in report.valid.items() if v.empty]
        if empty and not bad:
            out.append((f"no {' or '.join(empty)} satisfies every hypothesis at once", "bad"))
    if torch_fail:
        out.append((torch_fail, "bad"))
    return out


def _text(x: int, y: int, text: str, cls: str, anchor: str = "start") -> dict:
    return {"x": x, "y": y, "text": text, "cls": cls, "anchor": anchor}


def _grid(nodes: list[Node], top: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Place the nodes on SLOTS -> (boxes, edges, texts) of the U with its skip connection."""
    bw = max(_text_w(t) for n in nodes for t in n.lines + n.bad) + 20
    bh = 10 + LINE_H * max(len(n.lines) + len(n.bad) for n in nodes)
    pitch, gap = bh + 24, max(150, bw // 3)
    xs = [MARGIN, MARGIN + bw // 2 + gap // 2 + bw // 2, MARGIN + bw + gap]
    boxes, texts = [], []
    for node, (col, row) in zip(nodes, SLOTS):
        node.x, node.y, node.w, node.h = xs[col], top + row * pitch, bw, bh
        boxes.append({"x": node.x, "y": node.y, "w": bw, "h": bh, "cls": node.kind + (" bad" if node.bad else "")})
        lines = [(t, "name" if j == 0 else "shape") for j, t in enumerate(node.lines)]
        lines += [(t, "badtext") for t in node.bad]
        texts += [_text(node.x + 10, node.y + 19 + LINE_H * j, t, c) for j, (t, c) in enumerate(lines)]
    edges = [_edge(a, b, sa, sb) for a, b, sa, sb in zip(nodes, nodes[1:], SLOTS, SLOTS[1:])]
    skip, merged = nodes[2], nodes[7]
    mid, y1, y2 = skip.x + bw + gap // 2, skip.y + bh // 2, merged.y + bh // 2
    edges.append({"points": f"{skip.x + bw},{y1} {mid},{y1} {mid},{y2} {merged.x - 2},{y2}",
                  "cls": "skip", "arrow": True})
    texts.append(_text(mid, y1 - 6, "skip1 (copy)", "edgelabel", "middle"))
    return boxes, edges, texts


def _legend(y: int, defs: list[tuple[str, str]]) -> tuple[list[dict], list[dict], list[dict], int]:
    """Legend row at y and the named-size definitions below it -> (boxes, edges, texts, right edge)."""
    boxes, texts, x = [], [], MARGIN
    for cls, label in (("conv", "conv + relu"), ("resample", "pool / transposed conv"), ("concat", "concat"),
                       ("bad", "hypothesis fails / PyTorch fails")):
        boxes.append({"x": x, "y": y, "w": 22, "h": 14, "cls": cls})
        texts.append(_text(x + 28, y + 12, label, "legend"))
        x += 28 + _text_w(label) + 22
    edges = [{"points": f"{x},{y + 7} {x + 40},{y + 7}", "cls": "skip", "arrow": False}]
    texts.append(_text(x + 48, y + 12, "skip connection", "legend"))
    right = x + 48 + _text_w("skip connection")
    if defs:
        texts.append(_text(MARGIN, y + 34, "where", "legend"))
    x = MARGIN + _text_w("where ")
    for base in dict.fromkeys(b for b, _ in defs):  # one column per axis
        lines = [d for b, d in defs if b == base]
        texts += [_text(x, y + 34 + LINE_H * i, d, "legend") for i, d in enumerate(lines)]
        x += max(_text_w(d) for d in lines) + 30
        right = max(right, x)
    return boxes, edges, texts, right


def layout(cfg: Config, report: "Report | None" = None) -> dict:
    """The template context: canvas size, boxes, edges (polylines) and texts, all in pixels."""
    nodes, defs, torch_fail = _nodes(cfg, report)
    source = safe_comment_text(Path(cfg.source).name)
    title = (f"unetc: {cfg.name} from {source}, input ({cfg.in_c}, {cfg.in_h}, {cfg.in_w}), "
             f"base_c {cfg.base_c}, {cfg.dtype}")
    status = _status(cfg, report, torch_fail)
    head = [_text(MARGIN, MARGIN + 12, title, "title")]
    head += [_text(MARGIN, MARGIN + 32 + LINE_H * i, t, c) for i, (t, c) in enumerate(status)]
    top = MARGIN + 26 + LINE_H * len(status) + 12
    boxes, edges, texts = _grid(nodes, top)
    bottom = nodes[SLOTS.index((1, 5))]
    legend_y = bottom.y + bottom.h + 24
    lboxes, ledges, ltexts, right = _legend(legend_y, defs)
    width = max([right, nodes[-1].x + nodes[-1].w] + [_text_w(t["text"]) * 15 // 14 for t in head]) + MARGIN
    rows = max([sum(b == base for b, _ in defs) for base, _ in defs] or [0])
    height = legend_y + 14 + (18 + LINE_H * rows if rows else 0) + MARGIN
    return {"width": width, "height": height, "boxes": boxes + lboxes, "edges": edges + ledges,
            "texts": head + texts + ltexts}


def _edge(a: Node, b: Node, sa: tuple[int, int], sb: tuple[int, int]) -> dict:
    """Arrow from node a to node b by their slots: down the left, along the bottom, up the right."""
    ca, cb = sa[0], sb[0]  # columns (rows are implied by the nodes' positions)
    if ca == cb == 0:
        pts = [(a.x + a.w // 2, a.y + a.h), (b.x + b.w // 2, b.y - 2)]
    elif ca == cb == 2:
        pts = [(a.x + a.w // 2, a.y), (b.x + b.w // 2, b.y + b.h + 2)]
    elif cb == 1:  # left column -> bottom
        pts = [(a.x + a.w // 2, a.y + a.h), (a.x + a.w // 2, b.y + b.h // 2), (b.x - 2, b.y + b.h // 2)]
    else:  # bottom -> right column
        pts = [(a.x + a.w, a.y + a.h // 2), (b.x + b.w // 2, a.y + a.h // 2), (b.x + b.w // 2, b.y + b.h + 2)]
    return {"points": " ".join(f"{x},{y}" for x, y in pts), "cls": "flow", "arrow": True}


def svg(cfg: Config, report: "Report | None" = None) -> str:
    """The picture of ``cfg`` as SVG text (deterministic). ``report``: ``checker.check(cfg)``,
    whose violated / impossible hypotheses are marked in red at the layer that makes them."""
    return render("graph.svg.j2", **layout(cfg, report))
