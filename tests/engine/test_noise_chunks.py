"""The torch noise pricing holds every activation of every sample for its backward pass; where
that passes ``max_graph_bytes`` the samples go through in chunks, and the estimate must price
what one pass over all of them prices."""

from __future__ import annotations

import numpy as np
import torch

from qaas_engine.quant import sensitivity
from qaas_engine.tensors import to_torch
from tests.support.strict_sims import strict_sim

SAMPLES = 8


class TwoHeads(torch.nn.Module):
    """Conv, ReLU, a pooled head and a per-position head: outputs of 2 and 4 dimensions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 3)
        self.map = torch.nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.conv(x))
        return self.head(hidden.mean((2, 3))) * 5.0, self.map(hidden)


def _setup(tmp_path):
    _, sim, calibration = strict_sim(TwoHeads, tmp_path, (1, 1, 8, 8), SAMPLES)
    return sim, {"input": calibration.arrays["input"][:SAMPLES]}


def _batches_run(sim, monkeypatch) -> list[int]:
    """The sample count of every forward the pricing runs (the executor itself runs them)."""
    executor, seen = sim.torch_executor(), []
    real_run = executor.run

    def run(feeds, **kwargs):
        seen.append(int(feeds["input"].shape[0]))
        return real_run(feeds, **kwargs)

    monkeypatch.setattr(executor, "run", run)
    return seen


def test_samples_over_the_budget_go_through_in_chunks_that_fit(tmp_path, monkeypatch):
    sim, feeds = _setup(tmp_path)
    seen = _batches_run(sim, monkeypatch)
    sensitivity.estimate_noise(sim, feeds, seed=0)
    assert seen == [1, SAMPLES]  # the sizing forward, then one pass: it fits

    per_sample = _activation_bytes(sim, feeds) // SAMPLES
    seen.clear()
    sensitivity.estimate_noise(sim, feeds, seed=0, max_graph_bytes=3 * per_sample)
    assert seen == [1, 3, 3, 2]

    seen.clear()
    one = {"input": feeds["input"][:1]}
    sensitivity.estimate_noise(sim, one, seed=0, max_graph_bytes=1)
    assert seen == [1]  # one sample cannot be cut: no sizing pass either


def _activation_bytes(sim, feeds) -> int:
    held = [0]

    def hook(name, value):
        if name in sim.activation_encodings and value.is_floating_point():
            held[0] += value.numel() * value.element_size()
        return value

    with torch.no_grad():
        sim.torch_executor().run(to_torch(feeds), hook=hook)
    return held[0]


def test_chunked_pricing_prices_what_one_pass_prices(tmp_path):
    """The same signal, and over many projections the same noise per quantizer: the estimate is
    a sum over samples, only the random projections differ."""
    sim, feeds = _setup(tmp_path)
    whole = [sensitivity.estimate_noise(sim, feeds, seed=s) for s in range(60)]
    chunked = [sensitivity.estimate_noise(sim, feeds, seed=s, max_graph_bytes=1) for s in range(60)]
    assert np.isclose(chunked[0].signal, whole[0].signal, rtol=1e-6)
    for table in ("activations", "weights"):
        names = getattr(whole[0], table)
        assert names and set(getattr(chunked[0], table)) == set(names)
        for name in names:
            one_pass = np.mean([getattr(e, table)[name] for e in whole])
            in_chunks = np.mean([getattr(e, table)[name] for e in chunked])
            assert one_pass > 0
            assert abs(np.log(in_chunks / one_pass)) < np.log(1.35), (table, name)


def test_per_channel_chunks_weigh_each_channel_by_its_power_over_every_sample(tmp_path):
    """Relative noise divides by a channel's power: over all samples, not over a chunk's."""
    sim, feeds = _setup(tmp_path)
    chunks = [to_torch(sensitivity._samples(feeds, i, i + 3)) for i in range(0, SAMPLES, 3)]
    with torch.no_grad():
        outputs = sim.torch_executor().run(to_torch(feeds))
    expected = [
        sensitivity._power_by_channel(o, sensitivity._axis(o, None)) for o in outputs.values()
    ]
    summed = sensitivity._channel_power(sim, chunks, {})
    assert [tuple(p.shape) for p in summed] == [(3,), (2,)]
    for got, want in zip(summed, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    relative = sensitivity.estimate_noise(sim, feeds, per_channel=True, max_graph_bytes=1)
    assert relative.signal == 5.0  # channels of the two outputs, not summed per chunk
    assert relative.activations and all(v > 0 for v in relative.activations.values())
