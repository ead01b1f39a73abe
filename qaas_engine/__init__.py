"""qaas engine: quantization simulation, range setting, QDQ export; no web or database code.

Entry point: :func:`quantize`. Errors a user can fix derive from :class:`QaasInputError`.
Names load on first use (PEP 562), so ``import qaas_engine.errors`` from a light client does
not pay for torch and onnx.
"""

from importlib import import_module
from typing import Any

from qaas_engine.version import __version__

_EXPORTS = {
    "DataError": "qaas_engine.errors",
    "ModelImportError": "qaas_engine.errors",
    "QaasInputError": "qaas_engine.errors",
    "SpecError": "qaas_engine.errors",
    "UnsupportedOpError": "qaas_engine.errors",
    "Cancelled": "qaas_engine.errors",
    "Dataset": "qaas_engine.data",
    "EnergyProfile": "qaas_engine.cost.energy",
    "load_npz": "qaas_engine.data",
    "model_inputs": "qaas_engine.data",
    "ImportedModel": "qaas_engine.importer",
    "import_model": "qaas_engine.importer",
    "QuantizationResult": "qaas_engine.artifacts.result",
    "quantize": "qaas_engine.flow",
    "QuantSpec": "qaas_engine.spec",
    "SavedRun": "qaas_engine.job",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qaas_engine' has no attribute {name!r}")
    return getattr(import_module(module), name)
