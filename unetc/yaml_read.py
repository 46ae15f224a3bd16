"""Reading a config without trusting it: a regular file of at most 1 MiB of UTF-8, read without
blocking, and its YAML walked as parser events (no PyYAML constructor runs, nothing recurses) into
one flat mapping of plain scalars typed here -- tags, anchors, aliases, merge keys and YAML 1.1's
surprising integers (010, 1:30) refused. Used by :mod:`unetc.config`; imports only ``errors``."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines; anything above 1 MiB is refused unread
MAX_NESTING = 64  # open '[' / '{' in a config (none are valid; libyaml is quadratic in the depth)
MAX_DIGITS = 30  # integers written with more digits are refused before int() sees them

def show(text: object) -> str:
    """User text (a file name, a key) for a one-line message: as is when printable, else escaped
    like a Python string literal (newlines, control and non-printable characters as \\n, \\xNN)."""
    s = str(text)
    return s if s.isprintable() else repr(s)[1:-1]


def clip(text: str, limit: int = 60) -> str:
    """At most limit characters of an (already escaped) message fragment."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Refused(Exception):
    """A config the walk over the YAML events refuses; str() is the message without the file."""


def mark(node: Any) -> str:
    mark = getattr(node, "start_mark", None) or getattr(node, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"


def deep_line(text: str) -> int | None:
    """The line where more than MAX_NESTING '[' / '{' are open (outside comments), else None.
    No valid config has any; the check keeps libyaml's cost (quadratic in the depth) away."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return None
    depth = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        for m in re.finditer(r"[\[\]{}]", re.sub(r"(?:^|\s)#.*", "", line)):
            depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
            if depth > MAX_NESTING:
                return lineno
    return None


def _refuse_features(event: Any, what: str) -> None:
    """Refuse aliases, anchors and explicit tags: a config is plain keys and plain values."""
    import yaml

    if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
        raise Refused(f"{what} ({mark(event)}): YAML anchors and aliases are not supported; "
                       "write the value out")
    if getattr(event, "tag", None):
        raise Refused(f"{what} ({mark(event)}): YAML tags such as {clip(repr(show(event.tag.replace('tag:yaml.org,2002:', '!!'))))} are not "
                       "supported; write a plain value")


def _scalar(key: str, event: Any, where: str) -> Any:
    """A value event -> int, float, bool, None or str, typed here (YAML 1.1's int forms refused)."""
    import yaml

    _refuse_features(event, key)
    if not isinstance(event, yaml.ScalarEvent):
        kind = "sequence" if isinstance(event, yaml.SequenceStartEvent) else "mapping"
        raise Refused(f"{key}{where}: expected a scalar value, got a YAML {kind}")
    text = event.value
    if event.style:  # quoted or block scalar: a string
        return text
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)).rsplit(":", 1)[-1]
    if tag == "int":
        digits = text.lstrip("-")
        if not re.fullmatch(r"-?[0-9]+", text) or (len(digits) > 1 and digits[0] == "0"):
            why = ("no leading zeros: YAML 1.1 reads 010 as octal 8" if re.fullmatch(r"-?0[0-9_]+", text) else
                   "no ':': YAML 1.1 reads 1:30 as 90" if ":" in text else "digits only, after an optional '-'")
            raise Refused(f"{key}{where}: {text!r} is not a plain decimal integer ({why})")
        if len(digits) > MAX_DIGITS:
            return 10 ** MAX_DIGITS * (-1 if text.startswith("-") else 1)  # out of every range
        return int(text)
    if tag == "bool":
        return text.lower() in ("yes", "true", "on")
    if tag == "null":
        return None
    if tag == "float":
        t = text.lower().replace("_", "")
        try:
            return float(t.replace(".inf", "inf").replace(".nan", "nan"))
        except ValueError:
            return text
    return text


def walk(events: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """YAML parser events -> (key -> value, key -> line) of one flat mapping of plain scalars."""
    import yaml

    next(events)  # StreamStart
    event = next(events)
    if isinstance(event, yaml.StreamEndEvent):
        return {}, {}
    event = next(events)  # the document's root
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if isinstance(event, yaml.ScalarEvent) and event.value == "" and not event.style and not event.tag:
        next(events)  # an empty document ('---' alone)
    elif not isinstance(event, yaml.MappingStartEvent):
        _refuse_features(event, "document")
        kind = {yaml.ScalarEvent: "scalar", yaml.SequenceStartEvent: "sequence"}.get(type(event), "node")
        raise Refused(f"expected a flat mapping of config keys, got a YAML {kind} ({mark(event)})")
    else:
        _refuse_features(event, "mapping")
        while not isinstance(event := next(events), yaml.MappingEndEvent):
            line = event.start_mark.line + 1
            if not isinstance(event, yaml.ScalarEvent) or event.tag or event.anchor:
                _refuse_features(event, "key")
                raise Refused(f"key (line {line}): expected a plain key, got a YAML "
                               f"{'sequence' if isinstance(event, yaml.SequenceStartEvent) else 'mapping'}")
            key = event.value
            if key == "<<" and not event.style:
                raise Refused(f"merge key '<<' (line {line}): YAML merge keys are not supported; write the keys out")
            if key in lines:
                raise Refused(f"duplicate key {clip(repr(show(key)))} (line {line}, first on line {lines[key]})")
            raw[key], lines[key] = _scalar(clip(show(key)), next(events), f" (line {line})"), line
        next(events)  # DocumentEnd
    if isinstance(event := next(events), yaml.DocumentStartEvent):
        raise Refused(f"expected one YAML document, found a second ({mark(event)})")
    return raw, lines


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_bytes(path: str | Path) -> bytes:
    """At most MAX_CONFIG_BYTES + 1 bytes of a regular file, never blocking (FIFOs and devices are
    refused by stat before opening, and again on the opened descriptor)."""
    shown = show(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{shown}: is {_file_kind(st.st_mode)}, not a regular config file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{shown}: config file too large ({st.st_size} bytes; the limit is 1 MiB)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{shown}: is no longer a regular file")
            chunks: list[bytes] = []
            while sum(map(len, chunks)) <= MAX_CONFIG_BYTES and (chunk := os.read(fd, 1 << 16)):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such config file") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{shown}: cannot read config: {show(getattr(err, 'strerror', None) or err)}") from None
    return b"".join(chunks)
