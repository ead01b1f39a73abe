"""Where the SDK and the CLI find the server and the key: arguments, then ``QAAS_URL`` /
``QAAS_API_KEY``, then the file ``qaas configure`` writes
(``$XDG_CONFIG_HOME/qaas/config.toml``, by default ``~/.config/qaas/config.toml``)."""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "qaas" / "config.toml"


def read_config(path: Path | None = None) -> dict[str, str]:
    """The file's ``url`` and ``api_key`` (absent keys left out); no file, no settings."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    return {k: str(v) for k, v in data.items() if k in ("url", "api_key") and v}


def write_config(url: str, api_key: str | None, path: Path | None = None) -> Path:
    """Written whole (a temporary file renamed), readable by the user alone: it holds a key."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # json.dumps of a str is a valid TOML basic string (the same escapes)
    lines = [f"url = {json.dumps(url)}"]
    if api_key:
        lines.append(f"api_key = {json.dumps(api_key)}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".toml")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w") as file:
            file.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def resolve(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The server and key to use: each from the first of argument, environment, file."""
    url = url or os.environ.get("QAAS_URL") or None
    api_key = api_key or os.environ.get("QAAS_API_KEY") or None
    if url is None or api_key is None:
        stored = read_config()
        if api_key is None and url in (None, stored.get("url")):
            # the file's key goes only to the file's server, never to one named elsewhere
            api_key = stored.get("api_key")
        url = url or stored.get("url")
    return (url or DEFAULT_URL), api_key
