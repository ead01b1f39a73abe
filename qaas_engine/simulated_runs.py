"""Outputs of an exported graph already computed in ONNX Runtime, keyed by the graph's bytes
and by how its session was made (as deployed, or as the simulation runs it), so the report's
evaluation does not compute them again.

The rules measure the exported graph on the first calibration samples (``rules.Probe``); where
no rule changed a grid after that measurement, the evaluation on the calibration data runs the
very same graph on the very same first samples, in a session made the same way: the outputs
are the same numbers, and on a large detector those runs cost more than ONNX Runtime's whole
quantizer. Only a byte-identical graph, the same kind of session and equal feeds are reused,
so nothing the report says changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from qaas_engine.weights_apart import tensor_bytes, without_initializers

# Graphs above this are not digested (a serialized copy of a large model per measurement would
# cost more memory than the runs it saves), and the outputs kept stop at KEPT_BYTES.
MAX_GRAPH_BYTES = 128 * 2**20
KEPT_BYTES = 64 * 2**20


def graph_digest(model: onnx.ModelProto) -> bytes | None:
    """The graph by value; None for a graph too large to keep runs of. The graph without its
    weights and then each weight are digested apart, each part framed by its length, without
    serializing the whole model first (per rules measurement, 0.1-0.2 s of a 13.5 M-parameter
    model); two graphs share a digest only where every part is the same."""
    if sum(tensor_bytes(tensor) for tensor in model.graph.initializer) > MAX_GRAPH_BYTES:
        return None
    digest = hashlib.sha256()  # SHA extensions: twice blake2b's speed here
    _add(digest, without_initializers(model).SerializeToString())
    for tensor in model.graph.initializer:
        fields = tensor.ListFields()
        if all(field.name in _PLAIN_FIELDS for field, _ in fields):
            _add(digest, b"fields" + len(fields).to_bytes(4, "little"))  # how to read on
            for field, value in fields:  # each field by number, its value framed by length
                _add(digest, field.number.to_bytes(4, "little"))
                _add(digest, value if isinstance(value, bytes) else repr(value).encode())
        else:  # typed data fields, external data, metadata: the tensor serialized whole
            _add(digest, b"whole")
            _add(digest, tensor.SerializeToString())
    return digest.digest()


# A tensor holding only these is digested field by field, each value read once: its raw_data
# as the bytes protobuf hands out (the serialized whole is a second copy of the data, about 40
# ms of 115 per digest of the 13.5 M-parameter LSTM OCR's weights); the others' reprs are exact
# (strings, integers and a list of integers)
_PLAIN_FIELDS = frozenset({"name", "dims", "data_type", "raw_data", "data_location", "doc_string"})


def _add(digest: Any, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


@dataclass
class SimulatedRuns:
    """Per graph digest: the outputs of each of ``batches``, in the order of the graph outputs
    asked for."""

    batches: list[dict[str, np.ndarray]]
    # (digest, optimized) -> outputs; optimized: the session as deployed, else the
    # simulation's session (ORT's Q/DQ rewrites off)
    outputs: dict[tuple[bytes, bool], list[list[np.ndarray]]] = field(default_factory=dict)
    kept_bytes: int = 0
    # the float model's outputs on each of ``batches`` (all graph outputs, in order), which the
    # rules measure against: the evaluation's float reference on the same samples
    references: list[list[np.ndarray]] | None = None

    def record(
        self, digest: bytes | None, outputs: list[list[np.ndarray]], *, optimized: bool
    ) -> None:
        if digest is None or (digest, optimized) in self.outputs:
            return
        size = sum(np.asarray(value).nbytes for batch in outputs for value in batch)
        if self.kept_bytes + size > KEPT_BYTES:
            return
        self.outputs[(digest, optimized)] = outputs
        self.kept_bytes += size

    def lookup(
        self,
        digest: bytes | None,
        index: int,
        feeds: Mapping[str, np.ndarray],
        *,
        optimized: bool,
    ) -> list[np.ndarray] | None:
        """Batch ``index``'s outputs when this graph ran on exactly these feeds in a session
        made this way (``optimized``: as deployed)."""
        known = self.outputs.get((digest, optimized)) if digest is not None else None
        if known is None or index >= len(known) or not _same_feeds(self.batches[index], feeds):
            return None
        return known[index]

    def all_outputs(
        self,
        digest: bytes | None,
        batches: list[dict[str, np.ndarray]],
        *,
        optimized: bool,
    ) -> list[list[np.ndarray]] | None:
        """Every batch's outputs when this graph ran on exactly ``batches`` in a session made
        this way: a measurement of a graph measured before (the rules try a grid and come back
        to one they measured) needs no session and no run."""
        known = [
            self.lookup(digest, index, feeds, optimized=optimized)
            for index, feeds in enumerate(batches)
        ]
        if not known or any(outputs is None for outputs in known):
            return None
        return [outputs for outputs in known if outputs is not None]

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
