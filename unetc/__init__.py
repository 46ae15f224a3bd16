"""unetc: symbolic shape checking and NumPy/C code generation for a 2-level U-Net (SPEC.md).

Stages, one module each: ``config`` (YAML -> Config), ``graph`` (Config -> Graph with SymPy
shapes), ``checker`` (Graph -> Report), ``backward`` (Graph -> backward Graph), ``specialize``
(concrete sizes) and ``emitter`` (-> files). Errors derive from :class:`unetc.errors.UnetcError`.
"""
from .errors import ConfigError, EmitError, ShapeError, UnetcError, UsageError

__version__ = "0.1.0"
__all__ = ["ConfigError", "EmitError", "ShapeError", "UnetcError", "UsageError", "check", "emit", "load"]


def load(path=None):
    """Read a YAML config (None -> the bundled default). See :func:`unetc.config.load`."""
    from .config import load as _load

    return _load(path)


def check(config):
    """Analyse a Config (or a path to one) -> Report. See :func:`unetc.check.check`."""
    from .checker import check as _check

    return _check(load(config) if not hasattr(config, "in_h") else config)


def emit(config, target, out_dir="generated", **kw):
    """Emit code for a Config (or a path to one); returns the written paths."""
    from .emitter import emit as _emit

    return _emit(load(config) if not hasattr(config, "in_h") else config, target, out_dir, **kw)
