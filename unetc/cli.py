"""The command line: ``unetc check`` and ``unetc emit``. The only place that turns UnetcError
into a one-line message and an exit code (0 ok, 1 a hypothesis fails, 2 bad config or usage)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import UnetcError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


COMMANDS = """commands:
  check [CONFIG]              prove or refute the shape hypotheses; layer table, cost, valid sizes
  emit [CONFIG] --target T    write NumPy or C code for forward and backward
  graph [CONFIG] [-o FILE]    draw the layer graph as SVG
  build DIR                   compile every C loader (*_c.py) in DIR ahead of time
run 'unetc COMMAND --help' for the options of a command"""

SIZE_HELP = "bind the input size: HxW, e.g. 128x128, 128X128 or 128,128 (overrides in_h/in_w)"


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="unetc", description="Shape checker and code generator for a 2-level U-Net.",
                epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"unetc {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    c = sub.add_parser("check", help="prove or refute the shape hypotheses of a config")
    c.add_argument("config", nargs="?", help="YAML config (default: the bundled default config)")
    c.add_argument("--size", help=SIZE_HELP)
    c.add_argument("--json", action="store_true", help="print one JSON object (schema 1, see README)")
    c.add_argument("--certify", metavar="FILE.smt2",
                   help="write an SMT-LIB 2 certificate of every claim (and check it with z3 if installed)")
    c.add_argument("--suggest", action="store_true",
                   help="search small edits of the geometry keys that make the config valid")
    c.add_argument("--cost", action="store_true", help="also print the cost of every layer (formulas or values)")
    c.add_argument("--wide", action="store_true", help="do not cut long formulas to fit 100 columns")
    e = sub.add_parser("emit", help="emit forward/backward code (specialised, or size-polymorphic for symbolic sizes)")
    e.add_argument("config", nargs="?", help="YAML config (default: the bundled default config)")
    e.add_argument("--target", required=True, choices=["numpy", "c"], help="code generation target")
    e.add_argument("--size", help=SIZE_HELP)
    e.add_argument("-o", "--out", default="generated", help="output directory (default: generated/)")
    e.add_argument("--testbench", action="store_true", help="C target: also write <name>_main.c")
    e.add_argument("--force", action="store_true",
                   help="overwrite <name>_* files that another config or size wrote into the directory")
    e.add_argument("--weights", metavar="FILE",
                   help="C target: bake trained parameters (.npz or a torch state_dict) into "
                        "<name>_weights.c, and write <name>_infer.c (.npy in, .npy out)")
    g = sub.add_parser("graph", help="draw the layer graph (PyTorch's shapes, failures in red) as SVG")
    g.add_argument("config", nargs="?", help="YAML config (default: the bundled default config)")
    g.add_argument("--size", help=SIZE_HELP)
    g.add_argument("-o", "--out", help="output file (default: <name>.svg; '-' for stdout)")
    b = sub.add_parser("build", help="compile every C loader (*_c.py) in DIR ahead of time")
    b.add_argument("dir", help="a directory written by 'unetc emit --target c'")
    return p


def _load(args):
    from . import config as cfgmod

    cfg = cfgmod.load(args.config)
    if args.size:
        cfg = cfg.with_sizes(*cfgmod.parse_size(args.size))
    return cfg


def cmd_check(args) -> int:
    from .checker import check
    from .report import details, to_json, to_text

    report = check(_load(args))
    extra = details(report, suggest=args.suggest)
    extra.workspace_note = _workspace(report)
    certified, lines, cert_json = True, [], None
    if args.certify:
        certified, lines, cert_json = _certify(report, args.certify)
    if args.json:
        obj = to_json(report, extra)
        if cert_json is not None:
            obj["certificate"] = cert_json
        print(json.dumps(obj, indent=2))
    else:
        print(to_text(report, extra, wide=args.wide, cost_table=args.cost))
        for line in lines:
            print(line)
    return 0 if report.ok and certified else 1


def _workspace(report) -> str | None:
    """Set report.workspace_bytes (the C target's, for a valid config at concrete sizes; its plan
    costs O(layers), whatever the size); or a note saying why there is none."""
    cfg = report.config
    if not report.ok or cfg.symbolic:
        return None
    from .errors import EmitError
    from .specialize import specialize
    from .targets.c_target import MAX_BYTES, check_limits, workspace_bytes

    try:
        sp = specialize(cfg, report)
        check_limits(sp)
        ws = workspace_bytes(sp)
    except EmitError as err:
        return f"none: {err}"
    if ws > MAX_BYTES:
        return f"none: C target limit: the workspace would need {ws:,} bytes, more than 2^46"
    report.workspace_bytes = ws
    return None


def cmd_graph(args) -> int:
    from .checker import check
    from .config import show
    from .picture import svg

    cfg = _load(args)
    text = svg(cfg, check(cfg))
    out = args.out or f"{cfg.name}.svg"
    if out == "-":
        sys.stdout.write(text)
        return 0
    _write_atomic(out, text)
    print(f"wrote {show(out)}")
    return 0


def _write_atomic(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same directory (all or nothing)."""
    from .config import show
    from .emitter import write_atomic

    try:
        write_atomic(Path(os.path.abspath(path)), text)
    except OSError as err:
        raise UsageError(f"{show(path)}: cannot write: {err.strerror}") from None


def cmd_build(args) -> int:
    """Import every *_c.py loader of DIR (importing compiles the C into the cache)."""
    import importlib.util

    from .config import show

    folder = args.dir
    if not os.path.isdir(folder):
        raise UsageError(f"{show(folder)}: no such directory")
    loaders = sorted(n for n in os.listdir(folder) if n.endswith("_c.py"))
    if not loaders:
        raise UsageError(f"{show(folder)}: no C loader (*_c.py) to build; write one with 'unetc emit --target c'")
    import time

    for name in loaders:
        path, start = os.path.join(folder, name), time.monotonic()
        spec = importlib.util.spec_from_file_location(f"_unetc_build_{name[:-3]}", path)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except Exception as err:  # noqa: BLE001 - any failure of a loader is reported in one line
            msg = " ".join(str(err).split()) or type(err).__name__
            raise UsageError(f"{show(path)}: build failed: {msg}") from None
        print(f"built {path} ({time.monotonic() - start:.1f} s)")
    return 0


def _certify(report, path: str) -> tuple[bool, list[str], dict]:
    """Write the certificate, run z3 when installed: (certified or z3 absent, lines, JSON part)."""
    from . import certify

    cert = certify.certificate(report)
    certify.write(cert, path)
    result = certify.run_z3(cert) if certify.z3_available() else None
    lines = certify.summary_lines(result, path)
    part = {"path": path, "claims": len(cert.claims), "checked_by": result.version if result else None,
            "ok": result.ok if result else None, "summary": result.summary if result else lines[0]}
    return (result is None or result.ok), lines, part


def cmd_emit(args) -> int:
    from .emitter import emit

    for flag, given in (("--testbench", args.testbench), ("--weights", args.weights)):
        if given and args.target != "c":
            raise UsageError(f"{flag} is only for --target c (got --target {args.target})")
    paths = emit(_load(args), args.target, args.out, testbench=args.testbench, force=args.force,
                 weights=args.weights)
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetc`` console script; returns the exit status. Bare ``unetc``
    prints the commands on stdout and exits 2 (a usage error, like a missing argument)."""
    argv = _glue_size(list(sys.argv[1:] if argv is None else argv))
    try:
        parser = _parser()
        if not argv:
            print(parser.format_usage().rstrip() + "\n" + COMMANDS)
            return 2
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("no command given; run 'unetc' for the list of commands")
        return {"check": cmd_check, "emit": cmd_emit, "graph": cmd_graph, "build": cmd_build}[args.command](args)
    except UnetcError as err:
        if "--json" in argv:
            print(json.dumps({"schema": 1, "ok": False, "error": _error_json(err)}, indent=2))
        else:
            print(f"unetc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("unetc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`unetc check ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, as a shell tool killed by it


def _glue_size(argv: list[str]) -> list[str]:
    """'--size -4x4' -> '--size=-4x4', so that parse_size (not argparse) judges a negative size."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--size" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"--size={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _error_json(err: UnetcError) -> dict:
    """kind (the exception class), message, and the config key and YAML line when known."""
    import re

    msg = str(err)
    key, line = getattr(err, "key", None), getattr(err, "line", None)
    m = re.search(r"(?:^|: |unknown key )'?([A-Za-z_][A-Za-z0-9_]*)'? \((?:line (\d+)|from --size)", msg)
    if m and key is None:
        key, line = m.group(1), int(m.group(2)) if m.group(2) else None
    return {"kind": type(err).__name__, "message": msg, "key": key, "line": line}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
