"""A model run in ONNX Runtime with chosen intermediate tensors exposed as extra outputs.

The gradient-free passes (calibration statistics, evaluation, the per-layer analysis) need the
float model's activations, not its gradients; ORT computes them several times faster than the
op-by-op torch executor and needs no torch. Exposed tensors stay alive until a run returns, so
a batch is split into chunks whose exposed bytes fit ``budget_bytes``: peak memory is the model
plus a bounded slice of activations, whatever the batch or the model size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx

from qaas_engine.sessions import session
from qaas_engine.tensors import batch_size

TAP_BUDGET_BYTES = 64 * 2**20  # exposed activations held at once, per chunk


class TappedModel:
    """Runs ``model`` in ORT and returns its graph outputs plus the ``taps`` it can reach.

    Taps that are graph inputs are read from the feeds; taps no main-graph node produces
    (inside an If/Loop body, or pruned) are listed in ``unreachable`` and never returned.
    Raises whatever ONNX Runtime raises when it cannot load the model: callers fall back to
    the torch executor.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        taps: Iterable[str] = (),
        *,
        optimized: bool = True,
        batched: bool = True,
        budget_bytes: int = TAP_BUDGET_BYTES,
    ) -> None:
        graph = model.graph
        produced = {name for node in graph.node for name in node.output if name}
        self.graph_inputs = {value.name for value in graph.input}
        self.output_names = [value.name for value in graph.output]
        wanted = list(dict.fromkeys(taps))
        self.from_feeds = [t for t in wanted if t in self.graph_inputs]
        exposed = [t for t in wanted if t in produced and t not in self.output_names]
        self.unreachable = [t for t in wanted if t not in produced and t not in self.graph_inputs]
        # untyped outputs: ORT infers their types, and a mistyped guess would be refused
        self.session = session(model, optimized=optimized, arena=False, extra_outputs=exposed)
        self.exposed = exposed
        self.fetch = self.output_names + exposed
        self.budget_bytes = budget_bytes
        self.batched = batched  # samples lie on axis 0 of every feed: chunks may split them
        self._bytes_per_sample: float | None = None
        self.last_count = 0  # samples in the chunk the last run returned

    def run(self, feeds: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Graph outputs and taps, one dict per chunk of samples (the whole batch when the
        exposed tensors fit the budget, or when samples are not on axis 0)."""
        total = batch_size(feeds) if self.batched else 1
        start = 0
        while start < total:
            chunk = self._chunk_size(total - start) if self.batched else total
            part = (
                dict(feeds)
                if start == 0 and chunk >= total
                else samples(feeds, start, start + chunk)
            )
            yield self._run_once(part, count=chunk)
            start += chunk

    def chunk_for(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Samples per run that keep the exposed tensors within budget (measures on first use)."""
        total = batch_size(feeds) if self.batched else 1
        if self._bytes_per_sample is None and self.exposed and total > 1:
            next(self.run(samples(feeds, 0, 1)))
        return self._chunk_size(total)

    def _run_once(self, feeds: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        values = self.session.run(self.fetch, dict(feeds))
        self.last_count = count
        result = dict(zip(self.fetch, values, strict=True))
        for name in self.from_feeds:
            result[name] = np.asarray(feeds[name])
        if self._bytes_per_sample is None and self.exposed:
            exposed_bytes = sum(result[t].nbytes for t in self.exposed)
            self._bytes_per_sample = exposed_bytes / max(count, 1)
        return result

    def _chunk_size(self, remaining: int) -> int:
        if not self.exposed or remaining <= 1:
            return max(remaining, 1)
        if self._bytes_per_sample is None:
            return 1  # the first run measures what one sample exposes
        fits = int(self.budget_bytes // max(self._bytes_per_sample, 1.0))
        return max(1, min(remaining, fits))


def samples(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples ``start:stop`` of batched feeds; a 0-d feed (a scalar input) goes whole."""
    return {name: array[start:stop] if np.ndim(array) else array for name, array in feeds.items()}
