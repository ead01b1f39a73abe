"""Streaming statistics of activations: constant memory per tensor, whatever the data size.

Calibration runs in two passes when a method needs a histogram: pass one finds each tensor's
min/max, pass two fills a fixed-range histogram. Only these statistics are kept, never the
activations themselves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

HISTOGRAM_BINS = 2048


def as_array(x: Any) -> np.ndarray:
    """A float numpy view of a numpy array or a torch tensor (torch is never imported here)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    array = np.asarray(x)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)


class MinMaxObserver:
    """Running min/max of the finite values; counts non-finite values so they can be reported."""

    def __init__(self) -> None:
        self.low = np.inf
        self.high = -np.inf
        self.non_finite = 0
        self.count = 0

    def observe(self, x: Any) -> None:
        values = as_array(x).reshape(-1)
        self.count += values.size
        if values.size == 0:
            return
        low, high = values.min(), values.max()
        if not (np.isfinite(low) and np.isfinite(high)):  # NaN or inf somewhere: mask them out
            finite = np.isfinite(values)
            self.non_finite += int(values.size - np.count_nonzero(finite))
            values = values[finite]
            if values.size == 0:
                return
            low, high = values.min(), values.max()
        self.low = min(self.low, float(low))
        self.high = max(self.high, float(high))

    @property
    def seen(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


class HistogramObserver:
    """Histogram of finite values over a range fixed by a preceding min/max pass."""

    def __init__(self, low: float, high: float, bins: int = HISTOGRAM_BINS) -> None:
        if high <= low:
            high = low + 1e-8
        self.low, self.high, self.bins = float(low), float(high), bins
        self.counts = np.zeros(bins, dtype=np.float64)

    def observe(self, x: Any, extremes: tuple[float, float] | None = None) -> None:
        """Count ``x``'s finite values, clamped into the range. ``extremes``: the smallest and
        largest value of ``x`` or of a tensor ``x`` was sampled from, where the caller has
        them already (the rules' pass reads each whole tensor's): no second read of ``x``."""
        values = as_array(x).reshape(-1)
        if values.size == 0:
            return
        # the extremes first (two reads, no buffer): where both are finite and inside
        # [low, high], as they are wherever the range came from these very tensors' min/max,
        # no value is non-finite and the clamp below changes none, so both are skipped (a
        # float32 v >= low is >= low rounded to float32 too: rounding is monotonic)
        smallest, largest = extremes or (float(values.min()), float(values.max()))
        inside = math.isfinite(smallest) and math.isfinite(largest)
        if inside and self.low <= smallest and largest <= self.high:
            self._bin(values - self.low)
            return
        finite = np.isfinite(values)
        if not finite.all():  # a copy only when something must go
            values = values[finite]
        if values.size == 0:
            return
        # bin index as torch.histc computes it: values clamped into [low, high], top edge in the
        # last bin; the arithmetic of (clip(v) - low) / width in v's type, in one buffer
        scaled = np.maximum(values, self.low)
        np.minimum(scaled, self.high, out=scaled)
        scaled -= self.low
        self._bin(scaled)

    def _bin(self, scaled: np.ndarray) -> None:
        """Count ``v - low`` (``scaled``, overwritten) into the bins, the top edge in the last.
        A value at the top edge (or rounded up to it) lands one past the last bin, and is
        folded into it after counting, not clamped value by value."""
        width = (self.high - self.low) / self.bins
        scaled /= width
        counted = np.bincount(scaled.astype(np.intp), minlength=self.bins)
        self.counts += counted[: self.bins]
        if counted.size > self.bins:
            self.counts[-1] += counted[self.bins :].sum()

    @property
    def bin_centers(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, self.bins + 1)
        return (edges[:-1] + edges[1:]) / 2
