"""The table of ONNX ops the engine computes in torch, keyed by op type.

An op implementation receives the node's parsed attributes and its inputs as :class:`Inputs`
(``inputs[i]`` a required tensor, ``inputs.optional(i)`` one that may be omitted) and returns
the node's outputs in order. Integer tensors (shapes, axes, indices) arrive as torch integer
tensors; implementations call ``.tolist()`` where they need Python values. Implementations must
be differentiable in their float inputs (AdaRound and QAT back-propagate through them) and must
not mutate their inputs.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from torch import Tensor

from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.attributes import parse_attributes

__all__ = ["OP_REGISTRY", "NodeContext", "parse_attributes", "register", "tensor_outputs"]


@dataclass(frozen=True)
class NodeContext:
    """What an op implementation may know about its node."""

    op_type: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    num_outputs: int = 1

    def unsupported(self, reason: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.op_type, self.name, reason)


# A value in a graph: a tensor, a sequence of tensors or an empty optional (also an omitted input).
# (What torch cannot hold, strings or float8, stays a numpy array; only the reference fallback and
# the pass-through ``any_value`` kernels ever see one.)
Value = Tensor | list[Tensor] | None


class Inputs(Sequence[Tensor]):
    """A node's inputs as its kernel reads them: ``inputs[i]`` is a required tensor input and
    refuses the node (UnsupportedOpError) when it was omitted; ``optional(i)`` is ``None`` for an
    optional input named '' or left off the end of the node. Sequence-valued inputs (the
    ``any_value`` ops) are read with :meth:`sequence` and :meth:`value`."""

    __slots__ = ("_ctx", "_values")

    def __init__(self, ctx: NodeContext, values: Sequence[Value]) -> None:
        self._ctx = ctx
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[Tensor]: ...

    def __getitem__(self, index: int | slice) -> Tensor | list[Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._values)))]
        tensor = self.optional(index)
        if tensor is None:
            raise self._ctx.unsupported(f"required input {index} is missing")
        return tensor

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self._values)))

    def optional(self, index: int) -> Tensor | None:
        value = self.value(index)
        if isinstance(value, list):
            raise self._ctx.unsupported(f"input {index} is a sequence, not a tensor")
        return value

    def sequence(self, index: int) -> list[Tensor]:
        value = self.value(index)
        if not isinstance(value, list):
            raise self._ctx.unsupported(f"input {index} is not a sequence")
        return value

    def value(self, index: int) -> Value:
        """The input whatever it holds; ``None`` when omitted."""
        return self._values[index] if index < len(self._values) else None

    def present(self) -> list[Tensor]:
        """The tensor inputs that were given, in order (variadic ops skip omitted ones)."""
        return [t for t in (self.optional(i) for i in range(len(self._values))) if t is not None]


# What a torch implementation is written as (see ``register``) ...
Kernel = Callable[[NodeContext, Inputs], Sequence[Value]]
# ... and what ``OP_REGISTRY`` holds: called with the node's values as they come (``None`` for
# an omitted input), e.g. ``OP_REGISTRY["Relu"](ctx, [x])``.
OpFn = Callable[[NodeContext, Sequence[Value]], Sequence[Value]]
OP_REGISTRY: dict[str, OpFn] = {}
# Ops whose kernels also take sequences (lists) and empty optionals (None), not only tensors.
ANY_VALUE_OPS: set[str] = set()


def _entry(kernel: Kernel) -> OpFn:
    def run(ctx: NodeContext, values: Sequence[Value]) -> Sequence[Value]:
        return kernel(ctx, values if isinstance(values, Inputs) else Inputs(ctx, values))

    return run


def register(*op_types: str, any_value: bool = False) -> Callable[[Kernel], Kernel]:
    def decorate(kernel: Kernel) -> Kernel:
        for op_type in op_types:
            OP_REGISTRY[op_type] = _entry(kernel)
            if any_value:
                ANY_VALUE_OPS.add(op_type)
        return kernel

    return decorate


def tensor_outputs(ctx: NodeContext, values: Sequence[Value]) -> list[Tensor]:
    """The op's outputs where the caller handles tensors only (constant folding, AdaRound's
    layer replays): an op that produced a sequence or an empty optional is refused."""
    outputs = OP_REGISTRY[ctx.op_type](ctx, values)
    tensors = [o for o in outputs if isinstance(o, Tensor)]
    if len(tensors) != len(outputs):
        raise ctx.unsupported("an output that is not a tensor")
    return tensors
