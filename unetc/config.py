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
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError

Size = Union[int, str]  # an integer >= 1 or a symbol name
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines; anything above 1 MiB is refused unread
MAX_NESTING = 64  # open '[' / '{' in a config (none are valid; libyaml is quadratic in the depth)
MAX_DIGITS = 30  # integers written with more digits are refused before int() sees them
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


def show(text: object) -> str:
    """User text (a file name, a key) for a one-line message: as is when printable, else escaped
    like a Python string literal (newlines, control and non-printable characters as \\n, \\xNN)."""
    s = str(text)
    return s if s.isprintable() else repr(s)[1:-1]


def _clip(text: str, limit: int = 60) -> str:
    """At most limit characters of an (already escaped) message fragment."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(value: Any) -> str:
    """'int 3', "str 'x'", 'null': a value as the messages show it (huge integers abbreviated)."""
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_DIGITS:
        return f"an integer {'> ' if value > 0 else '< -'}10**{MAX_DIGITS}"
    return f"{type(value).__name__} {_clip(repr(value))}"


def _identifier_problem(value: Any) -> str | None:
    """Why value is not usable as a C/Python identifier (or a name derived from it); None if it is."""
    if not isinstance(value, str):
        return f"got {_describe(value)}"
    if not 1 <= len(value) <= NAME_MAX:
        return f"got {len(value)} characters"
    if value.startswith("_"):
        return f"got {value!r}: a leading '_' is reserved in C (header guards such as _STDINT_H)"
    if not IDENT.match(value):
        return f"got {_clip(repr(value))}"
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
            shown = _clip(repr(value)) if isinstance(value, str) else _describe(value)
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
    shown = _clip(repr(key) if isinstance(key, str) else _describe(key))
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


class _Refused(Exception):
    """A config the walk over the YAML events refuses; str() is the message without the file."""


def _mark(node: Any) -> str:
    mark = getattr(node, "start_mark", None) or getattr(node, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"


def _deep_line(text: str) -> int | None:
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
        raise _Refused(f"{what} ({_mark(event)}): YAML anchors and aliases are not supported; "
                       "write the value out")
    if getattr(event, "tag", None):
        raise _Refused(f"{what} ({_mark(event)}): YAML tags such as {_clip(repr(show(event.tag.replace('tag:yaml.org,2002:', '!!'))))} are not "
                       "supported; write a plain value")


def _scalar(key: str, event: Any, where: str) -> Any:
    """A value event -> int, float, bool, None or str, typed here (YAML 1.1's int forms refused)."""
    import yaml

    _refuse_features(event, key)
    if not isinstance(event, yaml.ScalarEvent):
        kind = "sequence" if isinstance(event, yaml.SequenceStartEvent) else "mapping"
        raise _Refused(f"{key}{where}: expected a scalar value, got a YAML {kind}")
    text = event.value
    if event.style:  # quoted or block scalar: a string
        return text
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)).rsplit(":", 1)[-1]
    if tag == "int":
        digits = text.lstrip("-")
        if not re.fullmatch(r"-?[0-9]+", text) or (len(digits) > 1 and digits[0] == "0"):
            why = ("no leading zeros: YAML 1.1 reads 010 as octal 8" if re.fullmatch(r"-?0[0-9_]+", text) else
                   "no ':': YAML 1.1 reads 1:30 as 90" if ":" in text else "digits only, after an optional '-'")
            raise _Refused(f"{key}{where}: {text!r} is not a plain decimal integer ({why})")
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


def _walk(events: Any) -> tuple[dict[str, Any], dict[str, int]]:
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
        raise _Refused(f"expected a flat mapping of config keys, got a YAML {kind} ({_mark(event)})")
    else:
        _refuse_features(event, "mapping")
        while not isinstance(event := next(events), yaml.MappingEndEvent):
            line = event.start_mark.line + 1
            if not isinstance(event, yaml.ScalarEvent) or event.tag or event.anchor:
                _refuse_features(event, "key")
                raise _Refused(f"key (line {line}): expected a plain key, got a YAML "
                               f"{'sequence' if isinstance(event, yaml.SequenceStartEvent) else 'mapping'}")
            key = event.value
            if key == "<<" and not event.style:
                raise _Refused(f"merge key '<<' (line {line}): YAML merge keys are not supported; write the keys out")
            if key in lines:
                raise _Refused(f"duplicate key {_clip(repr(show(key)))} (line {line}, first on line {lines[key]})")
            raw[key], lines[key] = _scalar(_clip(show(key)), next(events), f" (line {line})"), line
        next(events)  # DocumentEnd
    if isinstance(event := next(events), yaml.DocumentStartEvent):
        raise _Refused(f"expected one YAML document, found a second ({_mark(event)})")
    return raw, lines


def parse(text: str, source: str = "<string>") -> Config:
    """YAML text -> Config. Raises ConfigError ('<source>: ...', one line) on anything but a flat
    mapping of known keys with valid plain values."""
    import yaml

    src = show(source)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{src}: config too large ({len(text)} characters; the limit is 1 MiB)")
    if (deep := _deep_line(text)) is not None:
        raise ConfigError(f"{src}: more than {MAX_NESTING} nested '[' or '{{' (line {deep}); "
                          "a config is a flat mapping of plain values")
    events = yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    try:
        try:
            raw, lines = _walk(events)
        except _Refused:
            for _ in events:  # a syntax error later in the file is reported first, as a parser would
                pass
            raise
    except _Refused as err:
        raise ConfigError(f"{src}: {err}") from None
    except yaml.YAMLError as err:
        where = f" ({_mark(err)})" if getattr(err, "problem_mark", None) else ""
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


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _read_bytes(path: str | Path) -> bytes:
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


def load(path: str | Path | None) -> Config:
    """Read a config file (None -> the bundled default config): a regular file of at most 1 MiB
    of UTF-8 text (a leading BOM is skipped). Raises ConfigError naming the file."""
    if path is None:
        return Config(source="<default>")
    data = _read_bytes(path)
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
