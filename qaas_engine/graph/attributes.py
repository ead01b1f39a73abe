"""ONNX node attributes as Python values (no torch: graph transforms and placement read them)."""

from __future__ import annotations

from typing import Any

import onnx


def parse_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute values as Python objects; strings decoded, tensors as numpy arrays."""
    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        attrs[attr.name] = value
    return attrs
