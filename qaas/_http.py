"""The SDK's HTTP layer: one ``httpx.Client``, retries, the error envelope mapped to
``qaas.errors``, streamed uploads (a model with external data as an uncompressed tar made
while it is sent), cursor pages and checked downloads."""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from qaas.errors import ConnectionFailed, InvalidRequest, QaasError, error_for

CHUNK = 1024 * 1024
TAR_BLOCK = 512
RETRY_STATUSES = (429, 503)
IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
PAGE_MAX = 200  # the API's largest page


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            yield block


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _tar_size(files: list[tuple[str, Path]]) -> int:
    total = 2 * TAR_BLOCK  # the end-of-archive marker
    for name, path in files:
        size = path.stat().st_size
        total += len(_tar_header(name, size)) + -(-size // TAR_BLOCK) * TAR_BLOCK
    return total


def _tar_stream(files: list[tuple[str, Path]]) -> Iterator[bytes]:
    """An uncompressed tar, produced while it is sent (no copy of the model on disk)."""
    for name, path in files:
        size = path.stat().st_size
        yield _tar_header(name, size)
        yield from _chunks(path)
        if size % TAR_BLOCK:
            yield b"\0" * (TAR_BLOCK - size % TAR_BLOCK)
    yield b"\0" * (2 * TAR_BLOCK)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def raise_for_answer(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        code, detail = body.get("error", "error"), body.get("detail", response.text)
    except (ValueError, AttributeError):
        code, detail = "error", response.text[:500]
    raise error_for(response.status_code, str(code), str(detail), retry_after_seconds(response))


class Api:
    """Requests with retries: 429 and 503 are retried after their Retry-After (when it is at
    most ``max_retry_wait``), a refused connection always, other connection errors only for
    idempotent requests (and a job submission, which carries an Idempotency-Key)."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float = 120.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def _backoff(self, attempt: int) -> float:
        return min(self.max_retry_wait, 0.5 * 2**attempt) * (0.5 + random.random() / 2)

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        content: Callable[[], Iterable[bytes]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """``content`` makes the body afresh for each attempt (a streamed file)."""
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                body = content() if content is not None else None
                response = self.http.request(method, path, content=body, **kwargs)
            except httpx.TransportError as error:
                refused = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (safe or refused):
                    raise ConnectionFailed(f"cannot reach {self.url}: {error}") from None
                time.sleep(self._backoff(attempt))
                continue
            except httpx.HTTPError as error:
                raise ConnectionFailed(f"request to {self.url} failed: {error}") from None
            if response.status_code in RETRY_STATUSES and not last:
                wait = retry_after_seconds(response)
                wait = self._backoff(attempt) if wait is None else wait
                if wait <= self.max_retry_wait:
                    time.sleep(wait)
                    continue
            raise_for_answer(response)
            return response
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def upload(
        self, route: str, path: str | os.PathLike[str], external_data: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The file as the raw body; with external data, the model and those files (paths
        relative to its folder) as one uncompressed tar. Streamed, never held in memory."""
        path = Path(path)
        files = [(path.name, path)] + [(name, path.parent / name) for name in external_data]
        for _, file in files:
            if not file.is_file():
                raise InvalidRequest(0, "not_found", f"file not found: {file}")
        stream: Callable[[], Iterable[bytes]]
        if len(files) == 1:
            media_type, size = "application/octet-stream", path.stat().st_size
            stream = partial(_chunks, path)
        else:
            media_type, size = "application/x-tar", _tar_size(files)
            stream = partial(_tar_stream, files)
        headers = {"Content-Type": media_type, "Content-Length": str(size)}
        response = self.request(
            "POST", route, params={"filename": path.name}, content=stream, headers=headers
        )
        return response.json()

    def pages(
        self, path: str, params: dict[str, Any], limit: int | None, page_size: int = PAGE_MAX
    ) -> Iterator[dict[str, Any]]:
        """Items of a list endpoint, newest first, following ``X-Next-Cursor`` until ``limit``
        items or the last page."""
        seen = 0
        cursor: str | None = None
        while limit is None or seen < limit:
            query = {k: v for k, v in params.items() if v is not None}
            query["limit"] = page_size if limit is None else min(page_size, limit - seen)
            if cursor is not None:
                query["cursor"] = cursor
            response = self.request("GET", path, params=query)
            for item in response.json():
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            following = response.headers.get("x-next-cursor")
            if not following or following == cursor:
                return
            cursor = following

    def download(
        self, job_id: str, outdir: str | os.PathLike[str], names: Iterable[str] | None = None
    ) -> dict[str, Path]:
        """Stream each artifact to OUTDIR, check its sha256, and only then give it its name."""
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        wanted = None if names is None else set(names)
        written = {}
        for entry in self.json("GET", f"/v1/jobs/{job_id}/artifacts"):
            if wanted is not None and entry["name"] not in wanted:
                continue
            written[entry["name"]] = self._download_one(job_id, entry, outdir)
        return written

    def _download_one(self, job_id: str, entry: dict[str, Any], outdir: Path) -> Path:
        name = Path(entry["name"]).name
        for attempt in range(self.max_retries + 1):
            try:
                return self._fetch(job_id, name, entry["sha256"], outdir)
            except ConnectionFailed:
                if attempt == self.max_retries:
                    raise
                time.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")

    def _fetch(self, job_id: str, name: str, sha256: str, outdir: Path) -> Path:
        target, partial = outdir / name, outdir / f".{name}.part"
        digest = hashlib.sha256()
        try:
            # A server with QAAS_PRESIGNED_DOWNLOADS=1 answers 307 to the object store; httpx
            # drops the Authorization header on a redirect to another origin.
            url = f"/v1/jobs/{job_id}/artifacts/{name}"
            with self.http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_answer(response)
                with partial.open("wb") as handle:
                    for block in response.iter_bytes(CHUNK):
                        digest.update(block)
                        handle.write(block)
        except httpx.HTTPError as error:
            partial.unlink(missing_ok=True)
            raise ConnectionFailed(f"download of {name} failed: {error}") from None
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise QaasError(0, "corrupt", f"{name}: sha256 does not match the server's record")
        os.replace(partial, target)
        return target
