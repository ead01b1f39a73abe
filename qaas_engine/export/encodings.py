"""AIMET encodings (format 1.0.0) for every tensor that carries a Q/DQ in the exported graph.

Offsets follow AIMET's convention: grids are unsigned with ``x = (x_u + offset) * scale``, so a
signed symmetric int8 grid has offset -128 and an asymmetric grid ``-zero_point``.
"""

from __future__ import annotations

from typing import Any

from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.sim import QuantSim

AIMET_ENCODING_VERSION = "1.0.0"


def _entry(name: str, encoding: Encoding) -> dict[str, Any]:
    per_channel = encoding.scheme.per_channel and encoding.scale.size > 1
    return {
        "name": name,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if per_channel else "PER_TENSOR",
        "bw": encoding.scheme.bits,
        "is_sym": encoding.scheme.symmetric,
        "scale": [float(s) for s in encoding.scale],
        "offset": encoding.aimet_offsets(),
    }


def aimet_encodings(sim: QuantSim, producer_version: str) -> dict[str, Any]:
    params = {**sim.weight_encodings, **sim.bias_encodings}
    spec = sim.spec
    # qnn-htp and tensorrt fix the activations' symmetry whatever the spec says
    activation_symmetric = sim.rules.activation_symmetric
    if activation_symmetric is None:
        activation_symmetric = spec.activation_symmetric
    return {
        "version": AIMET_ENCODING_VERSION,
        "activation_encodings": [
            _entry(name, enc) for name, enc in sorted(sim.activation_quantizers().items())
        ],
        "param_encodings": [_entry(name, enc) for name, enc in sorted(params.items())],
        # every node left in float: named by the user, of a kept op type, or with no int kernel
        "excluded_layers": sorted(set(spec.keep_float_nodes) | set(sim.placement.float_nodes)),
        "quantizer_args": {
            "activation_bitwidth": spec.activation_bits,
            "param_bitwidth": spec.weight_bits,
            "dtype": "int",
            "per_channel_quantization": spec.weight_granularity == "per-channel",
            "is_symmetric": spec.weight_symmetric,
            "activation_is_symmetric": activation_symmetric,
            "quant_scheme": sim.range_estimator,
        },
        "producer": {"name": "qaas", "version": producer_version},
    }
