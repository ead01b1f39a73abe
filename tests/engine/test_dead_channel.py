"""A channel the float model computes as rounding noise (all-MiniLM's embedding has one at about
1e-33 beside channels near 0.05) carries no signal: the worst-channel SQNR must not be decided
by it, or every quantized configuration reads exactly 0 dB there."""

from __future__ import annotations

import numpy as np

from qaas_engine.evaluation import FidelityMeter
from qaas_engine.output_grids import centred_channel_sqnr


def test_a_dead_channel_does_not_decide_the_worst_channel():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 0.05, (32, 8))
    reference[:, 3] = rng.normal(0.0, 1e-33, 32)  # the float model's rounding noise
    test = reference + rng.normal(0.0, 0.05 * 10**-1.5, reference.shape)  # about 30 dB
    test[:, 3] = 0.0  # what the quantized model computes there
    meter = FidelityMeter()
    meter.update(reference, test, None)
    channel, db = meter.worst_channel()
    assert channel != 3 and 25 < db < 35
    assert 25 < meter.result()["worst_channel_sqnr_db_low"] < 35
    assert 20 < centred_channel_sqnr([reference], [test]) < 35
    # a real small-range channel still decides
    reference[:, 3] = rng.normal(0.0, 1e-3, 32)
    meter = FidelityMeter()
    meter.update(reference, test, None)
    assert meter.worst_channel()[0] == 3
