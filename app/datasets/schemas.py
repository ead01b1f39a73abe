from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    size_bytes: int
    expanded_bytes: int  # what the quota counts: the arrays at their full size
    sha256: str
    arrays: dict[str, ArrayInfo]
    created_at: datetime
