"""The built wheel, installed (not editable) in a fresh venv, serves from an empty folder: the
migrations and the docs' assets must travel inside the package, not beside the checkout
(fixtures in conftest.py: ``installed``, the venv's python; ``served``, URL and API key)."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import httpx
import numpy as np

from tests.packaging.conftest import CHECKOUT, clean_env


def test_the_package_is_imported_from_the_new_venv(installed, tmp_path):
    probe = (
        "import app, app.migrations, fastapi_offline; "
        "print(app.__file__); print(app.migrations.__file__); print(fastapi_offline.__file__)"
    )
    out = subprocess.run(
        [str(installed), "-c", probe],
        cwd=tmp_path,
        env=clean_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    venv_root = str(installed.parent.parent)
    assert out[0].startswith(venv_root) and out[1].startswith(venv_root), out
    assert not out[0].startswith(str(CHECKOUT) + "/app"), out
    migrations = Path(out[1]).parent
    assert (migrations / "env.py").is_file() and (migrations / "script.py.mako").is_file()
    assert sorted(p.name for p in (migrations / "versions").glob("0001_*.py"))


def test_installed_serve_answers_authenticated_calls(served):
    url, key = served
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/v1/me").status_code == 401
    me = httpx.get(f"{url}/v1/me", headers=auth)
    assert me.status_code == 200 and me.json()["name"] == "local"

    data = io.BytesIO()
    np.savez(data, input=np.zeros((4, 3), np.float32))
    upload = httpx.post(
        f"{url}/v1/datasets", params={"filename": "x.npz"}, content=data.getvalue(), headers=auth
    )
    assert upload.status_code == 201, upload.text
    listed = httpx.get(f"{url}/v1/datasets", params={"limit": 1}, headers=auth)
    assert [d["id"] for d in listed.json()] == [upload.json()["id"]]


def test_installed_docs_serve_their_assets(served):
    url, _ = served
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{url}{page}").text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/docs-assets/") for a in assets), (page, assets)
        for asset in assets:
            assert httpx.get(url + asset).status_code == 200, asset
