"""The executor's face for passes that never run the graph in torch.

A post-training pipeline reads only names, nodes and weights of the executor: its calibration,
evaluation and analysis run in ONNX Runtime. ``LazyExecutor`` answers those from the ONNX graph
with numpy weights, so such a job never imports torch (about a second of start-up, and a few
hundred MiB). The first use of anything else (``run``, ``to``, the compiled program...) builds
the torch :class:`~qaas_engine.graph.executor.GraphExecutor`; from then on every attribute,
``weights`` included, is that executor's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qaas_engine.tensors import to_numpy

if TYPE_CHECKING:
    from typing import TypeAlias

    from qaas_engine.graph.executor import GraphExecutor

    # what holds a pipeline's graph: built in torch, or not (yet)
    Executor: TypeAlias = GraphExecutor | "LazyExecutor"


class InitializerArrays(Mapping[str, np.ndarray]):
    """The graph's initializers as numpy arrays, each made when read and not kept: a model's
    weights are not held twice (as protobuf and as arrays) by passes that read each once."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._tensors = {init.name: init for init in graph.initializer}
        # weights a pass changed without building torch (``set_weight``): the graph stays the
        # float model's, which other passes read as the reference
        self.changed: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.changed:
            return self.changed[name]
        return numpy_helper.to_array(self._tensors[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype from the initializer's header: sizes and shapes of a 100 M-parameter
        model are known without decoding (and, in glibc, keeping) its weights."""
        tensor = self._tensors[name]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        return tuple(int(d) for d in tensor.dims), dtype


@dataclass(frozen=True)
class NodeName:
    """What callers read of a compiled node: its name (as the executor names it) and outputs."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]


class LazyExecutor:
    """Names, nodes and numpy weights of ``model``; a torch executor on first need."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self._weights = InitializerArrays(graph)
        self.input_names = [i.name for i in graph.input if i.name not in self._weights]
        self.output_names = [o.name for o in graph.output]
        self._nodes = [
            NodeName(
                node.name or f"{node.op_type}_{index}",
                node.op_type,
                list(node.input),
                list(node.output),
            )
            for index, node in enumerate(graph.node)
        ]
        self._built: GraphExecutor | None = None

    @property
    def nodes(self) -> list[Any]:
        """The compiled nodes once built; until then their names, op types and tensors."""
        return self._built.nodes if self._built is not None else self._nodes

    @property
    def built(self) -> bool:
        return self._built is not None

    @property
    def weights(self) -> Any:
        """numpy arrays (read from the graph on access) until the torch executor exists, its
        tensors after."""
        return self._built.weights if self._built is not None else self._weights

    @weights.setter
    def weights(self, value: dict[str, Any]) -> None:
        self.materialize().weights = value

    def materialize(self) -> GraphExecutor:
        """The torch executor (built, and torch imported, on the first call), with the weights
        changed before it existed."""
        if self._built is None:
            from qaas_engine.graph.executor import GraphExecutor

            self._built = GraphExecutor(self.model)
            for name, value in self._weights.changed.items():
                _set_tensor(self._built, name, value)
        return self._built

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Change a weight without building torch; the torch executor gets it too."""
        self._weights.changed[name] = np.asarray(value)
        if self._built is not None:
            _set_tensor(self._built, name, value)

    def release(self) -> None:
        """Drop the torch executor (its weight tensors, its compiled graph), back to numpy
        weights read from the graph. For a pass that built it only to read from it (the
        sensitivity rule's gradients): weights it changed would be lost, so callers release
        only what no step trains."""
        self._built = None

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes not set above: run, to, program, fallback_nodes, ...
        if name.startswith("__") or name in ("_built", "_weights", "_nodes", "model"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)


def set_weight(executor: Executor, name: str, value: np.ndarray) -> None:
    """``name`` now holds ``value``, in whichever form the executor keeps its weights."""
    if isinstance(executor, LazyExecutor):
        executor.set_weight(name, value)
    else:
        _set_tensor(executor, name, value)


def _set_tensor(executor: GraphExecutor, name: str, value: np.ndarray) -> None:
    import torch

    old = executor.weights[name]
    executor.weights[name] = torch.as_tensor(np.asarray(value), dtype=old.dtype).reshape(old.shape)


def weight_layouts(executor: Executor) -> Iterator[tuple[str, tuple[int, ...], np.dtype]]:
    """Each weight's name, shape and dtype, none of them decoded while the weights are still
    the graph's (the torch executor's tensors are read as they are once it is built)."""
    weights = executor.weights
    if isinstance(weights, InitializerArrays):
        for name in weights:
            yield name, *weights.layout(name)
        return
    for name, value in weights.items():
        array = to_numpy(value)
        yield name, tuple(array.shape), array.dtype


def materialized(executor: Executor) -> GraphExecutor:
    """The torch executor behind ``executor`` (built now if it was not)."""
    return executor.materialize() if isinstance(executor, LazyExecutor) else executor
