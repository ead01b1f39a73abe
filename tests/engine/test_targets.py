"""Deployment targets: the export's weight layout follows the CPU's int8 kernels, exactly.

Which CPU runs the tests varies; the choices are checked on given CPU features, and the only
runtime claims asserted are those that hold on any CPU (the AVX2 layout is exact everywhere; the
VNNI layout is exact where the CPU has an int8 dot product).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from qaas_engine import QuantSpec, quantize
from qaas_engine.targets import check_target, choose_kernels, cpu_dot_product_flags


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
    assert plain.mode == "avx2" and "saturate" in plain.reason


def test_a_forced_mode_wins_and_says_when_this_cpu_cannot_check_it():
    assert choose_kernels("onnxruntime-cpu:avx2", ("avx512_vnni",)).mode == "avx2"
    forced = choose_kernels("onnxruntime-cpu:vnni", ())
    assert forced.mode == "vnni" and "understates" in forced.reason


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


def test_the_avx2_layout_is_exact_on_any_cpu_and_the_default_on_this_one(tiny_imported):
    imported, calibration, evaluation = tiny_imported
    for target in ("onnxruntime-cpu:avx2", "onnxruntime-cpu"):
        report = quantize(
            imported, QuantSpec(target=target), calibration=calibration, evaluation=evaluation
        ).report
        gap = report["metrics"]["simulation_vs_onnxruntime"]
        assert gap["top1_agreement"] >= 0.999, (target, report["target"], gap)
        assert np.isfinite(gap["sqnr_db"])
