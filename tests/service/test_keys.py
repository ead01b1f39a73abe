"""A tenant's own API keys (GET/POST/DELETE /v1/keys) and the operator's ``qaas keys
list|revoke``: a revoked key is refused from the very next request, in the error envelope."""

from __future__ import annotations

from tests.service.test_api import assert_envelope


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def key_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1]


def test_list_create_and_revoke_own_keys(api, make_tenant):
    tenant = make_tenant()
    listed = api.get("/v1/keys", headers=tenant)
    assert listed.status_code == 200, listed.text
    [first] = listed.json()
    assert set(first) == {"id", "prefix", "created_at", "revoked_at"}
    assert first["revoked_at"] is None and key_of(tenant).startswith(first["prefix"])
    assert key_of(tenant) not in listed.text

    created = api.post("/v1/keys", headers=tenant)
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    new = created.json()
    assert new["key"].startswith(new["prefix"]) and new["key"] != key_of(tenant)
    me = api.get("/v1/me", headers=tenant).json()
    assert api.get("/v1/me", headers=bearer(new["key"])).json() == me
    listed = api.get("/v1/keys", headers=tenant).json()
    assert [k["id"] for k in listed] == [first["id"], new["id"]]
    assert new["key"] not in str(listed)

    revoked = api.delete(f"/v1/keys/{new['id']}", headers=tenant)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_envelope(api.get("/v1/me", headers=bearer(new["key"])), 401, "unauthorized")
    assert api.get("/v1/me", headers=tenant).status_code == 200  # the other key lives on
    again = api.delete(f"/v1/keys/{new['id']}", headers=tenant)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_revoking_the_key_in_use_refuses_its_next_request(api, make_tenant):
    tenant = make_tenant()
    [key] = api.get("/v1/keys", headers=tenant).json()
    assert api.delete(f"/v1/keys/{key['id']}", headers=tenant).status_code == 200
    assert_envelope(api.get("/v1/keys", headers=tenant), 401, "unauthorized")


def test_another_tenants_key_is_404(api, make_tenant):
    mine, theirs = make_tenant(), make_tenant()
    [their_key] = api.get("/v1/keys", headers=theirs).json()
    assert their_key["id"] not in {k["id"] for k in api.get("/v1/keys", headers=mine).json()}
    assert_envelope(api.delete(f"/v1/keys/{their_key['id']}", headers=mine), 404, "not_found")
    assert_envelope(api.delete("/v1/keys/0123456789abcdef", headers=mine), 404, "not_found")
    assert api.get("/v1/me", headers=theirs).status_code == 200
    assert api.get("/v1/keys", headers=theirs).json()[0]["revoked_at"] is None


def test_cli_keys_list_and_revoke(api, cli):
    status, out, _ = cli("keys", "create", "--tenant", "cli-team")
    assert status == 0
    key = out.strip().splitlines()[-1]
    assert api.get("/v1/me", headers=bearer(key)).json()["name"] == "cli-team"

    status, out, _ = cli("keys", "list", "--tenant", "cli-team")
    assert status == 0 and key not in out
    [row] = [line.split() for line in out.splitlines()[1:]]
    key_id, tenant_name, prefix = row[:3]
    assert tenant_name == "cli-team" and key.startswith(prefix) and row[-1] == "-"
    status, out, _ = cli("keys", "list")
    assert status == 0 and key_id in out

    status, out, _ = cli("keys", "revoke", key_id)
    assert status == 0 and key_id in out
    assert_envelope(api.get("/v1/me", headers=bearer(key)), 401, "unauthorized")
    _, out, _ = cli("keys", "list", "--tenant", "cli-team")
    assert out.splitlines()[1].split()[-1] != "-"  # the revocation time

    assert cli("keys", "revoke", "no-such-key")[0] == 2
    status, _, err = cli("keys", "list", "--tenant", "nobody-by-this-name")
    assert status == 2 and "nobody-by-this-name" in err
