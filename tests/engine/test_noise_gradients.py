"""The torch noise pricing prices each gradient as backward computes it and keeps none: taken
all at once, the gradients of every weight lived beside each other (the model's size again) at
the end of the pass, which set the job's peak on a BERT-base-sized encoder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qaas_engine.quant import sensitivity
from tests.support.strict_sims import strict_sim

ROOT = Path(__file__).resolve().parents[2]
WIDTH, LAYERS = 2048, 12  # 16 MiB a weight, 192 MiB in all; activations of a few KiB


class Deep(torch.nn.Module):
    """Wide Linear layers on one short vector: almost all of the memory is weights."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class _Handle:
    def remove(self) -> None:
        pass


def _reference(sim, feeds, monkeypatch) -> sensitivity.NoiseEstimate:
    """The same pricing with every gradient taken in one ``torch.autograd.grad`` call and
    priced after it, as the pricing did before it priced them on arrival."""
    pending: list = []  # (tensor, encoding, name, powers)

    def record(tensor, encoding, name, powers):
        pending.append((tensor, encoding, name, powers))
        return _Handle()

    def all_at_once(projection, *args, **kwargs):
        tensors = [entry[0] for entry in pending]
        grads = torch.autograd.grad(projection, tensors, allow_unused=True)
        for (_, encoding, name, powers), grad in zip(pending, grads, strict=True):
            if grad is not None:
                powers[name] = sensitivity._noise_power(encoding, grad)
        pending.clear()

    monkeypatch.setattr(sensitivity, "_price_on_arrival", record)
    monkeypatch.setattr(torch.Tensor, "backward", all_at_once)
    return sensitivity.estimate_noise(sim, feeds, seed=0)


def test_prices_as_one_gradient_call_does(tmp_path, monkeypatch):
    _, sim, calibration = strict_sim(Small, tmp_path, (1, 1, 6, 6), 4)
    feeds = {"input": calibration.arrays["input"][:4]}
    streamed = sensitivity.estimate_noise(sim, feeds, seed=0)
    reference = _reference(sim, feeds, monkeypatch)
    assert streamed.activations and streamed.weights
    assert list(streamed.activations) == list(reference.activations)  # the forward's order
    assert list(streamed.weights) == list(reference.weights)
    assert streamed.activations == reference.activations
    assert streamed.weights == reference.weights
    assert streamed.signal == reference.signal
    assert all(getattr(w, "grad", None) is None for w in sim.torch_executor().weights.values())


PRICE_AND_REPORT_PEAK = """
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {root!r})
from qaas_engine.quant import sensitivity
from tests.engine.test_noise_gradients import Deep, WIDTH
from tests.support.strict_sims import strict_sim
_, sim, calibration = strict_sim(Deep, Path(sys.argv[1]), (1, WIDTH), 2)
feeds = {{"input": calibration.arrays["input"][:1]}}
sensitivity.estimate_noise(sim, feeds, seed=0)  # warm: every other allocation made once
def status(key):
    line = next(s for s in open("/proc/self/status") if s.startswith(key))
    return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
sensitivity.estimate_noise(sim, feeds, seed=0)
print("GROWTH", status("VmHWM") - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM is read from /proc")
def test_the_weights_gradients_never_live_all_at_once(tmp_path):
    script = textwrap.dedent(PRICE_AND_REPORT_PEAK.format(root=str(ROOT)))
    # every block of 64 KiB or more mapped on allocation and unmapped on free: RSS is then the
    # live memory. With glibc's adaptive threshold, freed gradients may stay in the heap or go
    # back to the system from run to run, and the same pricing measured 32 to 112 MiB of growth
    # (the 3 weights' worth it holds at most is 48 MiB)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    growth = int(done.stdout.strip().splitlines()[-1].split()[1])
    weights = LAYERS * WIDTH * WIDTH * 4
    # one weight's gradient and its float64 square at a time (3 weights' worth), not all 12
    assert growth < weights / 2, f"pricing grew RSS by {growth / 2**20:.0f} MiB"
