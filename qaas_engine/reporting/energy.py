"""The energy report: one inference priced at FP32 and at the widths the quantized model
computes in, per layer and in total, with the assumptions printed beside the numbers.

The model itself (profile, layer counts, pricing) is :mod:`qaas_engine.cost`; this module reads
the bit-widths off a sim and assembles the report's section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import onnx

from qaas_engine.cost.energy import FLOAT_BITS, EnergyProfile, layer_energy
from qaas_engine.cost.shapes import LayerShape, layer_shapes
from qaas_engine.quant.sim import QuantSim

if TYPE_CHECKING:
    from qaas_engine.graph.lazy import Executor


def energy_report(
    model: onnx.ModelProto,
    executor: Executor,
    sim: QuantSim,
    sample: Mapping[str, Any],
    profile: EnergyProfile | None = None,
) -> dict[str, Any]:
    """Energy of one inference (per sample), per layer and in total, FP32 against quantized."""
    profile = profile or EnergyProfile()
    layers = layer_shapes(model, executor, sample)
    quantizers = sim.activation_quantizers()
    fused_output = _fused_outputs(model, sim)
    rows = []
    for layer in layers:
        float_pj = layer_energy(layer, profile, FLOAT_BITS, FLOAT_BITS, FLOAT_BITS, FLOAT_BITS)
        w_bits = _weight_bits(layer, sim)
        a_bits = _input_bits(layer, quantizers)
        out_enc = quantizers.get(fused_output.get(layer.output, layer.output))
        o_bits = out_enc.scheme.bits if out_enc is not None else FLOAT_BITS
        computes_int = a_bits < FLOAT_BITS and (layer.weight is None or w_bits < FLOAT_BITS)
        c_w, c_a = (w_bits if layer.weight else a_bits, a_bits) if computes_int else (32, 32)
        kept = _kept_fraction(layer, sim)
        priced = layer if kept == 1.0 else layer.with_kept_channels(kept)
        quant_pj = layer_energy(priced, profile, c_w, c_a, w_bits, o_bits, mem_a_bits=a_bits)
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


def _kept_fraction(layer: LayerShape, sim: QuantSim) -> float:
    """Share of output channels left after pruning (Bayesian Bits' 2-bit gate)."""
    if not layer.weight:
        return 1.0
    pruned = sim.pruned_channels.get(layer.weight)
    if not pruned:
        return 1.0
    site = sim.placement.weights[layer.weight]
    channels = int(sim.executor.weights[layer.weight].shape[site.channel_axis or 0])
    return round(1.0 - len(pruned) / channels, 6)


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
