"""Weights baked into C: a trained parameter set (``.npz`` with PARAM_SHAPES keys, or a PyTorch
``state_dict`` saved by ``torch.save``) -> ``<name>_weights.c`` defining ``const <name>_params
<name>_weights``, every value a bit-exact C99 hexadecimal floating literal. A device build then
needs no Python and no file I/O for its parameters."""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import EmitError
from ..render import banner, render, safe_comment_text
from ..specialize import Specialized, var

PER_LINE = 4


def _shown(path: Path) -> str:
    return safe_comment_text(str(path))


def _read_npz(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise EmitError(f"--weights {_shown(path)}: not a readable .npz file ({err})") from None


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise EmitError(f"--weights {_shown(path)}: reading a PyTorch state_dict needs torch; "
                        f"or save the weights as .npz (numpy.savez)") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file: one line each
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EmitError(f"--weights {_shown(path)}: not a readable PyTorch file ({first})") from None
    if not isinstance(sd, dict):
        raise EmitError(f"--weights {_shown(path)}: expected a state_dict (a dict of tensors), "
                        f"got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise EmitError(f"--weights {_shown(path)}: {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach().cpu().numpy()
    return out


def load_weights(path: str | Path, sp: Specialized) -> dict:
    """Read and check a weights file against sp's PARAM_SHAPES and dtype; -> name -> array.
    EmitError (one line) for a missing/unreadable file, missing or extra keys, a wrong shape or
    dtype, or a non-finite value."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise EmitError(f"--weights {_shown(path)}: no such file")
    raw = _read_npz(path) if path.suffix == ".npz" else _read_torch(path)
    missing = [k for k in sp.params if k not in raw]
    extra = [k for k in raw if k not in sp.params]
    if missing or extra:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
        raise EmitError(f"--weights {_shown(path)}: {what} (expected the PARAM_SHAPES keys of {sp.config.name})")
    out = {}
    for k, shape in sp.params.items():
        a = raw[k]
        if tuple(a.shape) != tuple(shape):
            raise EmitError(f"--weights {_shown(path)}: {k}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
        if a.dtype != np.dtype(sp.config.dtype):
            raise EmitError(f"--weights {_shown(path)}: {k}: expected dtype {sp.config.dtype}, got {a.dtype} "
                            f"(convert the weights, or set dtype: {a.dtype} in the config)")
        if not np.isfinite(a).all():
            raise EmitError(f"--weights {_shown(path)}: {k}: holds NaN or Inf values")
        out[k] = np.ascontiguousarray(a)
    return out


def hex_literal(value: float, single: bool) -> str:
    """A finite float as a bit-exact C99 hexadecimal literal (``f`` suffix for float)."""
    text = float(value).hex()
    mant, exp = text.split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}{'f' if single else ''}"


def _rows(a, single: bool) -> list[str]:
    vals = [hex_literal(v, single) for v in a.reshape(-1).tolist()]
    return [", ".join(vals[i:i + PER_LINE]) for i in range(0, len(vals), PER_LINE)]


def _size_text(expr, sp: Specialized) -> str:
    """A size of the output as C text: a literal, or printed by SymPy in the C variables h, w."""
    import sympy

    from ..sympy_print import ccode

    if isinstance(expr, int) or getattr(expr, "is_Integer", False):
        return str(int(expr))
    names = {sym: sympy.Symbol("h" if axis == "in_h" else "w") for axis, sym in sp.symbols.items()}
    return f"(long)({ccode(expr.xreplace(names))})"


def infer_file(sp: Specialized) -> tuple[str, str]:
    """(file name, C text) of ``<name>_infer.c``: reads x from .npy, runs the baked weights, writes y."""
    cfg = sp.config
    single = cfg.dtype == "float32"
    (ci, hi, wi), (co, ho, wo) = sp.in_shape, sp.out_shape
    text = render("c_infer.c.j2", banner_c=banner(cfg, "//"), name=cfg.name, NAME=cfg.name.upper(),
                  T="float" if single else "double", descr="<f4" if single else "<f8", poly=sp.symbolic,
                  in_c=ci, in_h=hi if not sp.symbolic else "H", in_w=wi if not sp.symbolic else "W",
                  out_c=co, out_h=_size_text(ho, sp), out_w=_size_text(wo, sp))
    return f"{cfg.name}_infer.c", text


def weights_file(sp: Specialized, weights: dict) -> tuple[str, str]:
    """(file name, C text) of ``<name>_weights.c`` for checked weights (see :func:`load_weights`)."""
    cfg = sp.config
    single = cfg.dtype == "float32"
    arrays = [(var(k), k, tuple(shape), _rows(weights[k], single)) for k, shape in sp.params.items()]
    text = render("c_weights.c.j2", banner_c=banner(cfg, "//"), name=cfg.name,
                  T="float" if single else "double", arrays=arrays)
    return f"{cfg.name}_weights.c", text
