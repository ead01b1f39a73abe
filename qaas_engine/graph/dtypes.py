"""Moving tensors between ONNX element types, numpy arrays and torch tensors.

torch has no arithmetic for unsigned 16/32/64-bit integers, so those are held *widened*: uint16
as int32, uint32 and uint64 as int64 (uint64 by its bit pattern, so values of 2**63 and above
read negative; addition, subtraction, multiplication and bitwise ops still wrap correctly).
Callers that hand values back to the outside world cast to the declared type again, which
restores the unsigned value. Types torch cannot hold at all (float8, 4-bit integers, strings)
stay numpy arrays; only the reference fallback computes with them.
"""

from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch

# ONNX element type -> the torch dtype the engine computes it in.
TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.int32,
    onnx.TensorProto.UINT32: torch.int64,
    onnx.TensorProto.UINT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}

# Unsigned types held widened, with their bit width (a wrap-around modulus below 64).
UNSIGNED_BITS: dict[int, int] = {
    onnx.TensorProto.UINT16: 16,
    onnx.TensorProto.UINT32: 32,
    onnx.TensorProto.UINT64: 64,
}

_WIDENED_NUMPY = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}
_TORCH_NUMPY = {np.dtype(k) for k in (np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64)}
_TORCH_NUMPY |= {np.dtype(k) for k in (np.float16, np.float32, np.float64)}


def to_torch(value: Any) -> Any:
    """A numpy array as the tensor the engine computes with; sequences element-wise; anything
    torch cannot hold (strings, float8, 4-bit types) is returned unchanged."""
    if isinstance(value, list | tuple):
        return [to_torch(v) for v in value]
    if not isinstance(value, np.ndarray | np.generic):
        return value
    array = np.asarray(value)
    if array.dtype in _WIDENED_NUMPY:
        array = array.astype(_WIDENED_NUMPY[array.dtype])
    elif array.dtype == np.uint64:
        array = array.view(np.int64)
    elif array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    elif array.dtype not in _TORCH_NUMPY:
        return array
    return torch.from_numpy(np.array(array, copy=True))


def to_numpy(value: Any) -> Any:
    """The inverse of :func:`to_torch` up to widening (a widened uint32 comes back as int64);
    see :func:`to_declared` for the declared type."""
    if isinstance(value, list | tuple):
        return [to_numpy(v) for v in value]
    if not isinstance(value, torch.Tensor):
        return value
    tensor = value.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def to_declared(value: Any, elem_type: int) -> Any:
    """A computed value as numpy in its declared ONNX element type (0: undeclared, left as is)."""
    array = to_numpy(value)
    if not isinstance(array, np.ndarray) or not elem_type:
        return array
    try:
        declared = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError):
        return array
    return array if array.dtype == declared else array.astype(declared)


def wrap_unsigned(tensor: torch.Tensor, elem_type: int) -> torch.Tensor:
    """Integer values reduced modulo an unsigned type's range, as a cast to it would."""
    bits = UNSIGNED_BITS.get(elem_type)
    if bits is None or bits == 64:
        return tensor
    return tensor.to(torch.int64).remainder(1 << bits).to(TORCH_DTYPES[elem_type])
