from __future__ import annotations

from pydantic import ConfigDict

from qaas.types import ExternalDataFile, ModelInfo, ModelInput

__all__ = ["ExternalDataFile", "ModelInput", "ModelOut"]


class ModelOut(ModelInfo):
    """The SDK's ``qaas.types.ModelInfo``, read from a row."""

    model_config = ConfigDict(from_attributes=True)
