"""The routing decision (``app.jobs.routing.decide``) and the queue names it maps to: which
pool a job goes to and the reason recorded on it, for every case that decides."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.core.queue import pool_of_queue, queue_name
from app.jobs.routing import CPU, GPU, decide, job_device, learning_steps

SETTINGS = Settings(queue="qaas", gpu_min_parameters=1_000_000, gpu_worker_fresh_s=60.0)
BIG = 4 * 2_000_000  # bytes of a float32 model of 2M parameters
SMALL = 4 * 10_000


def route(pipeline, *, model_bytes=BIG, gpu_workers=1, has_training=True):
    return decide(
        pipeline=pipeline,
        has_training=has_training,
        model_bytes=model_bytes,
        gpu_workers=gpu_workers,
        settings=SETTINGS,
    )


@pytest.mark.parametrize("pipeline", [[], ["cle"], ["cle", "bias_correction"], ["auto"]])
def test_post_training_pipelines_go_to_cpu_whatever_the_workers(pipeline):
    chosen = route(pipeline, gpu_workers=3, has_training=False)
    assert chosen.pool == CPU
    assert chosen.reason == "post-training pipeline: no step learns by gradient descent"


@pytest.mark.parametrize("pipeline", [["qat"], ["cle", "adaround"], ["bayesian_bits"]])
def test_learning_steps_on_a_large_model_go_to_gpu_while_a_gpu_worker_is_seen(pipeline):
    chosen = route(pipeline)
    assert chosen.pool == GPU
    assert chosen.as_json()["queue"] == "gpu"
    assert pipeline[-1] in chosen.reason and "2,000,000 parameters" in chosen.reason


def test_no_gpu_worker_sends_a_learning_job_to_cpu_and_says_why():
    chosen = route(["qat"], gpu_workers=0)
    assert chosen.as_json() == {"queue": "cpu", "reason": "no gpu worker seen in the last 60 s"}


def test_a_small_model_trains_on_cpu_even_with_gpu_workers():
    chosen = route(["qat"], model_bytes=SMALL, gpu_workers=2)
    assert chosen.pool == CPU
    assert "about 10,000 parameters" in chosen.reason
    assert "QAAS_GPU_MIN_PARAMETERS=1,000,000" in chosen.reason
    # The threshold is inclusive, and 0 sends every learning job to gpu.
    assert route(["qat"], model_bytes=4 * 1_000_000).pool == GPU
    zero = SETTINGS.model_copy(update={"gpu_min_parameters": 0})
    assert (
        decide(
            pipeline=["qat"], has_training=True, model_bytes=8, gpu_workers=1, settings=zero
        ).pool
        == GPU
    )


def test_pipeline_auto_learns_only_with_training_data():
    assert learning_steps(["auto"], has_training=True) == ["auto"]
    assert learning_steps(["auto"], has_training=False) == []
    assert route(["auto"], has_training=True).pool == GPU
    assert learning_steps(["cle", "adaround", "qat"], has_training=True) == ["adaround", "qat"]


def test_queue_names_keep_the_single_queue_deployment_as_the_cpu_pool():
    assert queue_name(SETTINGS) == queue_name(SETTINGS, "cpu") == "qaas"
    assert queue_name(SETTINGS, "gpu") == "qaas.gpu"
    unique = Settings(queue="qaas-test-1234")
    assert queue_name(unique, "gpu") == "qaas-test-1234.gpu"
    assert pool_of_queue(unique, "qaas-test-1234") == CPU
    assert pool_of_queue(unique, "qaas-test-1234.gpu") == GPU
    assert pool_of_queue(unique, "qaas") is None
    with pytest.raises(ValueError, match="unknown worker pool 'tpu'"):
        queue_name(SETTINGS, "tpu")


def test_the_device_recorded_is_the_workers_only_for_learning_steps():
    cuda = "cuda:0 (NVIDIA H100 80GB HBM3)"
    assert job_device({"pipeline": ["qat"]}, True, cuda) == cuda
    assert job_device({"pipeline": ["cle"]}, False, cuda) == "cpu"
    assert job_device({"pipeline": ["qat"]}, True, "cpu") == "cpu"
