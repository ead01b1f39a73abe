"""Energy per inference, float against quantized, from a profile that is data, not code.

The default profile is the 45 nm table the design cites (Horowitz, ISSCC 2014): the point of
quantizing is energy, so the report prices the same work twice, once at FP32 and once at the
bit-widths the quantized model actually computes in. Compute energy is MACs x (mult + add);
memory energy is bytes moved x energy of a 64-bit access at a stated memory level.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from qaas_engine.errors import SpecError
from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.quant.sim import QuantSim
from qaas_engine.stats import macs_per_sample

FLOAT_BITS = 32
ACCESS_BITS = 64  # the table prices one 64-bit access
# Elementwise ops whose arithmetic is countable from the output shape: one op per element.
ELEMENTWISE_ADDS = {"Add", "Sub"}
ELEMENTWISE_MULTS = {"Mul", "Div"}
REDUCING_ADDS = {"GlobalAveragePool", "ReduceMean", "ReduceSum"}
# A profile arrives with a job and is stored and returned with it: its strings and lists are
# capped, far above what a chip's table needs.
MAX_NAME_CHARS = 200
MAX_ACCESS_LEVELS = 32
MAX_LEVEL_CHARS = 64
MAX_NOTES = 16
MAX_NOTE_CHARS = 500


@dataclass(frozen=True)
class EnergyProfile:
    """Picojoules per operation and per 64-bit memory access; load one from JSON for your chip.

    Integer figures are given at ``int_reference_bits``; other widths scale adds ~ bits and
    multiplies ~ bits^2 (the product of the two operand widths), as the design says.
    """

    name: str = "45 nm, 0.9 V (Horowitz, ISSCC 2014; the seed's table)"
    int_add_pj: float = 0.03
    int_mult_pj: float = 0.2
    int_reference_bits: int = 8
    float_add_pj: float = 0.9
    float_mult_pj: float = 3.7
    access_pj: dict[str, float] = field(
        default_factory=lambda: {
            "cache_8kb": 10.0,
            "cache_32kb": 20.0,
            "cache_1mb": 100.0,
            "dram": 1950.0,
        }
    )
    weight_level: str = "dram"
    activation_level: str = "cache_1mb"
    notes: tuple[str, ...] = (
        "DRAM access is 1300-2600 pJ per 64 bits in the table; the midpoint 1950 is used",
    )

    def __post_init__(self) -> None:
        numbers = [self.int_add_pj, self.int_mult_pj, self.float_add_pj, self.float_mult_pj]
        if any(not np.isfinite(v) or v < 0 for v in [*numbers, *self.access_pj.values()]):
            raise SpecError("energy profile: every energy must be a finite number >= 0 pJ")
        if self.int_reference_bits < 1:
            raise SpecError("energy profile: int_reference_bits must be at least 1")
        for level in (self.weight_level, self.activation_level):
            if level not in self.access_pj:
                raise SpecError(
                    f"energy profile: memory level {level!r} is not one of {sorted(self.access_pj)}"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnergyProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"energy profile: unknown fields {unknown}; known: {sorted(known)}")
        _check_sizes(data)
        values = dict(data)
        if "access_pj" in values:
            values["access_pj"] = {str(k): float(v) for k, v in values["access_pj"].items()}
        if "notes" in values:
            values["notes"] = tuple(str(n) for n in values["notes"])
        try:
            return cls(**values)
        except TypeError as error:
            raise SpecError(f"energy profile: {error}") from None

    @classmethod
    def load(cls, source: EnergyProfile | Mapping[str, Any] | str | os.PathLike[str] | None):
        """A profile from itself, a dict, or a JSON file; ``None`` gives the default table."""
        if source is None:
            return cls()
        if isinstance(source, EnergyProfile):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, ValueError) as error:
            raise SpecError(f"energy profile {source}: {error}") from None
        if not isinstance(data, dict):
            raise SpecError(f"energy profile {source}: expected a JSON object")
        return cls.from_dict(data)

    def add_pj(self, bits: int) -> float:
        if bits >= FLOAT_BITS:
            return self.float_add_pj
        return self.int_add_pj * bits / self.int_reference_bits

    def mult_pj(self, bits_a: int, bits_b: int) -> float:
        if max(bits_a, bits_b) >= FLOAT_BITS:
            return self.float_mult_pj
        return self.int_mult_pj * (bits_a * bits_b) / self.int_reference_bits**2

    def byte_pj(self, level: str) -> float:
        return self.access_pj[level] / (ACCESS_BITS / 8)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data


def _check_sizes(data: Mapping[str, Any]) -> None:
    """Types and caps of a profile's strings and lists, before anything is converted."""
    for name in ("name", "weight_level", "activation_level"):
        value = data.get(name, "")
        if not isinstance(value, str):
            raise SpecError(f"energy profile: {name} must be a string")
        if len(value) > MAX_NAME_CHARS:
            raise SpecError(f"energy profile: {name} is longer than {MAX_NAME_CHARS} characters")
    access = data.get("access_pj", {})
    if not isinstance(access, Mapping):
        raise SpecError("energy profile: access_pj must be an object of level -> pJ")
    if len(access) > MAX_ACCESS_LEVELS:
        raise SpecError(f"energy profile: access_pj has more than {MAX_ACCESS_LEVELS} levels")
    if any(len(str(level)) > MAX_LEVEL_CHARS for level in access):
        raise SpecError(
            f"energy profile: an access_pj level name is longer than {MAX_LEVEL_CHARS} characters"
        )
    notes = data.get("notes", ())
    if not isinstance(notes, list | tuple) or not all(isinstance(n, str) for n in notes):
        raise SpecError("energy profile: notes must be a list of strings")
    if len(notes) > MAX_NOTES or any(len(note) > MAX_NOTE_CHARS for note in notes):
        raise SpecError(
            f"energy profile: notes may hold at most {MAX_NOTES} notes of at most "
            f"{MAX_NOTE_CHARS} characters each"
        )


@dataclass
class LayerShape:
    """A counted layer's work and traffic per sample, independent of bit-widths."""

    name: str
    op_type: str
    macs: int  # multiply-accumulates (or single adds/mults for elementwise ops) per sample
    kind: str  # "mac", "add" or "mult"
    weight_elements: int
    bias_elements: int
    input_elements: int
    output_elements: int
    weight: str | None
    inputs: list[str]
    output: str


def energy_report(
    model: onnx.ModelProto,
    executor: GraphExecutor,
    sim: QuantSim,
    sample: Mapping[str, torch.Tensor],
    profile: EnergyProfile | None = None,
) -> dict[str, Any]:
    """Energy of one inference (per sample), per layer and in total, FP32 against quantized."""
    profile = profile or EnergyProfile()
    layers = layer_shapes(model, executor, sample)
    quantizers = sim.activation_quantizers()
    fused_output = _fused_outputs(model, sim)
    rows = []
    for layer in layers:
        float_pj = _layer_energy(layer, profile, FLOAT_BITS, FLOAT_BITS, FLOAT_BITS, FLOAT_BITS)
        w_bits = _weight_bits(layer, sim)
        a_bits = _input_bits(layer, quantizers)
        out_enc = quantizers.get(fused_output.get(layer.output, layer.output))
        o_bits = out_enc.scheme.bits if out_enc is not None else FLOAT_BITS
        computes_int = a_bits < FLOAT_BITS and (layer.weight is None or w_bits < FLOAT_BITS)
        c_w, c_a = (w_bits if layer.weight else a_bits, a_bits) if computes_int else (32, 32)
        kept = _kept_fraction(layer, sim)
        priced = layer if kept == 1.0 else _pruned(layer, kept)
        quant_pj = _layer_energy(priced, profile, c_w, c_a, w_bits, o_bits, mem_a_bits=a_bits)
        rows.append(
            {
                "layer": layer.name,
                "op": layer.op_type,
                "macs": layer.macs,
                "kept_channels": kept if kept < 1.0 else None,
                "operation": layer.kind,
                "compute_bits": {"weights": c_w, "activations": c_a} if computes_int else 32,
                "bytes": {"float": float_pj.pop("bytes"), "quantized": quant_pj.pop("bytes")},
                "float_pj": float_pj,
                "quantized_pj": quant_pj,
            }
        )
    return _totals(rows, profile)


def _totals(rows: list[dict[str, Any]], profile: EnergyProfile) -> dict[str, Any]:
    float_total = sum(r["float_pj"]["total"] for r in rows)
    quant_total = sum(r["quantized_pj"]["total"] for r in rows)
    split = {
        key: {
            part: round(sum(r[key][part] for r in rows), 3)
            for part in ("compute", "weights_memory", "activations_memory")
        }
        for key in ("float_pj", "quantized_pj")
    }
    return {
        "float_pj": round(float_total, 3),
        "quantized_pj": round(quant_total, 3),
        "ratio": round(float_total / quant_total, 3) if quant_total else None,
        "breakdown": split,
        "per": "one inference of one sample",
        "layers": rows,
        "profile": profile.as_dict(),
        "assumptions": assumptions(profile),
    }


def assumptions(profile: EnergyProfile) -> list[str]:
    """What the numbers rest on, printed beside them."""
    p = profile
    return [
        f"profile: {p.name}",
        f"add {p.int_add_pj} pJ at INT{p.int_reference_bits}, {p.float_add_pj} pJ at FP32; "
        f"multiply {p.int_mult_pj} pJ at INT{p.int_reference_bits}, {p.float_mult_pj} pJ at FP32; "
        "other integer widths scale adds ~ bits, multiplies ~ product of the operand bits",
        "compute = MACs x (multiply + add); a layer computes in integers only when its weights "
        "and its inputs are quantized, otherwise in FP32 (the runtime dequantizes); the add is "
        "priced at the operand width as in the table (real accumulators are often 32-bit)",
        f"weights (and biases) are read once per inference from {p.weight_level} "
        f"({p.access_pj[p.weight_level]} pJ per 64-bit access)",
        f"each counted layer reads its inputs and writes its output once, at "
        f"{p.activation_level} ({p.access_pj[p.activation_level]} pJ per 64-bit access); ops "
        "without arithmetic (fused Relu, reshapes, pooling by max) are not counted",
        "quantized biases are int32 (4 bytes, like FP32 ones); bytes are packed at the bit-width",
        "output channels pruned by mixed precision (all-zero weights) are priced as removed: "
        "their MACs, weights and outputs cost nothing",
        *p.notes,
    ]


def _layer_energy(
    layer: LayerShape,
    profile: EnergyProfile,
    w_bits: int,
    a_bits: int,
    stored_w_bits: int,
    o_bits: int,
    mem_a_bits: int | None = None,
) -> dict[str, float]:
    if layer.kind == "mac":
        per_op = profile.mult_pj(w_bits, a_bits) + profile.add_pj(max(w_bits, a_bits))
    elif layer.kind == "mult":
        per_op = profile.mult_pj(a_bits, a_bits)
    else:
        per_op = profile.add_pj(a_bits)
    in_bits = a_bits if mem_a_bits is None else mem_a_bits
    weight_bytes = layer.weight_elements * stored_w_bits / 8 + layer.bias_elements * 4
    act_bytes = layer.input_elements * in_bits / 8 + layer.output_elements * o_bits / 8
    compute = layer.macs * per_op
    weights_memory = weight_bytes * profile.byte_pj(profile.weight_level)
    act_memory = act_bytes * profile.byte_pj(profile.activation_level)
    return {
        "compute": round(compute, 4),
        "weights_memory": round(weights_memory, 4),
        "activations_memory": round(act_memory, 4),
        "total": round(compute + weights_memory + act_memory, 4),
        "bytes": weight_bytes + act_bytes,
    }


def _kept_fraction(layer: LayerShape, sim: QuantSim) -> float:
    """Share of output channels left after pruning (Bayesian Bits' 2-bit gate)."""
    pruned = sim.pruned_channels.get(layer.weight) if layer.weight else None
    if not pruned:
        return 1.0
    site = sim.placement.weights[layer.weight]
    channels = int(sim.executor.weights[layer.weight].shape[site.channel_axis or 0])
    return round(1.0 - len(pruned) / channels, 6)


def _pruned(layer: LayerShape, kept: float) -> LayerShape:
    """A pruned channel is skipped: its MACs, weights and output are not computed or moved."""
    return replace(
        layer,
        macs=int(round(layer.macs * kept)),
        weight_elements=int(round(layer.weight_elements * kept)),
        bias_elements=int(round(layer.bias_elements * kept)),
        output_elements=int(round(layer.output_elements * kept)),
    )


def _weight_bits(layer: LayerShape, sim: QuantSim) -> int:
    encoding = sim.weight_encodings.get(layer.weight) if layer.weight else None
    return encoding.scheme.bits if encoding is not None else FLOAT_BITS


def _input_bits(layer: LayerShape, quantizers: Mapping[str, Any]) -> int:
    bits = [quantizers[name].scheme.bits if name in quantizers else 32 for name in layer.inputs]
    return max(bits) if bits else FLOAT_BITS


def _fused_outputs(model: onnx.ModelProto, sim: QuantSim) -> dict[str, str]:
    """Producer output -> the tensor the runtime actually writes (after a fused Relu/Clip)."""
    outputs = {node.name: node.output[0] for node in model.graph.node if node.output}
    return {
        produced: outputs[consumer]
        for produced, consumer in sim.placement.fused.items()
        if consumer in outputs
    }


def layer_shapes(
    model: onnx.ModelProto, executor: GraphExecutor, sample: Mapping[str, torch.Tensor]
) -> list[LayerShape]:
    shapes: dict[str, tuple[int, ...]] = {n: tuple(v.shape) for n, v in sample.items()}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        shapes[name] = tuple(value.shape)
        return value

    with torch.no_grad():
        executor.run(sample, hook=hook)
    batch = max(next(iter(shapes.values()))[0] if shapes else 1, 1)
    macs = macs_per_sample(model, executor, sample)
    weights = executor.weights
    layers = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if not node.output or node.output[0] not in shapes:
            continue
        out_elems = int(np.prod(shapes[node.output[0]])) // batch
        dynamic = [n for n in node.input if n and n in shapes and n not in weights]
        in_elems = sum(int(np.prod(shapes[n])) // batch for n in dynamic)
        if name in macs:
            weight = node.input[1] if len(node.input) > 1 and node.input[1] in weights else None
            bias = node.input[2] if len(node.input) > 2 and node.input[2] in weights else None
            layers.append(
                LayerShape(
                    name, node.op_type, macs[name], "mac",
                    weights[weight].numel() if weight else 0,
                    weights[bias].numel() if bias else 0,
                    in_elems, out_elems, weight, dynamic, node.output[0],
                )
            )  # fmt: skip
        elif node.op_type in ELEMENTWISE_ADDS | ELEMENTWISE_MULTS and len(dynamic) == 2:
            kind = "add" if node.op_type in ELEMENTWISE_ADDS else "mult"
            layers.append(
                LayerShape(name, node.op_type, out_elems, kind, 0, 0, in_elems, out_elems,
                       None, dynamic, node.output[0])
            )  # fmt: skip
        elif node.op_type in REDUCING_ADDS and dynamic:
            layers.append(
                LayerShape(name, node.op_type, in_elems, "add", 0, 0, in_elems, out_elems,
                       None, dynamic, node.output[0])
            )  # fmt: skip
    return layers
