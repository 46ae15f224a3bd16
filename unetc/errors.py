"""The one exception hierarchy of unetc; only the CLI turns these into messages and exit codes."""


class UnetcError(Exception):
    """Base of every error unetc raises on purpose. ``str(err)`` is a one-line message."""

    exit_code = 2


class ConfigError(UnetcError, ValueError):
    """A config file or value is invalid (missing file, broken YAML, bad key or value). Also a
    ValueError, so API callers catching the standard exception for a bad value catch it too."""


class UsageError(UnetcError, ValueError):
    """The command line or API call is malformed (e.g. a bad ``--size``)."""


class ShapeError(UnetcError):
    """A layer's geometry is undefined or a shape equation fails for the given sizes."""

    exit_code = 1


class EmitError(UnetcError):
    """Code generation cannot proceed (symbolic sizes, violated hypotheses, I/O failure)."""
