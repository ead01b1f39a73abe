"""Deployment targets: the export's weight layout follows the CPU's int8 kernels, exactly.

Which CPU runs the tests varies; the choices are checked on given CPU features, and the only
runtime claims asserted are those that hold on any CPU (the AVX2 layout is exact everywhere; the
VNNI layout is exact where the CPU has an int8 dot product).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from qaas_engine import QuantSpec, quantize
from qaas_engine.export.qdq import export_qdq
from qaas_engine.pipeline import build_sim, build_state
from qaas_engine.quant.estimators import weight_encoding
from qaas_engine.state import Timer
from qaas_engine.targets import (
    S8_PAIR_SAFE_BOUND,
    check_target,
    choose_kernels,
    cpu_dot_product_flags,
)


def _weight_types(model) -> set[int]:
    """Element types of the integer weights (the DequantizeLinear inputs that are constants)."""
    constants = {init.name: init.data_type for init in model.graph.initializer}
    return {
        constants[node.input[0]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in constants
        and constants[node.input[0]] in (TensorProto.INT8, TensorProto.UINT8)
    }  # fmt: skip


def test_the_cpu_decides_the_default_mode():
    assert choose_kernels("onnxruntime-cpu", ("avx512_vnni",)).mode == "vnni"
    assert choose_kernels("onnxruntime-cpu", ("asimddp",)).mode == "vnni"
    plain = choose_kernels("onnxruntime-cpu", ())
    assert plain.mode == "avx2-s7" and "saturate" in plain.reason and "7-bit" in plain.reason
    # --strict-bits keeps the 8-bit grids asked for: the exact u8u8 kernels
    strict = choose_kernels("onnxruntime-cpu", (), strict_bits=True)
    assert strict.mode == "avx2" and "--strict-bits" in strict.reason
    assert choose_kernels("onnxruntime-cpu", ("avx_vnni",), strict_bits=True).mode == "vnni"


def test_seven_bit_mode_narrows_only_the_weights_a_gemm_sums_in_int16():
    s7 = choose_kernels("onnxruntime-cpu:avx2-s7", ("avx512_vnni",))
    assert s7.mode == "avx2-s7" and s7.signed_weights
    assert [s7.weight_bits(8, op, depthwise=False) for op in ("Conv", "Gemm", "MatMul")] == [7] * 3
    assert s7.weight_bits(8, "Conv", depthwise=True) == 8  # ORT's depthwise kernel: int32 sums
    assert s7.weight_bits(8, "ConvTranspose", depthwise=False) == 8
    assert s7.weight_bits(4, "Conv", depthwise=False) == 4
    assert s7.weight_bits(16, "MatMul", depthwise=False) == 16
    assert s7.saturates(8, "Gemm", depthwise=False) and not s7.saturates(7, "Gemm", depthwise=False)
    assert not s7.saturates(8, "Conv", depthwise=True)
    vnni = choose_kernels("onnxruntime-cpu:vnni", ())
    assert vnni.weight_bits(8, "Conv", depthwise=False) == 8
    assert not vnni.saturates(8, "Conv", depthwise=False)


def test_a_forced_mode_wins_and_says_when_this_cpu_cannot_check_it():
    assert choose_kernels("onnxruntime-cpu:avx2", ("avx512_vnni",)).mode == "avx2"
    forced = choose_kernels("onnxruntime-cpu:vnni", ())
    assert forced.mode == "vnni" and "saturate" in forced.reason and "uint8" in forced.reason
    assert forced.saturates_here
    assert not choose_kernels("onnxruntime-cpu:vnni", ("avx_vnni",)).saturates_here
    assert choose_kernels("tensorrt", ()).saturates_here
    assert not choose_kernels("onnxruntime-cpu:avx2-s7", ()).saturates_here


def _quantized(tiny_imported, target: str):
    imported, calibration, evaluation = tiny_imported
    spec = QuantSpec(target=target)
    return quantize(imported, spec, calibration=calibration, evaluation=evaluation)


def test_a_layout_for_other_hardware_is_measured_as_that_hardware_computes_it(tiny_imported):
    """VNNI forced: on a CPU without an int8 dot product ORT's u8s8 kernels saturate on the
    file, so the figures run its uint8 copy (the same values); on one with it, the file. The
    simulation equals what ORT reports on any CPU."""
    report = _quantized(tiny_imported, "onnxruntime-cpu:vnni").report
    gap = report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["top1_agreement"] >= 0.999 and gap["sqnr_db"] >= 100, gap
    copied = "stored as uint8" in report["metrics"]["engines"]["onnxruntime"]
    assert copied == (not cpu_dot_product_flags())


def test_unknown_targets_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown target"):
        check_target("onnxruntime-gpu")
    with pytest.raises(ValueError, match="unknown target 'qnn-dsp'"):
        QuantSpec(target="qnn-dsp")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2 avx512_vnni avx512f\n")
    assert cpu_dot_product_flags(cpuinfo) == ("avx512_vnni",)
    cpuinfo.write_text("processor : 0\nFeatures : fp asimd asimddp\n")
    assert cpu_dot_product_flags(cpuinfo) == ("asimddp",)
    assert cpu_dot_product_flags(tmp_path / "missing") == ()


def test_each_mode_lays_out_the_weights_for_its_kernels(tiny_imported):
    imported, calibration, evaluation = tiny_imported
    avx2 = quantize(imported, QuantSpec(target="onnxruntime-cpu:avx2"), calibration=calibration)
    vnni = quantize(imported, QuantSpec(target="onnxruntime-cpu:vnni"), calibration=calibration)
    assert _weight_types(avx2.quantized_model) == {TensorProto.UINT8}
    assert _weight_types(vnni.quantized_model) == {TensorProto.INT8}
    assert avx2.report["target"]["kernel_mode"] == "avx2"
    assert vnni.report["target"]["weights"] == "int8 (u8s8 kernels)"
    # the same grid values either way: only the container differs
    assert avx2.encodings == vnni.encodings


def _integer_ranges(model) -> dict[str, tuple[int, int, int]]:
    """Weight initializer -> (element type, min, max) of the integers a DequantizeLinear reads."""
    constants = {init.name: init for init in model.graph.initializer}
    ranges = {}
    for node in model.graph.node:
        init = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if init is not None and len(init.dims) > 1:
            values = numpy_helper.to_array(init).astype(np.int64)
            ranges[init.name] = (init.data_type, int(values.min()), int(values.max()))
    return ranges


def test_the_seven_bit_layout_keeps_gemm_weights_within_the_int16_pair_bound(tiny_imported):
    """Conv and Gemm weights on 7-bit grids, int8; the depthwise conv's at 8 bits; exact on any
    CPU (ORT's u8s8 kernels without a dot product sum pairs in int16: 2 * 255 * 64 fits)."""
    result = _quantized(tiny_imported, "onnxruntime-cpu:avx2-s7")
    ranges = _integer_ranges(result.quantized_model)
    depthwise = {name for name in ranges if "depthwise" in name}
    assert depthwise and len(ranges) > len(depthwise)
    for name, (dtype, low, high) in ranges.items():
        assert dtype == TensorProto.INT8, name
        if name in depthwise:
            assert max(-low, high) > S8_PAIR_SAFE_BOUND, (name, low, high)
        else:
            assert -S8_PAIR_SAFE_BOUND <= low and high <= S8_PAIR_SAFE_BOUND, (name, low, high)
    bits = {e["name"]: e["bw"] for e in result.encodings["param_encodings"]}
    assert {bits[name] for name in ranges if name not in depthwise} == {7}
    assert result.report["target"]["kernel_mode"] == "avx2-s7"
    gap = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["top1_agreement"] >= 0.999 and gap["sqnr_db"] >= 100, gap


def test_a_wider_gemm_weight_in_seven_bit_mode_is_stored_unsigned(tiny_imported):
    """An 8-bit GEMM weight (bayesian_bits may choose one) would saturate as int8 there: the
    export stores it as uint8 (u8u8 kernel, exact) and leaves the others int8."""
    imported, calibration, _ = tiny_imported
    state = build_state(imported, QuantSpec(target="onnxruntime-cpu:avx2-s7"), calibration, None)
    sim = build_sim(state, Timer())
    gemm = next(n for n, site in sim.placement.weights.items() if site.op_type == "Gemm")
    scheme = replace(sim.weight_encodings[gemm].scheme, bits=8)
    sim.weight_encodings[gemm] = weight_encoding(sim.executor.weights[gemm], scheme, "minmax")
    ranges = _integer_ranges(export_qdq(state.model, sim, unsigned_weights=False))
    assert ranges[gemm][0] == TensorProto.UINT8
    assert {dtype for name, (dtype, _, _) in ranges.items() if name != gemm} == {TensorProto.INT8}


def test_the_avx2_layout_is_exact_on_any_cpu_and_the_default_on_this_one(tiny_imported):
    imported, calibration, evaluation = tiny_imported
    for target in ("onnxruntime-cpu:avx2", "onnxruntime-cpu:avx2-s7", "onnxruntime-cpu"):
        report = quantize(
            imported, QuantSpec(target=target), calibration=calibration, evaluation=evaluation
        ).report
        gap = report["metrics"]["simulation_vs_onnxruntime"]
        assert gap["top1_agreement"] >= 0.999, (target, report["target"], gap)
        assert np.isfinite(gap["sqnr_db"])
