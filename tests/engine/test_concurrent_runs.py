"""Runs two at a time give exactly the numbers of runs one at a time (``concurrent_runs``):
the rules' SQNR measurement and ONNX Runtime's noise pricing, with ``QAAS_THREADS`` 1 and 2."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from qaas_engine import concurrent_runs
from qaas_engine.noise_pricing import measure_noise
from qaas_engine.rules import measured_sqnr_db
from qaas_engine.sessions import THREADS_ENV, session
from tests.support.strict_sims import Branchy, strict_sim


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    state, sim, calibration = strict_sim(
        Branchy, tmp_path_factory.mktemp("runs"), (1, 1, 12, 12), 16
    )
    batches = [
        {k: np.asarray(v) for k, v in feeds.items()} for feeds, _ in calibration.batches(1, 6)
    ]
    return state, sim, batches


def test_run_each_keeps_the_order_and_runs_two_at_a_time(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    seen: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def run(item: int) -> int:
        seen.add(threading.current_thread().name)
        if item < 2:
            barrier.wait()  # both first items in flight at once, or this times out
        return item * item

    assert concurrent_runs.run_each(run, list(range(7))) == [i * i for i in range(7)]
    assert len(seen) == 2
    monkeypatch.setenv(THREADS_ENV, "1")
    seen.clear()
    assert concurrent_runs.run_each(lambda i: i + 1, [1, 2, 3]) == [2, 3, 4]
    assert concurrent_runs.concurrency() == 1


def test_measurements_are_the_same_one_or_two_runs_at_a_time(built, monkeypatch):
    state, sim, batches = built
    model = state.model
    outputs = [value.name for value in model.graph.output]
    float_runs = session(model)
    references = [float_runs.run(outputs, feeds) for feeds in batches]
    figures = {}
    for threads, at_once in (("1", 2), ("2", 1), ("2", 2)):  # ("2", 1): two threads, one run
        monkeypatch.setenv(THREADS_ENV, threads)
        monkeypatch.setattr(concurrent_runs, "MAX_CONCURRENT_RUNS", at_once)
        noise = measure_noise(model, sim, batches[0])
        figures[threads, at_once] = (
            measured_sqnr_db(model, sim, batches, references),
            noise.signal,
            list(noise.activations.items()),
            noise.weights,
        )
    assert len(figures["2", 2][2]) == len(sim.activation_encodings)
    # exactly: the same runs, summed in the same order
    assert figures["2", 1] == figures["2", 2]
    assert figures["1", 2] == figures["2", 2]
