"""Winograd convolution for the C target: where a stride-1 3x3 convolution (or input gradient)
runs as Winograd F(2x2, 3x3) instead of direct convolution, and the kernel calls that compute it
(``WINO2`` in templates/c_winograd.j2).

Rule (:func:`use_winograd`): k == 3 and at least WINO_MIN_C input and output channels, and at
least WINO_MIN_PIXELS output pixels (checked at run time for symbolic sizes). Measured numbers:
see the module constants. Every Winograd layer also carries the direct convolution, taken when
the size rule fails at run time or when the C is compiled with -DUNETC_NO_WINOGRAD (both paths
always compile); ``ENABLED = False`` emits direct convolution only.
"""
from __future__ import annotations

ENABLED = True  # False: never emit Winograd (tests compare both paths)
TB = 32  # tiles (2 x 2 outputs) per block: the GEMM image width (a multiple of 2 vectors everywhere)
SLOTS = 8  # scratch blocks: at most this many threads run one layer's blocks
WINO_MIN_C = 16  # input and output channels from which Winograd runs ...
WINO_MIN_PIXELS = 1024  # ... and output pixels

_direct = False  # set while c_steps lays out the direct steps of a Winograd layer


def use_winograd(c: int, o: int, out_hw, k: int):
    """True / False, or a SymPy condition on the sizes (decided at run time)."""
    if not ENABLED or _direct or k != 3 or min(c, o) < WINO_MIN_C:
        return False
    ho, wo = out_hw
    return ho * wo >= WINO_MIN_PIXELS


def conv_steps(alloc, src: str, c: int, o: int, in_hw, out_hw, k: int, q: int, wp: str,
               bias: str, relu: bool) -> list[str] | None:
    """Kernel steps (C text) of out (o, out_hw) = bias + stride-1 correlation of src (c, in_hw)
    zero-padded by q with the packed weights wp (then relu), or None for direct convolution."""
    global _direct
    from . import c_steps
    from .c_sizes import cond

    use = cond(use_winograd(c, o, out_hw, k))
    if use is False:
        return None
    (h, w), (ho, wo) = in_hw, out_hw
    u = alloc(16 * -(-o // c_steps.MR) * c_steps.MR * c)
    vm = alloc(SLOTS * 16 * (c + o) * TB)
    wino = f"WINO2({c_steps.args(c, o, h, w, q, ho, wo, TB)}, {src}, {wp}, {bias}, {int(relu)}, {u}, {vm}, {SLOTS}, out)"
    _direct = True
    try:
        direct = c_steps._conv_s1(alloc, src, c, o, in_hw, out_hw, k, q, wp, bias, relu)
    finally:
        _direct = False
    test = "WINO_ON" if use is True else f"WINO_ON && {use}"
    body = " ".join(f"{s};" for s in direct)
    return [f"if ({test}) {{ {wino}; }} else {{ {body} }}"]
