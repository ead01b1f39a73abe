"""Outputs of an exported graph already computed in ONNX Runtime with its optimizer off, keyed
by the graph's bytes, so the report's evaluation does not compute them again.

The rules measure the exported graph on the first calibration samples (``rules.Probe``); where
no rule changed a grid after that measurement, the evaluation on the calibration data runs the
very same graph on the very same first samples, in a session made the same way: the outputs
are the same numbers, and on a large detector those runs cost more than ONNX Runtime's whole
quantizer. Only a byte-identical graph and equal feeds are reused, so nothing the report says
changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

# Graphs above this are not digested (a serialized copy of a large model per measurement would
# cost more memory than the runs it saves), and the outputs kept stop at KEPT_BYTES.
MAX_GRAPH_BYTES = 128 * 2**20
KEPT_BYTES = 64 * 2**20


def graph_digest(model: onnx.ModelProto) -> bytes | None:
    """The graph by value (its serialized bytes' digest); None for a graph too large to copy."""
    if model.ByteSize() > MAX_GRAPH_BYTES:
        return None
    return hashlib.blake2b(model.SerializeToString(), digest_size=32).digest()


@dataclass
class SimulatedRuns:
    """Per graph digest: the outputs of each of ``batches``, in the order of the graph outputs
    asked for."""

    batches: list[dict[str, np.ndarray]]
    outputs: dict[bytes, list[list[np.ndarray]]] = field(default_factory=dict)
    kept_bytes: int = 0
    # the float model's outputs on each of ``batches`` (all graph outputs, in order), which the
    # rules measure against: the evaluation's float reference on the same samples
    references: list[list[np.ndarray]] | None = None

    def record(self, digest: bytes | None, outputs: list[list[np.ndarray]]) -> None:
        size = sum(np.asarray(value).nbytes for batch in outputs for value in batch)
        if digest is None or digest in self.outputs or self.kept_bytes + size > KEPT_BYTES:
            return
        self.outputs[digest] = outputs
        self.kept_bytes += size

    def lookup(
        self, digest: bytes | None, index: int, feeds: Mapping[str, np.ndarray]
    ) -> list[np.ndarray] | None:
        """Batch ``index``'s outputs when this graph ran on exactly these feeds."""
        known = self.outputs.get(digest) if digest is not None else None
        if known is None or index >= len(known) or not _same_feeds(self.batches[index], feeds):
            return None
        return known[index]

    def reference(self, index: int, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
        """The float outputs of batch ``index`` when these are exactly its feeds."""
        known = self.references
        if known is None or index >= len(known) or index >= len(self.batches):
            return None
        return known[index] if _same_feeds(self.batches[index], feeds) else None


def _same_feeds(ran: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> bool:
    if ran.keys() != feeds.keys():
        return False
    for name, value in feeds.items():
        other = np.asarray(ran[name])
        value = np.asarray(value)
        if other.dtype != value.dtype or other.shape != value.shape:
            return False
        if not np.array_equal(other, value):
            return False
    return True
