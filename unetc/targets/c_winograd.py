"""Winograd convolution for the C target: where a stride-1 3x3 convolution (or input gradient)
runs as Winograd instead of direct convolution, and the kernel calls that compute it."""
from __future__ import annotations


def conv_steps(alloc, src: str, c: int, o: int, in_hw, out_hw, k: int, q: int, wp: str,
               bias: str, relu: bool) -> list[str] | None:
    """Kernel steps (C text) of out (o, out_hw) = bias + stride-1 correlation of src (c, in_hw)
    zero-padded by q with the packed weights wp (then relu), or None for direct convolution."""
    return None
