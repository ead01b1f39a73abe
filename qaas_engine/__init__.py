"""qaas engine: quantization simulation, range setting, QDQ export; no web or database code.

Entry point: :func:`quantize`. Errors a user can fix derive from :class:`QaasInputError`.
"""

from qaas_engine.data import Dataset, load_npz, model_inputs
from qaas_engine.errors import (
    DataError,
    ModelImportError,
    QaasInputError,
    SpecError,
    UnsupportedOpError,
)
from qaas_engine.importer import ImportedModel, import_model
from qaas_engine.quantize import QuantizationResult, quantize
from qaas_engine.spec import QuantSpec
from qaas_engine.version import __version__

__all__ = [
    "DataError",
    "Dataset",
    "ImportedModel",
    "ModelImportError",
    "QaasInputError",
    "QuantSpec",
    "QuantizationResult",
    "SpecError",
    "UnsupportedOpError",
    "__version__",
    "import_model",
    "load_npz",
    "model_inputs",
    "quantize",
]
