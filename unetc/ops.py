"""Every op kind of the IR, forward and backward, listed in one place (:data:`OPS`).

An op names its input and output tensors, carries its static attributes, computes its output
shape from its input shapes (:meth:`Op.infer`) and checks itself (:meth:`Op.verify`). Shapes are
tuples (C, H, W) of SymPy expressions (or 4-tuples for weights, 1-tuples for biases).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp

from . import sizes
from .errors import ShapeError

Shape = tuple  # tuple of SymPy expressions


@dataclass(frozen=True)
class Requirement:
    """A definedness condition ``expr >= bound`` on one axis size, owned by a layer."""

    layer: str
    expr: Any
    bound: int
    what: str  # e.g. "padded input H + 2*1 >= window 3"

    def message(self, value=None) -> str:
        got = f" (got {value})" if value is not None else ""
        return (f"{self.layer}: {self.what} fails{got}; PyTorch raises here, "
                f"the Lean spec would silently give size 0")


def _eq(a, b) -> bool | None:
    """True/False when SymPy decides a == b, None when it cannot."""
    d = sp.simplify(sp.sympify(a) - sp.sympify(b))
    if d == 0:
        return True
    return False if d.is_number else None


@dataclass(frozen=True)
class Op:
    """Base op: ``name`` (layer name), ``inputs`` and ``output`` (tensor names)."""

    kind: ClassVar[str] = "op"
    name: str
    inputs: tuple[str, ...]
    output: str

    def params(self) -> dict[str, Shape]:
        """Parameters owned by this op, name -> shape (PyTorch state_dict names)."""
        return {}

    def infer(self, shapes: list[Shape]) -> Shape:
        """Output shape from input shapes."""
        raise NotImplementedError

    def requirements(self, shapes: list[Shape]) -> list[Requirement]:
        """Conditions on the input sizes under which this op is defined."""
        return []

    def verify(self, shapes: list[Shape], out: Shape) -> None:
        """Raise ShapeError showing both sides when ``out`` is not what the inputs imply."""
        want = self.infer(shapes)
        if len(want) != len(out) or any(_eq(a, b) is False for a, b in zip(want, out)):
            raise ShapeError(f"{self.name}: output shape {tuple(out)} != {tuple(want)} "
                             f"implied by inputs {[tuple(s) for s in shapes]}")
        for req in self.requirements(shapes):
            if req.expr.is_number and req.expr < req.bound:
                raise ShapeError(req.message(req.expr))

    def describe(self) -> str:
        """Short text for the layer table, e.g. 'conv2d 3x3 s1 p1'."""
        return self.kind


def _channels(op: Op, shape: Shape, want: int) -> None:
    if shape[0] != want:
        raise ShapeError(f"{op.name}: expects {want} input channels, got {shape[0]} from {op.inputs[0]}")


@dataclass(frozen=True)
class _Conv(Op):
    """Shared by Conv2d and ConvTranspose2d: channels, square kernel k, stride s, padding p."""

    cin: int = 1
    cout: int = 1
    k: int = 1
    s: int = 1
    p: int = 0
    weight_layout: ClassVar[str] = "out,in"  # PyTorch's weight layout of the layer

    def params(self):
        first, second = (self.cout, self.cin) if self.weight_layout == "out,in" else (self.cin, self.cout)
        return {f"{self.name}.weight": (first, second, self.k, self.k), f"{self.name}.bias": (self.cout,)}

    def size(self, n):
        """Output size along one axis."""
        raise NotImplementedError

    def infer(self, shapes):
        c, h, w = shapes[0]
        _channels(self, shapes[0], self.cin)
        return (self.cout, self.size(h), self.size(w))

    def describe(self):
        return f"{self.kind} {self.k}x{self.k} s{self.s} p{self.p}"


class Conv2d(_Conv):
    """Cross-correlation with zero padding; weight (cout, cin, k, k), bias (cout)."""

    kind: ClassVar[str] = "conv2d"

    def size(self, n):
        return sizes.out(n, self.k, self.s, self.p)

    def requirements(self, shapes):
        _, h, w = shapes[0]
        return [Requirement(self.name, n + 2 * self.p, self.k,
                            f"window {self.k} <= padded input {n} + 2*{self.p}")
                for n in (h, w)]


class ConvTranspose2d(_Conv):
    """Transposed convolution (padding crops); weight (cin, cout, k, k), bias (cout)."""

    kind: ClassVar[str] = "conv_transpose2d"
    weight_layout: ClassVar[str] = "in,out"

    def size(self, n):
        return sizes.out_t(n, self.k, self.s, self.p)

    def requirements(self, shapes):
        _, h, w = shapes[0]
        return [Requirement(self.name, sizes.out_t(n, self.k, self.s, self.p), 1,
                            f"output size ({n} - 1)*{self.s} + {self.k} - 2*{self.p} >= 1")
                for n in (h, w)]


@dataclass(frozen=True)
class MaxPool2d(Op):
    """Max pooling, no padding."""

    kind: ClassVar[str] = "maxpool2d"
    k: int = 1
    s: int = 1

    def infer(self, shapes):
        c, h, w = shapes[0]
        return (c, sizes.out(h, self.k, self.s, 0), sizes.out(w, self.k, self.s, 0))

    def requirements(self, shapes):
        _, h, w = shapes[0]
        return [Requirement(self.name, n, self.k, f"window {self.k} <= input {n}")
                for n in (h, w)]

    def describe(self):
        return f"{self.kind} {self.k}x{self.k} s{self.s}"


@dataclass(frozen=True)
class Relu(Op):
    """Elementwise max(z, 0)."""

    kind: ClassVar[str] = "relu"

    def infer(self, shapes):
        return tuple(shapes[0])


@dataclass(frozen=True)
class Concat(Op):
    """Concatenation on the channel axis; spatial sizes must agree."""

    kind: ClassVar[str] = "concat"

    def infer(self, shapes):
        (ca, ha, wa), (cb, hb, wb) = shapes
        for ax, a, b in (("H", ha, hb), ("W", wa, wb)):
            if _eq(a, b) is False:
                raise ShapeError(f"{self.name}: {self.inputs[0]} has {ax} = {a} but "
                                 f"{self.inputs[1]} has {ax} = {b}")
        return (ca + cb, ha, wa)


# ---- backward op kinds (each computes one gradient tensor) ----

@dataclass(frozen=True)
class ReluGrad(Op):
    """dz = dy * [z > 0], read as [relu(z) > 0] (the same set); inputs (relu(z), dy)."""

    kind: ClassVar[str] = "relu_grad"

    def infer(self, shapes):
        return tuple(shapes[1])


@dataclass(frozen=True)
class _InputGrad(Op):
    """Gradient of a layer's input; inputs (dy,), reads the weight of layer ``fwd.name``."""

    fwd: Op = None  # type: ignore[assignment]
    in_shape: Shape = ()

    def infer(self, shapes):
        return tuple(self.in_shape)


@dataclass(frozen=True)
class _WeightGrad(Op):
    """Gradient of a layer's weight; inputs (x, dy)."""

    fwd: Op = None  # type: ignore[assignment]

    def infer(self, shapes):
        return self.fwd.params()[f"{self.fwd.name}.weight"]


class Conv2dGradInput(_InputGrad):
    """dx of a Conv2d: full transposed correlation of dy with the weight."""

    kind: ClassVar[str] = "conv2d_grad_input"


class Conv2dGradWeight(_WeightGrad):
    """dW of a Conv2d: correlation of the padded input with dy."""

    kind: ClassVar[str] = "conv2d_grad_weight"


class ConvTranspose2dGradInput(_InputGrad):
    """dx of a ConvTranspose2d: strided correlation of dy with the weight."""

    kind: ClassVar[str] = "conv_transpose2d_grad_input"


class ConvTranspose2dGradWeight(_WeightGrad):
    """dW of a ConvTranspose2d: correlation of x with the (padded) dy."""

    kind: ClassVar[str] = "conv_transpose2d_grad_weight"


@dataclass(frozen=True)
class BiasGrad(Op):
    """db = sum of dy over space; inputs (dy,)."""

    kind: ClassVar[str] = "bias_grad"

    def infer(self, shapes):
        return (shapes[0][0],)


@dataclass(frozen=True)
class MaxPool2dGrad(Op):
    """Routes each window's dy to one position of x; inputs (x, dy). ``mode``: pytorch | spec."""

    kind: ClassVar[str] = "maxpool2d_grad"
    fwd: MaxPool2d = None  # type: ignore[assignment]
    mode: str = "pytorch"

    def infer(self, shapes):
        return tuple(shapes[0])


@dataclass(frozen=True)
class Slice(Op):
    """Channels [lo, hi) of the input (the concat split); inputs (d,)."""

    kind: ClassVar[str] = "slice"
    lo: int = 0
    hi: int = 0

    def infer(self, shapes):
        return (self.hi - self.lo,) + tuple(shapes[0][1:])


@dataclass(frozen=True)
class Add(Op):
    """Elementwise sum of two gradients of the same shape; inputs (a, b)."""

    kind: ClassVar[str] = "add"

    def infer(self, shapes):
        if any(_eq(a, b) is False for a, b in zip(shapes[0], shapes[1])):
            raise ShapeError(f"{self.name}: cannot add shapes {shapes[0]} and {shapes[1]}")
        return tuple(shapes[0])


FORWARD_OPS = (Conv2d, ConvTranspose2d, MaxPool2d, Relu, Concat)
BACKWARD_OPS = (ReluGrad, Conv2dGradInput, Conv2dGradWeight, ConvTranspose2dGradInput,
                ConvTranspose2dGradWeight, BiasGrad, MaxPool2dGrad, Slice, Add)
OPS: dict[str, type[Op]] = {cls.kind: cls for cls in FORWARD_OPS + BACKWARD_OPS}
