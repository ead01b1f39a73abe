"""Range estimators: statistics in, a clipping range out.

Activations use histograms (percentile, MSE) or min/max; weights are searched on the exact
values, per channel when the scheme says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qaas_engine.quant.encoding import Encoding, QuantScheme
from qaas_engine.quant.observers import HistogramObserver, MinMaxObserver
from qaas_engine.tensors import to_numpy

DEFAULT_PERCENTILE = 99.99
# Candidate clipping ratios for the MSE search: dense near 1, where the optimum usually is.
_MSE_RATIOS = np.concatenate([np.linspace(0.05, 0.5, 10), np.linspace(0.52, 1.0, 49)])


def minmax_range(minmax: MinMaxObserver) -> tuple[float, float]:
    return float(minmax.low), float(minmax.high)


def percentile_range(
    hist: HistogramObserver, percentile: float = DEFAULT_PERCENTILE
) -> tuple[float, float]:
    """Clip the tails that hold (100 - percentile)% of the mass on each side."""
    cdf = np.cumsum(hist.counts)
    total = cdf[-1]
    if total == 0:
        return hist.low, hist.high
    edges = np.linspace(hist.low, hist.high, hist.bins + 1)
    tail = total * (100.0 - percentile) / 100.0
    lo_idx = int(np.searchsorted(cdf, tail, side="right"))
    hi_idx = int(np.searchsorted(cdf, total - tail, side="left"))
    low = edges[lo_idx] if hist.low < 0 else hist.low
    high = edges[min(hi_idx + 1, hist.bins)]
    return float(low), float(high)


def _quantization_mse(
    values: np.ndarray,
    weights: np.ndarray,
    scheme: QuantScheme,
    lows: np.ndarray,
    highs: np.ndarray,
) -> np.ndarray:
    """Weighted MSE of quantizing ``values`` with each candidate range (rows of the result)."""
    encoding = Encoding.from_range(scheme, lows, highs)
    scale = encoding.scale.astype(np.float64)[:, None]
    zero_point = encoding.zero_point.astype(np.float64)[:, None]
    x_int = np.clip(np.round(values[None, :] / scale) + zero_point, scheme.qmin, scheme.qmax)
    error = ((x_int - zero_point) * scale - values[None, :]) ** 2
    return (error * weights[None, :]).sum(axis=1)


def _histogram_mse(
    centers: np.ndarray,
    counts: np.ndarray,
    scheme: QuantScheme,
    lows: np.ndarray,
    highs: np.ndarray,
) -> np.ndarray:
    """Expected MSE per candidate: step^2/12 for the mass inside, squared clipping outside.

    Bins are wider than the grid step for narrow candidates, so quantizing bin centres would
    misjudge the rounding error; the uniform-noise model does not. Each candidate's clipped
    tails come from running sums over the sorted bins (O(bins + candidates), not their
    product: a real model's activations spent 0.35 s here), expanded about the histogram's own
    end on each side, so the tails' squared distances lose nothing to cancellation that the
    rounding term would notice.
    """
    encoding = Encoding.from_range(scheme, lows, highs)
    step = encoding.scale.astype(np.float64)
    low, high = encoding.low.astype(np.float64), encoding.high.astype(np.float64)
    weights = counts.astype(np.float64)
    # bins whose centre lies in [low, high] are inside; below: [0, first); above: [end, bins)
    first = np.searchsorted(centers, low, side="left")
    end = np.maximum(np.searchsorted(centers, high, side="right"), first)
    mass = np.concatenate([[0.0], np.cumsum(weights)])
    inside = mass[end] - mass[first]
    above = _tail_error(centers, weights, high, end, above=True)
    below = _tail_error(centers, weights, low, first, above=False)
    return inside * step**2 / 12.0 + above + below


def _tail_error(
    centers: np.ndarray, weights: np.ndarray, bounds: np.ndarray, cut: np.ndarray, *, above: bool
) -> np.ndarray:
    """Sum of ``weights * (centre - bound)^2`` over the bins past each candidate's ``cut``
    (from ``cut`` up when ``above``, below it otherwise), from three running sums taken from
    that end inward: sum(w (u - v)^2) with u = centre - end and v = bound - end."""
    if above:
        origin = centers[-1]
        u = centers[::-1] - origin
        taken = len(centers) - cut  # bins in the tail, counted from the top
    else:
        origin = centers[0]
        u = centers - origin
        taken = cut
    w = weights[::-1] if above else weights
    zero = np.zeros(1)
    s0 = np.concatenate([zero, np.cumsum(w)])[taken]
    s1 = np.concatenate([zero, np.cumsum(w * u)])[taken]
    s2 = np.concatenate([zero, np.cumsum(w * u * u)])[taken]
    v = bounds - origin
    return np.maximum(s2 - 2.0 * v * s1 + v * v * s0, 0.0)


def _candidate_ranges(low: float, high: float, scheme: QuantScheme) -> tuple[np.ndarray, ...]:
    if scheme.symmetric:
        bound = max(abs(low), abs(high))
        highs = _MSE_RATIOS * bound
        lows = -highs if scheme.signed and low < 0 else np.zeros_like(highs)
        return lows, highs
    return _MSE_RATIOS * min(low, 0.0), _MSE_RATIOS * max(high, 0.0)


def mse_range(hist: HistogramObserver, scheme: QuantScheme) -> tuple[float, float]:
    """The clipping range that minimises the expected squared quantization error.

    Symmetric grids search one bound; asymmetric ones search the two ends in turn (coordinate
    descent), since a long tail is usually on one side only.
    """
    if hist.counts.sum() == 0:
        return hist.low, hist.high
    centers, counts = hist.bin_centers, hist.counts
    if scheme.symmetric:
        lows, highs = _candidate_ranges(hist.low, hist.high, scheme)
        best = int(np.argmin(_histogram_mse(centers, counts, scheme, lows, highs)))
        return float(lows[best]), float(highs[best])
    low, high = min(hist.low, 0.0), max(hist.high, 0.0)
    for _ in range(2):
        highs = _MSE_RATIOS * max(hist.high, 0.0)
        errors = _histogram_mse(centers, counts, scheme, np.full_like(highs, low), highs)
        high = float(highs[int(np.argmin(errors))])
        lows = _MSE_RATIOS * min(hist.low, 0.0)
        errors = _histogram_mse(centers, counts, scheme, lows, np.full_like(lows, high))
        low = float(lows[int(np.argmin(errors))])
    return low, high


def _per_channel_view(weight: Any, scheme: QuantScheme) -> np.ndarray:
    w = to_numpy(weight).astype(np.float64)
    if not scheme.per_channel:
        return w.reshape(1, -1)
    return np.moveaxis(w, scheme.axis, 0).reshape(w.shape[scheme.axis], -1)


def weight_encoding(weight: Any, scheme: QuantScheme, method: str) -> Encoding:
    """Encoding for a weight tensor: min-max, or the MSE-optimal clipping per channel."""
    rows = _per_channel_view(weight, scheme)
    lows, highs = rows.min(axis=1), rows.max(axis=1)
    if method == "mse":
        for i, row in enumerate(rows):
            cand_lows, cand_highs = _candidate_ranges(lows[i], highs[i], scheme)
            errors = _quantization_mse(row, np.ones_like(row), scheme, cand_lows, cand_highs)
            best = int(np.argmin(errors))
            lows[i], highs[i] = cand_lows[best], cand_highs[best]
    return Encoding.from_range(scheme, lows, highs)


def _histogram(hist: HistogramObserver | None) -> HistogramObserver:
    if hist is None:
        raise ValueError("this range estimator needs the histogram pass")
    return hist


ActivationEstimator = Callable[[MinMaxObserver, HistogramObserver | None, QuantScheme], tuple]

ACTIVATION_METHODS: dict[str, tuple[bool, ActivationEstimator]] = {
    # name: (needs a histogram pass, estimator)
    "minmax": (False, lambda mm, hist, scheme: minmax_range(mm)),
    "percentile": (True, lambda mm, hist, scheme: percentile_range(_histogram(hist))),
    "mse": (True, lambda mm, hist, scheme: mse_range(_histogram(hist), scheme)),
}
