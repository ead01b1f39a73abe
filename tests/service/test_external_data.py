"""Models with external data: uploaded as an uncompressed tar of the model and its data files,
checked header by header before extraction, stored beside the model, and quantized; a model
whose data lies outside the upload, or a bundle that is not just that, is a 4xx naming why."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import onnx
import pytest

import qaas
from app import client_cli
from app.cli import main as cli_main
from tests.service.conftest import stored_under
from worker.runner import run_job
from worker.runtime import Runtime

TAR = {"Content-Type": "application/x-tar"}


def external_copy(tiny_model: Path, folder: Path, location: str = "tiny.onnx.data") -> Path:
    """tiny.onnx with every initializer in one external file next to it."""
    model = onnx.load(tiny_model)
    onnx.external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="tiny.onnx.data", size_threshold=0
    )
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, folder / "tiny.onnx")  # writes tiny.onnx.data beside it
    if location != "tiny.onnx.data":
        saved = onnx.load(folder / "tiny.onnx", load_external_data=False)
        for tensor in onnx.external_data_helper._get_all_tensors(saved):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        (folder / "tiny.onnx").write_bytes(saved.SerializeToString())
    return folder / "tiny.onnx"


def tar_of(files: dict[str, bytes], *, links: dict[str, str] | None = None, mode="w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle_files(tiny_model, tmp_path_factory) -> dict[str, bytes]:
    model = external_copy(tiny_model, tmp_path_factory.mktemp("external"))
    return {"tiny.onnx": model.read_bytes(), "tiny.onnx.data": model.with_suffix(".onnx.data")
            .read_bytes()}  # fmt: skip


def post_bundle(api, tenant, body: bytes, headers=TAR):
    return api.post(
        "/v1/models", params={"filename": "tiny.tar"}, content=body, headers={**tenant, **headers}
    )


def staging_is_empty(settings) -> bool:
    staging = settings.artifact_root / ".staging"
    return not [p for p in staging.iterdir() if p.name.startswith("upload-")]


def test_model_with_external_data_is_stored_and_quantizes(
    api, settings, storage, make_tenant, bundle_files, tiny_data
):
    tenant = make_tenant()
    response = post_bundle(api, tenant, tar_of(bundle_files))
    assert response.status_code == 201, response.text
    model = response.json()
    data_size = len(bundle_files["tiny.onnx.data"])
    assert [(f["name"], f["size_bytes"]) for f in model["external_data"]] == [
        ("tiny.onnx.data", data_size)
    ]
    assert model["size_bytes"] == data_size + len(bundle_files["tiny.onnx"])  # quota counts all
    assert stored_under(storage, f"models/{model['id']}") == ["original", "tiny.onnx.data"]
    assert staging_is_empty(settings)
    calibration = api.post(
        "/v1/datasets",
        params={"filename": "calibration.npz"},
        content=tiny_data[0].read_bytes(),
        headers={**tenant, "Content-Type": "application/octet-stream"},
    ).json()
    job = api.post(
        "/v1/jobs",
        json={"model_id": model["id"], "calibration_id": calibration["id"]},
        headers=tenant,
    ).json()
    runtime = Runtime.build(settings, pooled=False)
    try:
        assert run_job(runtime, job["id"], "external-data-test").status == "succeeded"
    finally:
        runtime.engine.dispose()
    done = api.get(f"/v1/jobs/{job['id']}", headers=tenant).json()
    assert done["status"] == "succeeded" and done["metrics"]["onnxruntime"], done


def test_model_alone_is_told_how_to_send_its_data(api, make_tenant, bundle_files, settings):
    response = api.post(
        "/v1/models",
        params={"filename": "tiny.onnx"},
        content=bundle_files["tiny.onnx"],
        headers={**make_tenant(), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "missing" in detail and "application/x-tar" in detail, detail
    assert staging_is_empty(settings)


def test_data_outside_the_upload_is_refused(
    api, make_tenant, tiny_model, tmp_path, bundle_files, settings
):
    escaping = external_copy(tiny_model, tmp_path / "m", location="../tiny.onnx.data")
    body = tar_of({"tiny.onnx": escaping.read_bytes(), "tiny.onnx.data": bundle_files[
        "tiny.onnx.data"]})  # fmt: skip
    response = post_bundle(api, make_tenant(), body)
    assert response.status_code == 422, response.text
    assert "outside the upload" in response.json()["detail"]
    assert staging_is_empty(settings)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("symlink", "is a link"),
        ("traversal", "no '..'"),
        ("too_many", "more than"),
        ("two_models", "exactly one"),
        ("unreferenced", "hold no data"),
        ("gzip", "uncompressed"),
        ("not_tar", "uncompressed"),
    ],
)
def test_bad_bundles_are_refused_before_extraction(
    case, needle, api, make_tenant, bundle_files, settings
):
    files = dict(bundle_files)
    body = {
        "symlink": lambda: tar_of(files, links={"extra.bin": "/etc/passwd"}),
        "traversal": lambda: tar_of({**files, "../evil.bin": b"x"}),
        "too_many": lambda: tar_of({**files, **{f"f{i}.bin": b"x" for i in range(70)}}),
        "two_models": lambda: tar_of({**files, "other.onnx": files["tiny.onnx"]}),
        "unreferenced": lambda: tar_of({**files, "notes.txt": b"hello"}),
        "gzip": lambda: tar_of(files, mode="w:gz"),
        "not_tar": lambda: files["tiny.onnx"],
    }[case]()
    response = post_bundle(api, make_tenant(), body)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error", "detail"}
    assert needle in response.json()["detail"], response.json()
    assert staging_is_empty(settings)


def test_cli_submit_sends_the_external_data_it_finds(
    api, make_tenant, tiny_model, tmp_path, monkeypatch, capsys
):
    """``qaas submit model.onnx`` of a model with external data streams both as one tar."""
    model = external_copy(tiny_model, tmp_path / "m")
    tenant = make_tenant()
    key = tenant["Authorization"].split()[1]
    monkeypatch.setattr(
        client_cli,
        "_client",
        lambda args: qaas.Client("http://testserver", key, transport=api._transport),
    )
    argv = ["submit", str(model), "--activations", "float", "--json"]
    assert cli_main(argv) == 0
    queued = json.loads(capsys.readouterr().out)
    stored = api.get(f"/v1/models/{queued['model_id']}", headers=tenant).json()
    assert [f["name"] for f in stored["external_data"]] == ["tiny.onnx.data"]
