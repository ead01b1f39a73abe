"""Streaming statistics of activations: constant memory per tensor, whatever the data size.

Calibration runs in two passes when a method needs a histogram: pass one finds each tensor's
min/max, pass two fills a fixed-range histogram. Only these statistics are kept, never the
activations themselves.
"""

from __future__ import annotations

import numpy as np
import torch

HISTOGRAM_BINS = 2048


class MinMaxObserver:
    """Running min/max of the finite values; counts non-finite values so they can be reported."""

    def __init__(self) -> None:
        self.low = np.inf
        self.high = -np.inf
        self.non_finite = 0
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        finite = torch.isfinite(x)
        n_finite = int(finite.sum())
        self.non_finite += x.numel() - n_finite
        self.count += x.numel()
        if n_finite == 0:
            return
        values = x[finite] if n_finite < x.numel() else x
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))

    @property
    def seen(self) -> bool:
        return np.isfinite(self.low) and np.isfinite(self.high)


class HistogramObserver:
    """Histogram of finite values over a range fixed by a preceding min/max pass."""

    def __init__(self, low: float, high: float, bins: int = HISTOGRAM_BINS) -> None:
        if high <= low:
            high = low + 1e-8
        self.low, self.high, self.bins = float(low), float(high), bins
        self.counts = np.zeros(bins, dtype=np.float64)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        x = x.clamp(self.low, self.high)
        hist = torch.histc(x, bins=self.bins, min=self.low, max=self.high)
        self.counts += hist.cpu().numpy().astype(np.float64)

    @property
    def bin_centers(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, self.bins + 1)
        return (edges[:-1] + edges[1:]) / 2
