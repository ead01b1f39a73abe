"""Rule ``weight_grid``: the spec's 8-bit weight grids back where 7 bits cost the output its
target.

On a CPU without an int8 dot product the default kernels (``avx2-s7``, ``qaas_engine.targets``)
take the weights of Conv, Gemm and MatMul on 7-bit grids: ONNX Runtime's fast u8s8 kernels sum
those exactly, 8-bit ones they saturate on. That costs about 6 dB of weight noise. Where the
output SQNR is under ``--min-sqnr`` and the weights' share of the noise is what holds it there,
the 8-bit grids come back, stored as uint8 (u8u8 kernels: exact, slower); measured, not
assumed, and kept only for a gain that is worth slower kernels. It runs after ``range_method``
(on min/max ranges PP-LCNet's orientation classifier measured 8-bit weights 2 dB *worse* than
7-bit, on the MSE ranges chosen then 7 dB better) and outside the rules' budget: it undoes the
engine's own narrowing, one measurement. ``--objective latency`` keeps the 7-bit grids (speed
first), ``--strict-bits`` never narrows them.

Measured on an AVX2-only AMD EPYC (``bench/artifact_speed.py --catalog``), without this rule:
7-bit weights cost the orientation classifier 16.6 -> 15.4 dB held out (top-1 agreement 1.000
-> 0.844) and PP-OCRv4's recognizer 15.3 -> 11.8 dB (its 16-bit promotions then measured too
little gain to keep).
"""

from __future__ import annotations

from collections.abc import Callable

from qaas_engine.quant.sim import QuantSim
from qaas_engine.rule_action import RuleAction

# measured gain that pays for u8u8 kernels on the widened weights (T1's GEMMs 1.5x slower at
# batch 32 than on u8s8): below the 3 dB a 16-bit promotion must show (it runs its group float),
# above the 0.5 dB that moves a range estimate (free at inference); 7 -> 8 bits gives up to
# 6 dB where the weights carry all the noise, 1 dB where they carry a quarter of it
MIN_WIDENING_GAIN_DB = 1.0


def eight_bit_weights(
    sim: QuantSim, before: float, target_db: float, measure: Callable[[], float]
) -> tuple[list[RuleAction], float]:
    """The report's line and the output SQNR after: every narrowed weight on the spec's grid,
    kept where ``measure`` (the probe's output SQNR of ``sim`` as it stands) gains
    ``MIN_WIDENING_GAIN_DB`` over ``before``; put back otherwise. Nothing where the output
    meets ``target_db``, nothing was narrowed, or the objective is latency."""
    narrowed = sim.narrowed_weights()
    if before >= target_db or not narrowed or sim.spec.objective == "latency":
        return [], before
    saved = {name: sim.weight_encodings[name] for name in narrowed}
    sim.wide_weights.update(narrowed)
    sim.compute_weight_encodings(narrowed)
    sim.derive_bias_encodings()
    after = measure()
    bits = sim.spec.weight_bits
    node = f"{len(narrowed)} weights of Conv/Gemm/MatMul"
    figures = (
        f"output SQNR {before:.1f} dB < {target_db:g} dB target with them on 7-bit grids (the "
        f"widest ONNX Runtime's u8s8 kernels sum exactly without an int8 dot product), "
        f"{after:.1f} dB on {bits}-bit ones"
    )
    if after < before + MIN_WIDENING_GAIN_DB:
        sim.wide_weights.difference_update(narrowed)
        sim.weight_encodings.update(saved)
        sim.invalidate()
        sim.derive_bias_encodings()
        action = RuleAction(
            "weight_grid", node, "kept 7-bit",
            f"{figures}: under the {MIN_WIDENING_GAIN_DB:g} dB gain that pays for the slower "
            "u8u8 kernels",
        )  # fmt: skip
        return [action], before
    action = RuleAction(
        "weight_grid", node, f"{bits}-bit weights, stored uint8 (u8u8 kernels: exact, slower)",
        f"{figures}; --objective latency keeps the 7-bit grids and the faster u8s8 kernels",
    )  # fmt: skip
    return [action], after
