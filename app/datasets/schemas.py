from __future__ import annotations

from pydantic import ConfigDict

from qaas.types import ArrayInfo, DatasetInfo

__all__ = ["ArrayInfo", "DatasetOut"]


class DatasetOut(DatasetInfo):
    """The SDK's ``qaas.types.DatasetInfo``, read from a row."""

    model_config = ConfigDict(from_attributes=True)
