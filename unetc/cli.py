"""The command line: ``unetc check`` and ``unetc emit``. The only place that turns UnetcError
into a one-line message and an exit code (0 ok, 1 a hypothesis fails, 2 bad config or usage)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .errors import UnetcError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="unetc", description="Shape checker and code generator for a 2-level U-Net.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("check", help="prove or refute the shape hypotheses of a config")
    c.add_argument("config", nargs="?", help="YAML config (default: the bundled default config)")
    c.add_argument("--size", help="bind the input size, e.g. 128x128 (overrides in_h/in_w)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--certify", metavar="FILE.smt2",
                   help="write an SMT-LIB 2 certificate of every claim (and check it with z3 if installed)")
    e = sub.add_parser("emit", help="emit forward/backward code (specialised, or size-polymorphic for symbolic sizes)")
    e.add_argument("config", nargs="?", help="YAML config (default: the bundled default config)")
    e.add_argument("--target", required=True, choices=["numpy", "c"], help="code generation target")
    e.add_argument("--size", help="bind the input size, e.g. 128x128 (overrides in_h/in_w)")
    e.add_argument("-o", "--out", default="generated", help="output directory (default: generated/)")
    e.add_argument("--testbench", action="store_true", help="C target: also write <name>_main.c")
    e.add_argument("--force", action="store_true",
                   help="overwrite <name>_* files that another config or size wrote into the directory")
    return p


def _load(args):
    from . import config as cfgmod

    cfg = cfgmod.load(args.config)
    if args.size:
        cfg = cfg.with_sizes(*cfgmod.parse_size(args.size))
    return cfg


def cmd_check(args) -> int:
    from .checker import check
    from .report import to_json, to_text

    report = check(_load(args))
    certified, lines, cert_json = True, [], None
    if args.certify:
        certified, lines, cert_json = _certify(report, args.certify)
    if args.json:
        obj = to_json(report)
        if cert_json is not None:
            obj["certificate"] = cert_json
        print(json.dumps(obj, indent=2))
    else:
        print(to_text(report))
        for line in lines:
            print(line)
    return 0 if report.ok and certified else 1


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

    if args.testbench and args.target != "c":
        raise UsageError(f"--testbench is only for --target c (got --target {args.target})")
    paths = emit(_load(args), args.target, args.out, testbench=args.testbench, force=args.force)
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetc`` console script; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        return {"check": cmd_check, "emit": cmd_emit}[args.command](args)
    except UnetcError as err:
        print(f"unetc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("unetc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`unetc check ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, as a shell tool killed by it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
