"""unetc: symbolic shape checking and NumPy/C code generation for a 2-level U-Net (SPEC.md).

Stages, one module each: ``config`` (YAML -> Config), ``graph`` (Config -> Graph with SymPy
shapes), ``checker`` (Graph -> Report), ``backward`` (Graph -> backward Graph), ``specialize``
(concrete sizes) and ``emitter`` (-> files). Errors derive from :class:`unetc.errors.UnetcError`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ConfigError, EmitError, ShapeError, UnetcError, UsageError

__version__ = "0.1.0"
__all__ = ["ConfigError", "EmitError", "ShapeError", "UnetcError", "UsageError", "check", "emit", "load"]


def load(config=None):
    """A Config from a Config (returned as is), a dict of config keys, a path to a YAML file (str
    or os.PathLike) or None (the bundled default). Anything else, or a str that names no file
    but looks like YAML text, is a ConfigError saying what to do instead."""
    from . import config as cfgmod

    if isinstance(config, cfgmod.Config):
        return config
    if isinstance(config, Mapping):
        return cfgmod.validate(dict(config), "<dict>")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"expected a Config, a dict, a path to a YAML file or None, got {type(config).__name__}")
    if isinstance(config, str) and ("\n" in config or ":" in config) and not os.path.lexists(config):
        raise ConfigError(f"no such config file {config[:60]!r}; to pass YAML text, "
                          "use unetc.config.parse(text) (or a dict of keys)")
    return cfgmod.load(config)


def check(config=None):
    """Analyse a config (Config, dict, path or None; see :func:`load`) -> Report."""
    from .checker import check as _check

    return _check(load(config))


def emit(config, target, out_dir="generated", **kw):
    """Emit code for a config (Config, dict, path or None; see :func:`load`); returns the written paths."""
    from .emitter import emit as _emit

    return _emit(load(config), target, out_dir, **kw)
