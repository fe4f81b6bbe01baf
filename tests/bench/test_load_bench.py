"""`spatia bench load` helpers that read what a live server writes."""

import os

from engine.bench.load import folder_bytes


def test_folder_bytes_skips_the_servers_temporary_folders_and_files_that_vanish(tmp_path, monkeypatch):
    session = tmp_path / "autosave" / "abc"
    session.mkdir(parents=True)
    (session / "frames.npz").write_bytes(b"x" * 100)
    (session / "memory.safetensors").write_bytes(b"y" * 30)
    tmp = tmp_path / "autosave" / ".abc.tmp"  # a save in progress: renamed over `abc` in a moment
    tmp.mkdir()
    (tmp / "frames.npz").write_bytes(b"z" * 1000)
    assert folder_bytes(tmp_path / "autosave") == 130
    assert folder_bytes(tmp_path / "nowhere") == 0

    stat = os.stat

    def vanished(path, *args, **kwargs):  # replaced between the listing and the read
        if str(path).endswith("memory.safetensors"):
            raise FileNotFoundError(path)
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", vanished)
    assert folder_bytes(tmp_path / "autosave") == 100
