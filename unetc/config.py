"""Stage 1: a YAML file or text -> :class:`Config`, validated with one-line errors naming the file,
the key and the line. Hostile input is refused, never interpreted: only regular files of at most
1 MiB of UTF-8 are read (never blocking), YAML is walked as parser events (no PyYAML constructor
runs, no recursion), tags, anchors, aliases and merge keys are refused, and scalars are typed here
(plain decimal integers only: ``010`` and ``1:30`` are errors, not 8 and 90)."""
from __future__ import annotations

import dataclasses
import difflib
import keyword
import numbers
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError
from .yaml_read import (MAX_CONFIG_BYTES, MAX_DIGITS, MAX_NESTING, Refused, clip, deep_line, mark,  # noqa: F401
                        read_bytes, show, walk)

Size = Union[int, str]  # an integer >= 1 or a symbol name
NAME_MAX = 64  # `name` and symbol names: file names, C identifiers and cache keys derive from them
# Upper bounds of the integer keys (README "Limits and guarantees"); lower bounds in INT_MIN.
LIMITS = {"in_c": 65536, "out_c": 65536, "base_c": 65536, "in_h": 1 << 20, "in_w": 1 << 20,
          **{f"{layer}_{p}": 1024 for layer in ("pool", "conv", "up", "head") for p in ("kernel", "stride")},
          "conv_padding": 1024, "up_padding": 1024, "head_padding": 1024}
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic "
    "_Imaginary _Noreturn _Static_assert _Thread_local".split()
)
# `name` becomes <name>.py / <name>_c.py: it must not shadow a module the generated code imports
MODULE_NAMES = frozenset(sys.stdlib_module_names) | {"numpy", "unetc", "sympy", "jinja2", "yaml", "torch"}
IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
NAME_RULE = (f"1-{NAME_MAX} ASCII letters, digits and '_', starting with a letter, no '__', "
             "not a C or Python keyword")


@dataclass(frozen=True)
class Config:
    """The spec's UNet2Config plus channels, input size, dtype and the max-pool backward mode.
    Construction (and ``dataclasses.replace``) validates every key: a bad value is a ConfigError."""

    name: str = "unet2"
    dtype: str = "float32"
    in_c: int = 3
    out_c: int = 2
    in_h: Size = "H"
    in_w: Size = "W"
    pool_kernel: int = 2
    pool_stride: int = 2
    conv_kernel: int = 3
    conv_stride: int = 1
    conv_padding: int = 1
    up_kernel: int = 2
    up_stride: int = 2
    up_padding: int = 0
    head_kernel: int = 1
    head_stride: int = 1
    head_padding: int = 0
    base_c: int = 64
    maxpool_backward: str = "pytorch"
    source: str = field(default="<default>", compare=False)

    def __post_init__(self) -> None:
        for key in KEYS:
            object.__setattr__(self, key, _check_value(key, getattr(self, key), ""))
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        if not isinstance(self.source, str):
            raise ConfigError(f"source: expected a str, got {type(self.source).__name__}")

    @property
    def symbolic(self) -> bool:
        """True when in_h or in_w is a symbol name rather than an integer."""
        return isinstance(self.in_h, str) or isinstance(self.in_w, str)

    def to_dict(self) -> dict[str, Any]:
        """The config's keys and values, in the order of SPEC.md (no ``source``)."""
        return {key: getattr(self, key) for key in KEYS}

    def to_yaml(self) -> str:
        """Canonical flat YAML of every key (deterministic; used in generated-file banners)."""
        return "".join(f"{k}: {v}\n" for k, v in self.to_dict().items())

    def with_sizes(self, h: Size, w: Size) -> "Config":
        """A copy with in_h/in_w replaced (validated like a YAML value)."""
        return validate({**self.to_dict(), "in_h": h, "in_w": w}, self.source)


KEYS = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
INT_MIN = {  # key -> minimum value of the integer keys
    "in_c": 1, "out_c": 1, "base_c": 1,
    "pool_kernel": 1, "pool_stride": 1,
    "conv_kernel": 1, "conv_stride": 1, "conv_padding": 0,
    "up_kernel": 1, "up_stride": 1, "up_padding": 0,
    "head_kernel": 1, "head_stride": 1, "head_padding": 0,
}
CHOICES = {"dtype": ("float32", "float64"), "maxpool_backward": ("pytorch", "spec")}


def _describe(value: Any) -> str:
    """'int 3', "str 'x'", 'null': a value as the messages show it (huge integers abbreviated)."""
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_DIGITS:
        return f"an integer {'> ' if value > 0 else '< -'}10**{MAX_DIGITS}"
    return f"{type(value).__name__} {clip(repr(value))}"


def _identifier_problem(value: Any) -> str | None:
    """Why value is not usable as a C/Python identifier (or a name derived from it); None if it is."""
    if not isinstance(value, str):
        return f"got {_describe(value)}"
    if not 1 <= len(value) <= NAME_MAX:
        return f"got {len(value)} characters"
    if value.startswith("_"):
        return f"got {value!r}: a leading '_' is reserved in C (header guards such as _STDINT_H)"
    if not IDENT.match(value):
        return f"got {clip(repr(value))}"
    if "__" in value:
        return f"got {value!r}: '__' is reserved in C and C++"
    if value in C_KEYWORDS or keyword.iskeyword(value):
        return f"got {value!r}: a {'C' if value in C_KEYWORDS else 'Python'} keyword"
    return None


def _int_text(value: int) -> str:
    """An integer for a message; beyond MAX_DIGITS digits (str() may refuse) abbreviated."""
    return str(value) if abs(value) < 10 ** MAX_DIGITS else _describe(value)


def _check_int(key: str, value: Any, where: str) -> int:
    """An integer key's value (any Integral but bool, e.g. numpy.int64) -> int within its limits."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{key}{where}: expected an integer, got {_describe(value)}")
    value = int(value)
    if value < INT_MIN.get(key, 1):
        raise ConfigError(f"{key}{where}: must be >= {INT_MIN.get(key, 1)}, got {_int_text(value)}")
    if value > LIMITS[key]:
        raise ConfigError(f"{key}{where}: must be <= {LIMITS[key]}, got {_int_text(value)}")
    return value


def _check_value(key: str, value: Any, where: str) -> Any:
    """Validate one key's value; return it (normalised) or raise ConfigError."""
    if key in INT_MIN:
        return _check_int(key, value, where)
    if key in CHOICES:
        if not isinstance(value, str) or value not in CHOICES[key]:
            shown = clip(repr(value)) if isinstance(value, str) else _describe(value)
            raise ConfigError(f"{key}{where}: must be one of {', '.join(CHOICES[key])}, got {shown}")
        return value
    if key in ("in_h", "in_w"):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return _check_int(key, value, where)
        problem = _identifier_problem(value)
        if problem:
            raise ConfigError(f"{key}{where}: expected an integer >= 1 or a symbol name ({NAME_RULE}), {problem}")
        return value
    if key == "name":
        problem = _identifier_problem(value) or (
            f"got {value!r}: would shadow the Python module {value!r}" if value in MODULE_NAMES else None)
        if problem:
            raise ConfigError(f"name{where}: must be an identifier ({NAME_RULE}), {problem}")
        return value
    raise ConfigError(f"unknown key {show(key)!r}{where}")  # pragma: no cover - guarded by caller


def _unknown_key(key: Any, where: str) -> ConfigError:
    """'unknown key ...; did you mean ...?' matching case-insensitively and '-' as '_'."""
    folded = key.lower().replace("-", "_").strip() if isinstance(key, str) else ""
    close = [k for k in KEYS if k == folded] or difflib.get_close_matches(folded, KEYS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(KEYS)}"
    shown = clip(repr(key) if isinstance(key, str) else _describe(key))
    return ConfigError(f"unknown key {shown}{where}{hint}")


def validate(raw: Any, source: str = "<dict>", lines: dict[str, int] | None = None) -> Config:
    """Check a flat mapping of config keys -> Config; unknown keys are an error with a suggestion."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a dict of config keys, got {type(raw).__name__}")
    lines = lines or {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f" (line {lines[key]})" if isinstance(key, str) and key in lines else ""
        if not isinstance(key, str) or key not in KEYS:
            raise _unknown_key(key, where)
        values[key] = _check_value(key, value, where)
    return Config(**values, source=source)


def parse(text: str, source: str = "<string>") -> Config:
    """YAML text -> Config. Raises ConfigError ('<source>: ...', one line) on anything but a flat
    mapping of known keys with valid plain values."""
    import yaml

    src = show(source)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{src}: config too large ({len(text)} characters; the limit is 1 MiB)")
    if (deep := deep_line(text)) is not None:
        raise ConfigError(f"{src}: more than {MAX_NESTING} nested '[' or '{{' (line {deep}); "
                          "a config is a flat mapping of plain values")
    events = yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    try:
        try:
            raw, lines = walk(events)
        except Refused:
            for _ in events:  # a syntax error later in the file is reported first, as a parser would
                pass
            raise
    except Refused as err:
        raise ConfigError(f"{src}: {err}") from None
    except yaml.YAMLError as err:
        where = f" ({mark(err)})" if getattr(err, "problem_mark", None) else ""
        if isinstance(getattr(err, "position", None), int):  # a ReaderError: a bad character
            where = f" (line {text.count(chr(10), 0, err.position) + 1})"
        problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{src}: broken YAML{where}: {show(problem)}") from None
    except Exception as err:  # noqa: BLE001 - never a traceback from PyYAML on hostile input
        raise ConfigError(f"{src}: cannot parse YAML ({type(err).__name__})") from None
    try:
        return validate(raw, source, lines)
    except ConfigError as err:
        raise ConfigError(f"{src}: {err}") from None


def load(path: str | Path | None) -> Config:
    """Read a config file (None -> the bundled default config): a regular file of at most 1 MiB
    of UTF-8 text (a leading BOM is skipped). Raises ConfigError naming the file."""
    if path is None:
        return Config(source="<default>")
    data = read_bytes(path)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{show(path)}: config file too large (more than 1 MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{show(path)}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line})") from None
    return parse(text[1:] if text.startswith("\ufeff") else text, str(path))


def parse_size(text: str) -> tuple[Size, Size]:
    """'128x96', '128X96', '128×96', '128,96', '128' (square) or 'HxW' -> (in_h, in_w), each
    validated like a YAML value; raises ConfigError with a one-line message otherwise."""
    s = text.strip()
    parts = (re.fullmatch(r"(\S+?)\s*,\s*(\S+)", s) or re.fullmatch(r"(\S+?)\s*[xX×]\s*(\S+)", s)
             or re.fullmatch(r"([+-]?[0-9]+)", s))
    if not parts:
        raise ConfigError(f"--size {text!r}: expected HxW (e.g. 128x128, 128X128 or 128,128; "
                          "128 for a square; symbol names allowed)")
    values = list(parts.groups()) * (3 - len(parts.groups()))
    out: list[Size] = []
    for axis, part in zip(("in_h", "in_w"), values):
        digits = part.lstrip("+-")
        if not re.fullmatch(r"[+-]?[0-9]+|\w+", part):
            raise ConfigError(f"--size {text!r}: {axis} must be an integer or a symbol name, got {part!r}")
        sign = -1 if part.startswith("-") else 1
        value: Size = (sign * 10 ** MAX_DIGITS if len(digits) > MAX_DIGITS else int(part)) if digits.isdigit() else part
        out.append(_check_value(axis, value, f" (from --size {text!r})"))
    return out[0], out[1]
