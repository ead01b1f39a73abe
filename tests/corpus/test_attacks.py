"""The attack corpus: torch.export archives that run code in a loader that trusts them. Through
the API (inspection child) and through ``qaas quantize`` (in this process), each is refused with
its cause or accepted with the dangerous part unread; no payload ever runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from tests.corpus.make_attacks import ATTACK_MARKER, ATTACKS, Attack
from tests.service.conftest import REPO, upload

GENERATOR = Path(__file__).with_name("make_attacks.py")


@pytest.fixture(scope="module")
def attacks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("attacks")
    subprocess.run([sys.executable, str(GENERATOR), str(out)], check=True, cwd=REPO, timeout=120)
    return out


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("attack-data") / "calibration.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    return path


def test_the_unmodified_archive_is_accepted(attacks, api, corpus_tenant):
    """The corpus starts from a valid archive: refusals below are about the attack, not it."""
    response = upload(api, "/v1/models", attacks / "good.pt2", corpus_tenant)
    assert response.status_code == 201, response.text
    assert response.json()["source_format"] == "pt2"


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_api_upload_never_runs_the_payload(attack: Attack, attacks, api, corpus_tenant):
    response = upload(api, "/v1/models", attacks / f"{attack.name}.pt2", corpus_tenant)
    assert not (attacks / ATTACK_MARKER).exists(), "the payload ran in the inspection child"
    if attack.cause:
        assert 400 <= response.status_code < 500, response.text
        detail = response.json()["detail"]
        assert all(word in detail for word in attack.cause), (attack.cause, detail)
    else:
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_cli_never_runs_the_payload(attack: Attack, attacks, calibration, tmp_path, capsys):
    out = tmp_path / "out"
    model = str(attacks / f"{attack.name}.pt2")
    code = main(["quantize", model, "--calibration", str(calibration), "-o", str(out)])
    assert not (attacks / ATTACK_MARKER).exists(), "the payload ran in qaas quantize"
    if attack.cause:
        assert code == 2
        message = capsys.readouterr().err
        assert all(word in message for word in attack.cause), (attack.cause, message)
        assert not out.exists() or not any(out.iterdir())
    else:
        assert code == 0, capsys.readouterr().err
        assert (out / "model.quant.onnx").is_file()
