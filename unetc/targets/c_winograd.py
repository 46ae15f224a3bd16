"""Winograd convolution for the C target: where a stride-1 3x3 convolution (or input gradient)
runs as Winograd F(2x2, 3x3) or F(4x4, 3x3) instead of direct convolution, and the kernel calls
that compute it (``WINO2`` / ``WINO4`` in templates/c_winograd.j2; weight gradients:
``WINO2_WGRAD``, F(2x2) only).

Rule (:func:`use_winograd`): k == 3, min(C, O) >= WINO_MIN_C[dtype] (16 float32, 32 float64) and
at least WINO_MIN_PIXELS = 1024 output pixels (checked at run time for symbolic sizes). Measured
with /tmp/wino/bench.py (one layer, padding 1, C = O, 1 thread, min over 3 interleaved rounds on
the shared 2-core Zen 3; ms direct / Winograd): float32 C=64 128x128 31.4/11.1, 64x64 6.95/2.55,
32x32 1.62/0.90, 16x16 0.53/0.87; C=32 128x128 6.37/3.75, 32x32 0.47/0.41, 16x16 0.20/0.28;
C=16 128x128 1.48/0.94, 64x64 0.64/0.54, 32x32 0.21/0.21, 16x16 0.05/0.40; C=8 64x64 0.14/0.15;
C=128 16x16 2.03/2.98. float64: C=64 128x128 65.1/24.3, C=32 64x64 4.02/2.20, 32x32 0.96/0.65;
C=16 128x128 2.28/3.66, 64x64 0.52/0.60; C=8 64x64 0.13/0.20. Below 1024 pixels the per-call
weight transform (16 C O) and the block overheads outweigh the 2.25x fewer multiplies.

F(4x4, 3x3) (:func:`tile`) takes 2.25 instead of 4 multiplies per output and reads 36 / 16 instead
of 16 / 4 transformed values per output pixel, but its blocks of TB tiles cover 4x the pixels
(a half-empty block at 16x16) and its points (0, +-1, +-2) round more: max relative error
against PyTorch float64 on base_c 32 at 66x70 (forward, 16 gradients, grad_x), float32 F(2x2)
1.3e-6, F(4x4) 4.5e-6; float64 4.2e-15 and 1.0e-14. Measured like the rule above (ms direct /
F(2x2) / F(4x4), 1 thread): float32 C=64 128x128 21.6/12.1/8.6, 64x64 4.33/2.50/2.16, 32x32
1.08/0.84/0.93; C=32 256x256 26.0/20.6/17.1, 64x64 1.28/1.08/0.87, 32x32 0.32/0.32/0.33; C=16
128x128 1.28/1.29/1.00, 64x64 0.30/0.27/0.27; C=128 32x32 3.81/2.29/2.05, 16x16 1.06/0.94/1.84.
float64 C=64 32x32 1.86/1.24/1.00, C=32 32x32 0.47/0.43/0.37, C=128 16x16 1.83/1.46/3.32. At 2
threads the same order (float32 C=32 128x128 2.58/2.51/1.62, C=64 32x32 0.56/0.48/0.50).

Every Winograd layer also carries the direct convolution, taken when the pixel rule fails at
run time, when the C is compiled with -DUNETC_NO_WINOGRAD (both paths always compile), and after
a Winograd call whose result holds an Inf or NaN (before relu): a tile mixes its whole input
into each of its outputs, so one NaN in a layer's input would turn a whole tile (4 x 4 outputs,
6 x 6 windows) into NaN where PyTorch and direct convolution give NaN only to the outputs whose
3x3 window holds it. The check costs one compare per output in the output transform (and a
scan of the 9 C O weight-gradient entries); finite data never pays the direct rerun.
``ENABLED = False`` emits direct convolution only.
"""
from __future__ import annotations

import sympy

from .c_sizes import cx, is_const, rup

BAD = "wino_bad"  # the int a Winograd call sets to 1 on a non-finite result (the layer then runs direct)
ENABLED = True  # False: never emit Winograd (tests compare both paths)
TBS = 256  # output tiles per super-block of the weight gradient (WINO2_WGRAD: 16 (C + O) TBS
# transformed elements, shared by the threads; 128 measured the same at base_c 64, 128x128), or an
# eighth of the layer's tiles (a power of 2, at least 32) when fewer: then the transforms take
# half the scratch of x and dy themselves (base_c 64, 32x32 up1_1: 1.3 instead of 3.5 MB)
TB = 32  # tiles (M x M outputs) per block: the GEMM image width (a multiple of 2 vectors everywhere);
# also the weight gradient's transform task (a run of TB tiles) and its smallest super-block
WGRAD_STACK = 2 * 2 * TB * 4 * 64  # stack bytes of wino2_dy: two rows of a TB-tile run x a panel of
# at most 4 vectors of 64 bytes
SLOTS = 8  # scratch blocks: at most this many threads run one layer's blocks; a layer of few
# blocks gets one slot per 8 blocks (at least 2): base_c 64 at 32x32 (F(2x2): 8 blocks) then
# takes 0.8 instead of 3.1 MB of slots, 128x128 (F(4x4): 32 blocks) 4 slots; 2 threads still have
# a slot each
WINO_MIN_C = {4: 16, 8: 32}  # input and output channels (per element size) from which Winograd runs ...
WINO_MIN_PIXELS = 1024  # ... and output pixels, ...
WINO_FEW_PIXELS = {4: 4096, 8: 1024}  # ... or these many when min(C, O) < twice WINO_MIN_C: a
# float32 16-channel layer at 64x64 loses as F(2x2) at 2 threads (the direct kernel scales better;
# base_c 16 f+b 3.9 vs 3.1 ms) and is even as F(4x4) (0.130 vs 0.137 ms direct, 2 threads)


def use_winograd(c: int, o: int, out_hw, k: int, esize: int = 4):
    """True / False, or a SymPy condition on the sizes (decided at run time), for c input and o
    output channels, out_hw output sizes, a k x k kernel, elements of esize bytes."""
    if not ENABLED or k != 3 or min(c, o) < WINO_MIN_C[esize]:
        return False
    ho, wo = out_hw
    few = min(c, o) < 2 * WINO_MIN_C[esize]
    return ho * wo >= (max(WINO_MIN_PIXELS, WINO_FEW_PIXELS[esize]) if few else WINO_MIN_PIXELS)


F4 = True  # False: F(2x2, 3x3) everywhere (tests compare both; 16-channel float32 layers still run
# Winograd from WINO_FEW_PIXELS, which was measured with F(4x4))
F4_MIN_PIXELS = {4: 4096, 8: 1024}  # output pixels from which F(4x4, 3x3) replaces F(2x2, 3x3)

WGRAD_MIN_C = {4: 32, 8: 32}  # channels from which the weight gradient runs as Winograd (with
# WINO_MIN_PIXELS): below, its transforms (16 (C + O) values per tile) outweigh the GEMM it saves.
# Measured per layer (perf, min of 2 rounds, 1 thread, shared Zen 3; ms direct / Winograd):
# float32 C=128 O=64 128x128 35.5/17.8, 64->64 128x128 19.8/9.8, 32->32 128x128 4.5/3.5, 64->64
# 64x64 4.8/2.0, 32->64 64x64 2.3/1.5; 16->16 128x128 1.0/1.5, 48->16 128x128 1.7/2.5. float64
# 64->64 64x64 11.2/5.8; 16->16 64x64 0.5/0.7, 32->32 32x32 0.5/0.5.


def use_winograd_wgrad(c: int, o: int, out_hw, k: int, esize: int = 4):
    """As :func:`use_winograd`, for the weight gradient of a conv with c input and o output
    channels whose output (dy) has out_hw sizes."""
    if not ENABLED or k != 3 or min(c, o) < WGRAD_MIN_C[esize]:
        return False
    ho, wo = out_hw
    return ho * wo >= WINO_MIN_PIXELS


def tile(out_hw, esize: int = 4):
    """The output tile side M of the Winograd F(M x M, 3x3) that runs a layer (where
    :func:`use_winograd` holds) with output sizes out_hw: 4 from F4_MIN_PIXELS[esize] output
    pixels, else 2; for symbolic sizes the SymPy condition for 4 (decided at run time)."""
    if not F4:
        return 2
    pixels = _tiles(out_hw, 1)
    if pixels is None:
        return sympy.Ge(out_hw[0] * out_hw[1], F4_MIN_PIXELS[esize])
    return 4 if pixels >= F4_MIN_PIXELS[esize] else 2


def stack(m: int, esize: int) -> int:
    """Stack bytes of WINO2 (m = 2) / WINO4 (m = 4)'s transforms: the padded input rows and their
    row transforms of a run (wino{m}_input), the larger of it and the output rows (wino{m}_output)."""
    return esize * max(2 * (m + 2) * (m * TB + 2), m * m * TB)


def _tiles(out_hw, m: int = 2) -> int | None:
    """Output tiles (m x m outputs each) of output sizes out_hw; None for symbolic sizes."""
    ho, wo = out_hw
    if not (is_const(ho) and is_const(wo)):
        return None
    return -(-int(ho) // m) * -(-int(wo) // m)


def slots(out_hw, m: int = 2) -> int:
    """Thread slots of WINO2 / WINO4 (tile side m) for output sizes out_hw (ints, or symbolic: SLOTS)."""
    tiles = _tiles(out_hw, m)
    if tiles is None:
        return SLOTS
    blocks = -(-tiles // TB)
    return min(blocks, max(2, min(SLOTS, blocks // 8)))


def scratch(c: int, o: int, out_hw, mr: int, m: int = 2) -> tuple[int, int]:
    """Scratch elements WINO2 (m = 2) / WINO4 (m = 4) needs for c input and o output channels,
    output sizes out_hw, output channels packed in blocks of mr: the transformed weights U, then
    the thread slots VM."""
    nx = (m + 2) ** 2
    return nx * -(-o // mr) * mr * c, slots(out_hw, m) * nx * (c + o) * TB


def call(c: int, o: int, in_hw, out_hw, q: int, src: str, wp: str, bias: str, relu: bool, u: str,
         vm: str, m: int = 2) -> str:
    """C text of out (o, out_hw) = bias + stride-1 3x3 correlation of src (c, in_hw) zero-padded by
    q with the packed weights wp (then relu) by WINO2 (m = 2) or WINO4 (m = 4), its scratch at u
    and vm (:func:`scratch`)."""
    (h, w), (ho, wo) = in_hw, out_hw
    sizes = ", ".join(cx(v) for v in (c, o, h, w, q, ho, wo, TB))
    return f"WINO{m}({sizes}, {src}, {wp}, {bias}, {int(relu)}, {u}, {vm}, {slots(out_hw, m)}, out, {BAD})"


def wgrad_tbs(out_hw) -> int:
    """Tiles per super-block of WINO2_WGRAD for dy sizes out_hw (ints, or symbolic: TBS)."""
    tiles = _tiles(out_hw)
    if tiles is None:
        return TBS
    return max(TB, min(TBS, 1 << max(tiles // 8, 1).bit_length() - 1))


def wgrad_scratch(c: int, o: int, out_hw, esize: int, vmax: int) -> tuple[int, int, int]:
    """Scratch elements WINO2_WGRAD needs for c input and o output channels of esize bytes, dy
    sizes out_hw, vectors of at most vmax bytes: the input transforms VB, the dy transforms ZB,
    the sums DU."""
    o_pad, tbs = rup(o * esize, vmax) // esize, wgrad_tbs(out_hw)
    return 16 * c * tbs, 16 * tbs * o_pad, 16 * c * o_pad


def wgrad_call(c: int, o: int, in_hw, out_hw, q: int, x: str, dy: str, vb: str, zb: str, du: str) -> str:
    """C text of out (o, c, 3, 3) = stride-1 correlation of x (c, in_hw) zero-padded by q with dy
    (o, out_hw) by WINO2_WGRAD, its scratch at vb, zb, du (:func:`wgrad_scratch`)."""
    (h, w), (ho, wo) = in_hw, out_hw
    sizes = ", ".join(cx(v) for v in (c, o, h, w, q, ho, wo, wgrad_tbs(out_hw), TB))
    return f"WINO2_WGRAD({sizes}, {x}, {dy}, {vb}, {zb}, {du}, out, {BAD})"
