"""Moved to :mod:`qaas_engine.cost` (``cost.size``, ``cost.shapes``); re-exported here only for
callers not yet updated (``flow.py``). Import from ``qaas_engine.cost`` in new code."""

from qaas_engine.cost.shapes import macs_per_sample
from qaas_engine.cost.size import count_params, float_bytes, quantized_bytes

__all__ = ["count_params", "float_bytes", "macs_per_sample", "quantized_bytes"]
