"""Stage 6: Specialized -> files. One Jinja2 environment (StrictUndefined); targets decide in
Python what to print, templates only lay it out. Files are written atomically, deterministically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .config import Config
from .errors import EmitError
from .render import banner, environment, render  # noqa: F401  (re-exported)
from .specialize import Specialized, specialize


def _target(name: str) -> Callable[[Specialized, bool], dict[str, str]]:
    if name == "numpy":
        from .targets.numpy_target import files
    elif name == "c":
        from .targets.c_target import files
    else:
        raise EmitError(f"unknown target {name!r}; choose numpy or c")
    return files


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temp file in the same directory + rename (never half-written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def emit(cfg: Config, target: str, out_dir: str | Path = "generated", testbench: bool = False) -> list[Path]:
    """Emit the files of ``target`` for a concrete config into out_dir; returns the paths written.
    Everything is rendered before anything is written."""
    files = _target(target)(specialize(cfg), testbench)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EmitError(f"output directory {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EmitError(f"cannot create output directory {out}: {err.strerror}") from None
    paths = []
    for name, text in files.items():
        try:
            write_atomic(out / name, text)
        except OSError as err:
            raise EmitError(f"cannot write {out / name}: {err.strerror}") from None
        paths.append(out / name)
    return paths
