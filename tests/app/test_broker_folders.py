"""The embedded filesystem broker writes only under its data folder, never into the directory
the service was started from (kombu's exchange table defaults to ``./control``)."""

from __future__ import annotations

from pathlib import Path

from kombu import Connection, Exchange, Queue

from app.core.config import Settings
from app.core.queue import broker_options, ensure_broker_folders


def test_a_fanout_binding_lands_in_the_broker_folder(tmp_path: Path, monkeypatch) -> None:
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    settings = Settings(data_dir=tmp_path / "data")
    ensure_broker_folders(settings)
    options = broker_options(settings)
    with Connection("filesystem://", transport_options=options) as connection:
        channel = connection.channel()
        Queue("q", Exchange("broadcast", type="fanout"), channel=channel).declare()
    assert list(started_in.iterdir()) == []
    assert (settings.broker_folder / "control" / "broadcast.exchange").exists()
