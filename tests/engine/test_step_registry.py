"""The step registry: the spec, the runner and the job all take a new step from one entry."""

import pytest
from pydantic import ValidationError

from qaas_engine import QuantSpec, SpecError, job
from qaas_engine.step_registry import (
    STEPS,
    StepInfo,
    check_pipeline,
    missing_data,
    register,
    steps_needing,
    steps_taking,
    unregister,
)
from tests.support.targets import EIGHT_BIT_WEIGHTS


@pytest.fixture
def census():
    register(
        StepInfo(
            "weight_census",
            "quantized",
            "tests.engine.example_step:weight_census",
            "weight quantizers by bit-width",
            needs=frozenset({"calibration"}),
        )
    )
    yield STEPS["weight_census"]
    unregister("weight_census")


def test_a_registered_step_runs_in_a_job_and_reports(census, tiny_model, tiny_data, tmp_path):
    calibration, evaluation = tiny_data
    spec = QuantSpec(pipeline=("cle", "weight_census"), batch_size=16, target=EIGHT_BIT_WEIGHTS)
    saved = job.run(
        tiny_model, {"calibration": calibration, "evaluation": evaluation}, spec, tmp_path
    )
    section = saved.report["step_reports"]["weight_census"]
    assert section["weights_by_bits"] == {"8": saved.report["quantizers"]["weights"]}
    assert section["calibration_batches"] == 64 // 16
    names = [step["name"] for step in saved.report["steps"]]
    assert names.index("calibration") < names.index("weight_census") < names.index("export")
    assert names[:2] == ["import", "load"] and names[-1] == "save"
    assert sorted(saved.written) == sorted(p.name for p in tmp_path.iterdir())


def test_its_declared_needs_are_checked_before_any_work(census, tiny_model, tmp_path):
    spec = QuantSpec(pipeline=("weight_census",), activation_bits=None)
    with pytest.raises(SpecError, match="weight_census step needs calibration data"):
        job.run(tiny_model, {}, spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_its_stage_orders_the_pipeline(census):
    with pytest.raises(ValidationError, match="'cle' changes the float model"):
        QuantSpec(pipeline=("weight_census", "cle"))


def test_an_unregistered_step_is_refused_by_the_spec():
    with pytest.raises(ValidationError, match="unknown pipeline step"):
        QuantSpec(pipeline=("weight_census",))


def test_the_registry_answers_what_data_a_pipeline_needs():
    assert steps_needing(("cle", "adaround", "qat"), "training") == ["qat"]
    assert steps_needing(("cle", "adaround", "qat"), "calibration") == ["adaround"]
    assert steps_taking("training") == ["bayesian_bits", "qat"]
    assert missing_data(("cle", "adaround", "qat"), {"calibration"}) == [("qat", "training")]
    assert missing_data(("bias_correction",), set()) == []  # calibration is optional there
    with pytest.raises(ValueError, match="auto"):
        check_pipeline(("auto", "cle"))
    with pytest.raises(ValueError, match="more than once"):
        check_pipeline(("cle", "cle"))
    assert {s.name for s in STEPS.values() if s.prefers_gpu} == {"adaround", "qat", "bayesian_bits"}
