"""pipeline auto with a fidelity target: a configuration met on validation data that does not
represent the model's data is not taken while the calibration samples (a second draw, where its
ranges were set and which flatter it) show it misses the target."""

from __future__ import annotations

import numpy as np

from qaas_engine import QuantSpec, quantize
from qaas_engine.data import Dataset
from tests.support.targets import EIGHT_BIT_WEIGHTS


def test_a_target_met_on_validation_but_missed_on_calibration_is_not_taken(tiny_imported):
    imported, calibration, _ = tiny_imported
    rng = np.random.default_rng(0)
    rng.standard_normal((64, 1, 8, 8))  # the calibration draw (tests/conftest.py)
    # one input 24 times: enough samples to confirm an SQNR target, none of the data's spread
    one = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    validation = Dataset({"input": np.repeat(one, 24, axis=0)}, {"input": False}, None, 24)
    report = quantize(
        imported,
        QuantSpec(pipeline=("auto",), min_sqnr_db=33, target=EIGHT_BIT_WEIGHTS),
        calibration=calibration,
        validation=validation,
    ).report
    auto = report["auto"]
    rows = {row["name"]: row for row in auto["tried"]}
    missed = [row for row in auto["tried"] if row.get("confirmed") is False]
    assert missed, "a configuration met on validation and missed on calibration"
    for row in missed:
        assert row["meets_target"] and row["fidelity"]["logits"]["low"] >= 33
        check = row["calibration_check"]
        assert check["samples"] == 24 and check["met"] is False  # as many as validation
        assert check["missed"]["logits"] < 33
    chosen = rows[auto["chosen"]]
    assert chosen["confirmed"] is True and chosen["calibration_check"]["met"] is True
    assert auto["verdict"] == "met" and auto["met"] is True
    assert chosen["energy_pj"] > min(row["energy_pj"] for row in missed)
    # the report's own data (the calibration samples here) agrees with the choice
    assert auto["evaluation"]["outputs"]["logits"]["met"] is True
