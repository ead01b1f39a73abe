from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, JSONType, UTCDateTime, utcnow
from app.core.ids import new_id


class Model(Base):
    """An uploaded network, checked by the engine's importer before this row was committed."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    source_format: Mapped[str] = mapped_column(String(16))
    opset: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    notes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # Files uploaded with the model (a tar bundle) that hold its initializers' external data,
    # stored beside it: [{"name", "size_bytes", "sha256"}].
    external_data: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
