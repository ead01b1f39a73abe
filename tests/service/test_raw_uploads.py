"""Uploads are the raw request body. A multipart form (``curl -F file=@x``) is refused with 415
saying so, before anything is read or stored; ``curl --data-binary @x`` (which labels the body
application/x-www-form-urlencoded unless told otherwise) is accepted."""

from __future__ import annotations

import pytest

from tests.service.test_api import assert_envelope


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


@pytest.fixture
def files(tiny_model, tiny_data):
    return {"/v1/models": tiny_model, "/v1/datasets": tiny_data[0]}


@pytest.mark.parametrize("route", ["/v1/models", "/v1/datasets"])
def test_multipart_upload_is_415_naming_the_raw_body(api, tenant, files, route):
    path = files[route]
    response = api.post(route, files={"file": (path.name, path.read_bytes())}, headers=tenant)
    detail = assert_envelope(response, 415, "unsupported_media_type")
    assert "multipart/form-data" in detail and "raw request body" in detail
    assert "--data-binary @" in detail and route in detail
    assert api.get(route, headers=tenant).json() == []  # nothing stored


def test_multipart_without_a_key_is_401_first(api, files):
    path = files["/v1/datasets"]
    response = api.post("/v1/datasets", files={"file": (path.name, path.read_bytes())})
    assert_envelope(response, 401)


@pytest.mark.parametrize("route", ["/v1/models", "/v1/datasets"])
def test_curl_data_binary_default_content_type_is_accepted(api, tenant, files, route):
    path = files[route]
    response = api.post(
        route,
        params={"filename": path.name},
        content=path.read_bytes(),
        headers={**tenant, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == path.name
