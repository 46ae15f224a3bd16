"""Stage 1: YAML text -> :class:`Config`, validated with one-line errors naming the key and line."""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while".split()
)

Size = Union[int, str]  # an integer >= 1 or a symbol name


@dataclass(frozen=True)
class Config:
    """The spec's UNet2Config plus channels, input size, dtype and the max-pool backward mode."""

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

    @property
    def symbolic(self) -> bool:
        """True when in_h or in_w is a symbol name rather than an integer."""
        return isinstance(self.in_h, str) or isinstance(self.in_w, str)

    def to_dict(self) -> dict[str, Any]:
        """The config's keys and values, in the order of SPEC.md (no ``source``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}

    def to_yaml(self) -> str:
        """Canonical flat YAML of every key (deterministic; used in generated-file banners)."""
        return "".join(f"{k}: {v}\n" for k, v in self.to_dict().items())

    def with_sizes(self, h: Size, w: Size) -> "Config":
        """A copy with in_h/in_w replaced (validated like a YAML value)."""
        return validate({**self.to_dict(), "in_h": h, "in_w": w}, self.source)


KEYS = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
# key -> minimum value for the integer keys
INT_MIN = {
    "in_c": 1, "out_c": 1, "base_c": 1,
    "pool_kernel": 1, "pool_stride": 1,
    "conv_kernel": 1, "conv_stride": 1, "conv_padding": 0,
    "up_kernel": 1, "up_stride": 1, "up_padding": 0,
    "head_kernel": 1, "head_stride": 1, "head_padding": 0,
}
CHOICES = {"dtype": ("float32", "float64"), "maxpool_backward": ("pytorch", "spec")}


def _where(lines: dict[str, int], key: str) -> str:
    return f" (line {lines[key]})" if key in lines else ""


def _check_value(key: str, value: Any, where: str) -> Any:
    """Validate one key's value; return it (normalised) or raise ConfigError."""
    if key in INT_MIN:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}{where}: expected an integer, got {type(value).__name__} {value!r}")
        if value < INT_MIN[key]:
            raise ConfigError(f"{key}{where}: must be >= {INT_MIN[key]}, got {value}")
        return value
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise ConfigError(f"{key}{where}: must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    if key in ("in_h", "in_w"):
        if isinstance(value, bool) or isinstance(value, float):
            raise ConfigError(f"{key}{where}: expected an integer >= 1 or a symbol name, got {value!r}")
        if isinstance(value, int):
            if value < 1:
                raise ConfigError(f"{key}{where}: must be >= 1, got {value}")
            return value
        if isinstance(value, str) and IDENT.match(value):
            return value
        raise ConfigError(f"{key}{where}: expected an integer >= 1 or a symbol name, got {value!r}")
    if key == "name":
        if not isinstance(value, str) or not IDENT.match(value) or value in C_KEYWORDS:
            raise ConfigError(f"name{where}: must be an identifier [A-Za-z_][A-Za-z0-9_]* "
                              f"and not a C keyword, got {value!r}")
        return value
    raise ConfigError(f"unknown key {key!r}{where}")  # pragma: no cover - guarded by caller


def validate(raw: dict[str, Any], source: str = "<dict>", lines: dict[str, int] | None = None) -> Config:
    """Check a flat mapping of config keys; unknown keys are an error with a suggestion."""
    lines = lines or {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(KEYS)}"
            raise ConfigError(f"unknown key {key!r}{_where(lines, str(key))}{hint}")
        values[key] = _check_value(key, value, _where(lines, key))
    return Config(**values, source=source)


def parse(text: str, source: str = "<string>") -> Config:
    """YAML text -> Config. Raises ConfigError on broken YAML, duplicate or unknown keys, bad values."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: broken YAML{where}: {problem}") from None
    if node is None:
        return Config(source=source)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{source}: expected a flat mapping of config keys, got a YAML {node.id}")
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    loader = yaml.SafeLoader("")
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(value_node, yaml.ScalarNode):
            raise ConfigError(f"{source}: {key} (line {line}): expected a scalar value, got a YAML {value_node.id}")
        if key in raw:
            raise ConfigError(f"{source}: duplicate key {key!r} (line {line}, first on line {lines[key]})")
        raw[key] = loader.construct_object(value_node, deep=True)
        lines[str(key)] = line
    try:
        return validate(raw, source, lines)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load(path: str | Path | None) -> Config:
    """Read a config file (None -> the bundled default config)."""
    if path is None:
        return Config(source="<default>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    return parse(text, str(path))


def parse_size(text: str) -> tuple[Size, Size]:
    """'128x96' / '128' / 'HxW' -> (in_h, in_w); raises ConfigError on anything else."""
    m = re.fullmatch(r"\s*(\w+?)\s*[x×]\s*(\w+)\s*", text) or re.fullmatch(r"\s*(\w+)\s*", text)
    if not m:
        raise ConfigError(f"--size {text!r}: expected HxW, e.g. 128x128")
    parts = list(m.groups()) * (3 - len(m.groups()))
    out: list[Size] = []
    for axis, part in zip(("in_h", "in_w"), parts):
        part = part.strip()
        value: Size = int(part) if part.lstrip("-").isdigit() else part
        out.append(_check_value(axis, value, f" (from --size {text!r})"))
    return out[0], out[1]
