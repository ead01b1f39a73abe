"""The energy model against the 45 nm table, worked out by hand on a network small enough."""

from __future__ import annotations

import json

import pytest

from qaas_engine import QuantSpec, quantize
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.errors import SpecError
from tests.reporting.conftest import load
from tests.support.targets import EIGHT_BIT_WEIGHTS

DRAM_BYTE = 1950 / 8  # pJ per byte: one 64-bit access moves 8 bytes
CACHE_1MB_BYTE = 100 / 8


def test_energy_matches_the_table_by_hand(countable):
    imported, data = countable
    report = quantize(imported, QuantSpec(target=EIGHT_BIT_WEIGHTS), calibration=data).report
    energy = report["energy"]
    assert [(r["op"], r["macs"]) for r in energy["layers"]] == [("Conv", 72), ("Gemm", 24)]
    # FP32: 96 MACs x (3.7 + 0.9); weights+biases (18+2+24+3) x 4 bytes from DRAM;
    # activations read and written: conv 16 in + 8 out, gemm 8 in + 3 out, 4 bytes each.
    float_pj = 96 * (3.7 + 0.9) + 47 * 4 * DRAM_BYTE + (16 + 8 + 8 + 3) * 4 * CACHE_1MB_BYTE
    # W8A8: 96 x (0.2 + 0.03); int8 weights, int32 biases; int8 activations (the conv's output
    # is written after its fused Relu, on the Relu's grid; the Gemm's output is quantized).
    quant_pj = 96 * 0.23 + (42 + 5 * 4) * DRAM_BYTE + (16 + 8 + 8 + 3) * CACHE_1MB_BYTE
    assert energy["float_pj"] == pytest.approx(float_pj, abs=1e-3)
    assert energy["quantized_pj"] == pytest.approx(quant_pj, abs=1e-3)
    assert energy["breakdown"]["float_pj"]["compute"] == pytest.approx(441.6)
    assert energy["breakdown"]["quantized_pj"]["compute"] == pytest.approx(22.08)
    assert energy["ratio"] == pytest.approx(float_pj / quant_pj, abs=1e-3)
    assert any("1300-2600" in line for line in energy["assumptions"])


def test_w8a8_over_fp32_ratio_of_a_conv_net(tiny_model, tiny_data):
    """Compute alone is 20x (4.6 / 0.23 pJ per MAC); memory at 4x (32 -> 8 bits) pulls the
    whole-inference ratio down towards 4 because weights read from DRAM dominate."""
    imported, data = load(tiny_model, tiny_data[0])
    energy = quantize(imported, QuantSpec(target=EIGHT_BIT_WEIGHTS), calibration=data).report[
        "energy"
    ]
    compute = {k: energy["breakdown"][k]["compute"] for k in ("float_pj", "quantized_pj")}
    compute_ratio = compute["float_pj"] / compute["quantized_pj"]
    print(f"W8A8/FP32 energy ratio {energy['ratio']}, compute alone {compute_ratio:.2f}")
    assert 20 <= compute_ratio <= 30  # MACs at 20x, the GAP's adds at 30x
    assert 3 < energy["ratio"] < compute_ratio


def test_profile_is_data(countable, tmp_path):
    imported, data = countable
    profile = tmp_path / "chip.json"
    profile.write_text(json.dumps({"name": "all in cache", "weight_level": "cache_8kb"}))
    energy = quantize(
        imported, QuantSpec(target=EIGHT_BIT_WEIGHTS), calibration=data, energy_profile=profile
    ).report["energy"]
    assert energy["profile"]["name"] == "all in cache"
    assert energy["breakdown"]["quantized_pj"]["weights_memory"] == pytest.approx(62 * 10 / 8)
    with pytest.raises(SpecError, match="unknown fields"):
        EnergyProfile.load({"dram_pj": 1})
    with pytest.raises(SpecError, match="memory level"):
        EnergyProfile.load({"weight_level": "l7"})


def test_other_bit_widths_scale():
    profile = EnergyProfile()
    assert profile.add_pj(16) == pytest.approx(0.06)  # adds ~ bits
    assert profile.mult_pj(4, 8) == pytest.approx(0.1)  # mults ~ bits x bits
    assert profile.mult_pj(16, 16) == pytest.approx(0.8)
    assert profile.mult_pj(8, 32) == 3.7
