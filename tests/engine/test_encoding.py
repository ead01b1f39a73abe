"""The quantizer computes exactly what ONNX QuantizeLinear/DequantizeLinear compute."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qaas_engine.export.qdq import unsigned_container
from qaas_engine.quant.encoding import Encoding, QuantScheme
from qaas_engine.quant.estimators import mse_range, percentile_range, weight_encoding
from qaas_engine.quant.observers import HistogramObserver, MinMaxObserver


def ort_qdq(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(zero_point, dtype), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("symmetric,signed", [(False, False), (True, True), (True, False)])
def test_fake_quant_matches_onnx_runtime(symmetric, signed):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * 3).astype(np.float32)
    if not signed:
        x = np.abs(x) if symmetric else x
    scheme = QuantScheme(bits=8, symmetric=symmetric, signed=signed)
    enc = Encoding.from_range(scheme, x.min() * 0.8, x.max() * 0.8)  # some values clip
    ours = enc.fake_quantize(torch.from_numpy(x)).numpy()
    dtype = np.int8 if signed else np.uint8
    theirs = ort_qdq(x, float(enc.scale[0]), int(enc.zero_point[0]), dtype)
    np.testing.assert_array_equal(ours, theirs)


def test_unsigned_container_is_the_same_grid():
    x = torch.linspace(-2, 2, 1001)
    enc = Encoding.from_range(QuantScheme(bits=4, symmetric=True, signed=True), -1.5, 1.5)
    shifted = unsigned_container(enc)
    assert shifted.scheme.qmin == 0 and shifted.scheme.qmax == 15
    assert torch.equal(enc.fake_quantize(x), shifted.fake_quantize(x))


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 12, 16])
def test_grid_covers_range_and_zero_exactly(bits):
    scheme = QuantScheme(bits=bits, symmetric=False, signed=False)
    enc = Encoding.from_range(scheme, -0.7, 2.3)
    zero = enc.fake_quantize(torch.zeros(3))
    assert torch.equal(zero, torch.zeros(3))  # zero padding stays exact
    assert enc.low[0] <= -0.7 + enc.scale[0] and enc.high[0] >= 2.3 - enc.scale[0]


def test_aimet_offsets_follow_aimet_sign_convention():
    signed = Encoding.from_range(QuantScheme(8, True, True), -1, 1)
    assert signed.aimet_offsets() == [-128]
    asym = Encoding.from_range(QuantScheme(8, False, False), -1, 3)
    assert asym.aimet_offsets() == [-int(asym.zero_point[0])]
    # AIMET: x = (x_u + offset) * scale for x_u in [0, 255]; its minimum is our low.
    assert np.isclose((0 + asym.aimet_offsets()[0]) * asym.scale[0], asym.low[0])


def test_per_channel_weight_encoding_uses_each_channel_range():
    weight = torch.stack([torch.linspace(-1, 1, 9), torch.linspace(-100, 100, 9)]).reshape(
        2, 1, 3, 3
    )
    scheme = QuantScheme(8, True, True, per_channel=True, axis=0)
    enc = weight_encoding(weight, scheme, "minmax")
    np.testing.assert_allclose(enc.scale, [1 / 127, 100 / 127], rtol=1e-6)
    error = (enc.fake_quantize(weight) - weight).abs().amax(dim=(1, 2, 3))
    assert error[0] <= enc.scale[0] / 2 + 1e-7


def _observe(values: np.ndarray) -> tuple[MinMaxObserver, HistogramObserver]:
    minmax = MinMaxObserver()
    minmax.observe(torch.from_numpy(values))
    hist = HistogramObserver(minmax.low, minmax.high)
    hist.observe(torch.from_numpy(values))
    return minmax, hist


def test_percentile_and_mse_clip_a_rare_outlier():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(1_000_000), [80.0]]).astype(np.float32)
    minmax, hist = _observe(values)
    scheme = QuantScheme(8, False, False)
    assert percentile_range(hist)[1] < 10
    low, high = mse_range(hist, scheme)
    assert high < 0.5 * minmax.high

    def error(lo, hi):
        enc = Encoding.from_range(scheme, lo, hi)
        x = torch.from_numpy(values)
        return float(((enc.fake_quantize(x) - x) ** 2).mean())

    assert error(low, high) < error(minmax.low, minmax.high)


def test_observer_ignores_and_counts_non_finite_values():
    obs = MinMaxObserver()
    obs.observe(torch.tensor([1.0, -float("inf"), 2.0, float("nan")]))
    assert (obs.low, obs.high, obs.non_finite) == (1.0, 2.0, 2)


def test_histogram_bins_are_torch_histc_bins_of_the_finite_values():
    """Clamped into [low, high], bin = int((v - low) / width), the top edge in the last bin;
    inf and NaN left out (the observer computes this in one buffer, never copying needlessly)."""
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        values = (rng.standard_normal(50_000) * 4).astype(dtype)
        values[[3, 10, 20]] = [np.nan, np.inf, -np.inf]
        observer = HistogramObserver(-3.0, 5.0, bins=64)
        observer.observe(values[:25_000])
        observer.observe(values[25_000:])
        finite = values[np.isfinite(values)]
        width = (5.0 - -3.0) / 64
        index = ((np.clip(finite, -3.0, 5.0) - -3.0) / width).astype(np.int64)
        expected = np.bincount(np.minimum(index, 63), minlength=64)
        np.testing.assert_array_equal(observer.counts, expected)
        assert observer.counts.sum() == finite.size


def _clamped_counts(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """The histogram as the observer computed it before its in-range path: every value
    clamped into [low, high], then (v - low) / width in the values' own type."""
    scaled = np.maximum(values, low)
    np.minimum(scaled, high, out=scaled)
    scaled -= low
    scaled /= (high - low) / bins
    index = np.minimum(scaled.astype(np.int64), bins - 1)
    return np.bincount(index, minlength=bins)[:bins].astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_in_range_path_bins_as_the_clamped_one(dtype):
    """A tensor inside the range skips the finite check and the clamp: the same counts, edges
    included (the range from the tensor's own min/max, as calibration sets it; a low that
    float32 cannot hold; values outside the range and non-finite ones take the old path)."""
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(50_000) * 3).astype(dtype)
    cases = [
        (values, float(values.min()), float(values.max())),
        (values, float(values.min()) - 0.1, float(values.max()) + 1e-9),
        (np.abs(values), 0.1, float(np.abs(values).max())),  # values below low: clamped
        (values, -1.0, 1.0),
        (np.array([-0.0, 0.0, 1.0], dtype), 0.0, 1.0),
    ]
    for data, low, high in cases:
        hist = HistogramObserver(low, high)
        hist.observe(data)
        expected = _clamped_counts(data.copy(), hist.low, hist.high, hist.bins)
        np.testing.assert_array_equal(hist.counts, expected)
    with_nan = values.copy()
    with_nan[::7] = np.nan
    hist = HistogramObserver(float(values.min()), float(values.max()))
    hist.observe(with_nan)
    finite = with_nan[np.isfinite(with_nan)]
    np.testing.assert_array_equal(hist.counts, _clamped_counts(finite, hist.low, hist.high, 2048))


def test_histogram_given_the_whole_tensors_extremes_bins_its_sample_the_same():
    """The rules' pass hands the observer the extremes of the tensor it sampled: the counts
    are those of the sample binned on its own, edges and values outside the range included."""
    rng = np.random.default_rng(5)
    whole = (rng.standard_normal(40_000) * 2).astype(np.float32)
    sample = whole[3::7]
    extremes = (float(whole.min()), float(whole.max()))
    for low, high in [extremes, (extremes[0] + 0.5, extremes[1] - 0.5), (-1.0, 1.0)]:
        given, alone = HistogramObserver(low, high), HistogramObserver(low, high)
        given.observe(sample, extremes)
        alone.observe(sample)
        np.testing.assert_array_equal(given.counts, alone.counts)
        assert given.counts.sum() == sample.size


def _direct_histogram_mse(centers, counts, scheme, lows, highs):
    """Every candidate against every bin: the definition the running sums must agree with."""
    encoding = Encoding.from_range(scheme, lows, highs)
    step = encoding.scale.astype(np.float64)[:, None]
    low, high = encoding.low[:, None], encoding.high[:, None]
    inside = (centers[None, :] >= low) & (centers[None, :] <= high)
    clipped = np.clip(centers[None, :], low, high)
    error = np.where(inside, step**2 / 12.0, (centers[None, :] - clipped) ** 2)
    return (error * counts[None, :]).sum(axis=1)


@pytest.mark.parametrize(
    "scheme",
    [QuantScheme(8, False, False), QuantScheme(8, True, True), QuantScheme(16, False, False)],
)
def test_histogram_mse_running_sums_match_every_bin_summed(scheme):
    """The MSE search prices each candidate from running sums; it must pick what summing every
    bin picks, on skewed, shifted and outlier-stretched tensors."""
    from qaas_engine.quant.estimators import _candidate_ranges, _histogram_mse

    rng = np.random.default_rng(7)
    tensors = [
        np.maximum(rng.standard_normal(30_000), 0) * 6,
        rng.standard_normal(30_000) * 2 + 1.5,
        np.concatenate([rng.standard_normal(30_000), rng.uniform(-90, 90, 5)]),
        rng.exponential(1.0, 30_000) - 0.3,
    ]
    for values in tensors:
        values = values.astype(np.float32)
        if scheme.symmetric and values.min() < 0 and not scheme.signed:
            continue
        hist = HistogramObserver(float(values.min()), float(values.max()))
        hist.observe(values)
        lows, highs = _candidate_ranges(hist.low, hist.high, scheme)
        fast = _histogram_mse(hist.bin_centers, hist.counts, scheme, lows, highs)
        direct = _direct_histogram_mse(hist.bin_centers, hist.counts, scheme, lows, highs)
        np.testing.assert_allclose(fast, direct, rtol=1e-9)
        assert int(np.argmin(fast)) == int(np.argmin(direct))
