"""Conversions between the numpy arrays that data and ONNX Runtime speak and torch tensors.

Kept free of a module-level torch import: post-training passes that run in ONNX Runtime pass
numpy arrays through here without ever loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def to_torch(feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Feeds as tensors (arrays are shared, not copied)."""
    import torch

    # np.asarray: a scalar input batch arrives as a numpy scalar, which from_numpy refuses
    return {
        name: value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        for name, value in feeds.items()
    }


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from an array or a torch tensor (a CPU tensor's memory is shared)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def batch_size(feeds: Mapping[str, Any]) -> int:
    """Samples in batched feeds (arrays or tensors): axis 0 of the first feed that has one; a
    scalar feed has none."""
    if not feeds:
        return 0
    for value in feeds.values():
        if np.ndim(value):
            return int(np.shape(value)[0])
    return 1
