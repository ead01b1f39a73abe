"""``If``, ``Loop`` and ``Scan``: their bodies run through the executor itself.

A body is a compiled :class:`~qaas_engine.graph.program.Program` that reads the enclosing graph's
values by name, so the ops inside are computed by the same torch kernels, seen by the same hook
(calibration, fake-quantization) and differentiable like top-level ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from qaas_engine.errors import UnsupportedOpError
from qaas_engine.graph.dtypes import TORCH_DTYPES
from qaas_engine.graph.program import CompiledNode, Program


class Scope:
    """What a subgraph sees of its enclosing graphs: their live values, then their constants."""

    def __init__(self, *layers: Mapping[str, Any] | Scope) -> None:
        self.layers = layers

    def __contains__(self, name: str) -> bool:
        return any(name in layer for layer in self.layers)

    def __getitem__(self, name: str) -> Any:
        for layer in self.layers:
            if name in layer:
                return layer[name]
        raise KeyError(name)


class BodyRunner(Protocol):
    """The executor's one run, which the bodies recurse into (hook and fallbacks included)."""

    def run(
        self,
        program: Program,
        feeds: Mapping[str, Any],
        constants: Mapping[str, Any],
        outer: Scope,
        outputs: Iterable[str] | None = None,
    ) -> dict[str, Any]: ...


def _run_body(
    runner: BodyRunner, node: CompiledNode, attr: str, values: list[Any], scope: Scope
) -> list[Any]:
    body: Program = node.subgraphs[attr]
    feeds = dict(zip(body.input_names, values, strict=False))
    results = runner.run(body, feeds, body.constants, scope)
    return [results[name] for name in body.output_names]


def run_if(runner: BodyRunner, node: CompiledNode, args: list[Any], scope: Scope) -> list[Any]:
    condition = bool(torch.as_tensor(args[0]).reshape(-1)[0])
    return _run_body(runner, node, "then_branch" if condition else "else_branch", [], scope)


def _stack(ctx_node: CompiledNode, pieces: list[Any], body: Program, name: str) -> Tensor:
    """Per-iteration values stacked on a new axis 0; with no iteration, an empty tensor of the
    body output's declared type and shape."""
    if not all(isinstance(p, torch.Tensor) for p in pieces):
        raise UnsupportedOpError(ctx_node.op_type, ctx_node.name, "scan output of a non-tensor")
    if pieces:
        return torch.stack(pieces)
    declared = body.types.get(name)
    tensor_type = declared.tensor_type if declared is not None else None
    dims = [d.dim_value for d in tensor_type.shape.dim] if tensor_type is not None else []
    if tensor_type is None or tensor_type.elem_type not in TORCH_DTYPES or not all(dims):
        raise UnsupportedOpError(ctx_node.op_type, ctx_node.name, f"empty scan output {name}")
    return torch.empty((0, *dims), dtype=TORCH_DTYPES[tensor_type.elem_type])


def run_loop(runner: BodyRunner, node: CompiledNode, args: list[Any], scope: Scope) -> list[Any]:
    """``M`` bounds the trip count, ``cond`` ends the loop early; either may be absent. Carried
    values thread through the body; per-iteration scan outputs are stacked on a new axis 0."""
    trip_count = args[0] if len(args) > 0 else None
    condition = args[1] if len(args) > 1 else None
    carried = list(args[2:])
    limit = None if trip_count is None else int(trip_count.reshape(-1)[0])
    keep_going = True if condition is None else bool(condition.reshape(-1)[0])
    scans: list[list[Any]] = []
    iteration = 0
    while keep_going and (limit is None or iteration < limit):
        values = [
            torch.tensor(iteration, dtype=torch.int64),
            torch.tensor(keep_going, dtype=torch.bool),
            *carried,
        ]
        outputs = _run_body(runner, node, "body", values, scope)
        keep_going = bool(torch.as_tensor(outputs[0]).reshape(-1)[0])
        carried = outputs[1 : 1 + len(carried)]
        per_iteration = outputs[1 + len(carried) :]
        if not scans:
            scans = [[] for _ in per_iteration]
        for pieces, value in zip(scans, per_iteration, strict=True):
            pieces.append(value)
        iteration += 1
    body = node.subgraphs["body"]
    scan_names = body.output_names[1 + len(carried) :]
    stacked = [_stack(node, scans[i] if scans else [], body, n) for i, n in enumerate(scan_names)]
    return [*carried, *stacked]


def _axes(values: list[int] | None, count: int, rank_of: Callable[[int], int]) -> list[int]:
    axes = list(values) if values else [0] * count
    return [a + rank_of(i) if a < 0 else a for i, a in enumerate(axes)]


def run_scan(runner: BodyRunner, node: CompiledNode, args: list[Any], scope: Scope) -> list[Any]:
    """Opset 9+: states, then scan inputs sliced along their scan axes (in their directions).
    Opset 8 has a leading ``sequence_lens`` input and a batch axis 0 that is scanned apart."""
    attrs = node.context.attrs
    if node.context.opset < 9:
        lengths, rest = args[0], list(args[1:])
        n_states = len(rest) - int(attrs["num_scan_inputs"])
        batch = rest[0].shape[0] if rest else 0
        per_batch = []
        for b in range(batch):
            sliced = [t[b] for t in rest]
            if lengths is not None:
                length = int(lengths.reshape(-1)[b])
                sliced = sliced[:n_states] + [t[:length] for t in sliced[n_states:]]
            per_batch.append(_scan(runner, node, sliced, scope, {}))
        return [torch.stack([r[i] for r in per_batch]) for i in range(len(per_batch[0]))]
    return _scan(runner, node, list(args), scope, attrs)


def _scan(
    runner: BodyRunner, node: CompiledNode, args: list[Any], scope: Scope, attrs: dict
) -> list[Any]:
    n_inputs = int(node.context.attrs["num_scan_inputs"])
    states, inputs = args[: len(args) - n_inputs], args[len(args) - n_inputs :]
    in_axes = _axes(attrs.get("scan_input_axes"), n_inputs, lambda i: inputs[i].dim())
    in_reverse = list(attrs.get("scan_input_directions") or [0] * n_inputs)
    inputs = [
        t.movedim(axis, 0).flip(0) if rev else t.movedim(axis, 0)
        for t, axis, rev in zip(inputs, in_axes, in_reverse, strict=True)
    ]
    steps = inputs[0].shape[0] if inputs else 0
    body = node.subgraphs["body"]
    n_out = len(body.output_names) - len(states)
    pieces: list[list[Any]] = [[] for _ in range(n_out)]
    for step in range(steps):
        outputs = _run_body(runner, node, "body", [*states, *(t[step] for t in inputs)], scope)
        states = outputs[: len(states)]
        for collected, value in zip(pieces, outputs[len(states) :], strict=True):
            collected.append(value)
    out_reverse = list(attrs.get("scan_output_directions") or [0] * n_out)
    results = []
    for i, collected in enumerate(pieces):
        name = body.output_names[len(states) + i]
        results.append(_stack(node, collected[::-1] if out_reverse[i] else collected, body, name))
    out_axes = _axes(attrs.get("scan_output_axes"), n_out, lambda i: results[i].dim())
    results = [t.movedim(0, axis) for t, axis in zip(results, out_axes, strict=True)]
    return [*states, *results]


ControlFlowKernel = Callable[[BodyRunner, CompiledNode, list[Any], Scope], list[Any]]
CONTROL_FLOW: dict[str, ControlFlowKernel] = {
    "If": run_if,
    "Loop": run_loop,
    "Scan": run_scan,
}
