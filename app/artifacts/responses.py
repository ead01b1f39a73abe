"""An artifact as an HTTP response, whichever backend keeps it: a file response from the folder
backend; from an object store, the bytes streamed through the API (a ``Range`` passed on), or,
with ``QAAS_PRESIGNED_DOWNLOADS=1``, a 307 to a presigned URL that expires after
``QAAS_PRESIGNED_TTL_S``."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from app.artifacts.service import ArtifactFile
from app.core.config import Settings
from app.core.errors import NotFound
from app.core.storage import LocalStorage, Storage
from app.core.storage_s3 import S3Storage


def artifact_response(
    storage: Storage,
    settings: Settings,
    artifact: ArtifactFile,
    *,
    media_type: str,
    headers: dict[str, str],
    range_header: str | None = None,
    attachment: bool = True,
) -> Response:
    if attachment:
        headers = {**headers, "Content-Disposition": f'attachment; filename="{artifact.name}"'}
    if isinstance(storage, LocalStorage):
        return FileResponse(
            storage.path(f"{artifact.key}/{artifact.name}"),
            media_type=media_type,
            headers=headers,
        )
    if not isinstance(storage, S3Storage):
        raise TypeError(f"no download for {type(storage).__name__}")
    try:
        object_key = storage.published_key(artifact.key, artifact.name)
    except FileNotFoundError:
        raise NotFound(f"artifact {artifact.name} is missing from storage") from None
    # Only downloads: a page shown inline (report.html in /ui) keeps the API's CSP header.
    if settings.presigned_downloads and attachment:
        url = storage.presigned_url(
            object_key,
            filename=artifact.name,
            media_type=media_type,
            ttl_s=settings.presigned_ttl_s,
        )
        return RedirectResponse(url, status_code=307, headers=headers)
    status, stored, body = storage.stream(object_key, range_header)
    return StreamingResponse(
        body,
        status_code=status,
        media_type=media_type,
        headers={**headers, **stored},
    )
