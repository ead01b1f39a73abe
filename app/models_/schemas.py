from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ModelInput(BaseModel):
    name: str
    dtype: str
    shape: list[int | None]


class ExternalDataFile(BaseModel):
    name: str
    size_bytes: int
    sha256: str


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    size_bytes: int
    sha256: str
    source_format: str
    opset: int
    inputs: list[ModelInput]
    notes: list[str]
    external_data: list[ExternalDataFile] = []
    created_at: datetime
