"""A stateful model measured as a stream: where the data recorded the float model's state, the
quantized model is fed the state it returned itself, as deployment runs it (silero-vad: judged
on recorded states, auto said met where the streamed model measured 22 dB against 30)."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.streams import state_pairs

CHUNKS, STREAM = 48, 24  # two streams of 24 chunks, each from a zero state


class Recurrent(torch.nn.Module):
    """A state that feeds back with gain near 1, so its error builds up along a stream."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(8, 16)
        self.back = torch.nn.Linear(16, 16, bias=False)
        self.head = torch.nn.Linear(16, 1)
        with torch.no_grad():
            self.back.weight.copy_(0.97 * torch.linalg.qr(torch.randn(16, 16))[0])

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = torch.tanh(self.inp(x) + self.back(state))
        return torch.sigmoid(self.head(new)), new


def _stream(session: ort.InferenceSession, chunks: np.ndarray) -> tuple[list, list, list]:
    """Each chunk with the state the session returned for the chunk before (zero at a stream's
    start): the states fed, the probabilities and the states returned."""
    fed, probabilities, returned = [], [], []
    state = np.zeros((1, 16), np.float32)
    for index, chunk in enumerate(chunks):
        if index % STREAM == 0:
            state = np.zeros((1, 16), np.float32)
        fed.append(state)
        probability, state = session.run(None, {"x": chunk, "state": state})
        probabilities.append(probability)
        returned.append(state)
    return fed, probabilities, returned


def _sqnr(reference: list, test: list) -> float:
    ref, out = np.concatenate(reference).astype(np.float64), np.concatenate(test)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2)))


def test_a_stateful_model_is_measured_with_its_own_state(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "recurrent.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Recurrent().eval(), (torch.randn(1, 8), torch.zeros(1, 16)), str(path), dynamo=False,
            opset_version=17, input_names=["x", "state"], output_names=["prob", "stateN"],
        )  # fmt: skip
    imported = import_model(path)
    assert state_pairs(imported.model) == [("state", "stateN")]
    chunks = np.random.default_rng(0).standard_normal((CHUNKS, 1, 8)).astype(np.float32)
    floating = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fed, reference, reference_states = _stream(floating, chunks)
    data = tmp_path / "stream.npz"
    np.savez(data, x=chunks, state=np.stack(fed))  # stacked: one sample per chunk
    calibration = load_npz(data, model_inputs(imported.model))
    result = quantize(imported, QuantSpec(strict_bits=True), calibration=calibration)
    metrics = result.report["metrics"]
    assert metrics["engines"]["stream"].startswith(f"{CHUNKS - 2} samples")
    assert metrics["stream_states"] == {"state": "stateN"}

    quantized = ort.InferenceSession(
        result.quantized_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    _, streamed, streamed_states = _stream(quantized, chunks)
    recorded = [
        quantized.run(None, {"x": c, "state": s})[0] for c, s in zip(chunks, fed, strict=True)
    ]
    as_deployed = _sqnr(reference, streamed)
    measured = metrics["outputs"]["prob"]["onnxruntime"]["sqnr_db"]
    # the report's figure is the streamed one, not the one on recorded states
    assert abs(measured - as_deployed) < 0.01
    assert abs(_sqnr(reference, recorded) - as_deployed) > 1.0
    state_db = metrics["outputs"]["stateN"]["onnxruntime"]["sqnr_db"]
    assert abs(state_db - _sqnr(reference_states, streamed_states)) < 0.01
