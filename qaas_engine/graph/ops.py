"""Importing this module registers every torch implementation of an ONNX op in ``OP_REGISTRY``.

The ops live in modules by kind: :mod:`.ops_nn` (conv, pooling, batch norm, activations),
:mod:`.ops_resize` (Resize, Upsample, GridSample), :mod:`.ops_attention` (Attention),
:mod:`.ops_rnn` (RNN, GRU, LSTM),
:mod:`.ops_norm` (layer, instance, group norms, LRN), :mod:`.ops_math` (elementwise math,
bitwise, the remaining reductions), :mod:`.ops_index` (gather/scatter, block moves),
:mod:`.ops_sequence` (sequences and optionals), :mod:`.ops_signal` (DFT, windows) and
:mod:`.ops_tensor` (arithmetic, shape, indexing, reduction, constants).
"""

from qaas_engine.graph import (
    ops_attention,
    ops_index,
    ops_math,
    ops_nn,
    ops_norm,
    ops_resize,
    ops_rnn,
    ops_sequence,
    ops_signal,
    ops_tensor,
)
from qaas_engine.graph.registry import OP_REGISTRY

__all__ = [
    "OP_REGISTRY",
    "ops_attention",
    "ops_index",
    "ops_math",
    "ops_nn",
    "ops_norm",
    "ops_resize",
    "ops_rnn",
    "ops_sequence",
    "ops_signal",
    "ops_tensor",
]
