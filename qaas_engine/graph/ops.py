"""Importing this module registers every torch implementation of an ONNX op in ``OP_REGISTRY``.

The ops live in two modules by kind: :mod:`.ops_nn` (conv, pooling, normalisation, activations,
resize) and :mod:`.ops_tensor` (elementwise, shape, indexing, reduction, constants).
"""

from qaas_engine.graph import ops_nn, ops_tensor
from qaas_engine.graph.registry import OP_REGISTRY

__all__ = ["OP_REGISTRY", "ops_nn", "ops_tensor"]
