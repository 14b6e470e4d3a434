"""The one atomic-write helper: whole files or none, no symlink followed, concurrent writers safe."""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

import pytest

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile, atomic_write_bytes

PACKAGE_DIRS = ("reftok_deploy", "export", "runtimes", "calibration")
ROOT = Path(__file__).resolve().parents[1]


def test_planted_symlink_at_the_temp_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    target = tmp_path / "out.bin"
    # the first name mkstemp would pick is taken by a symlink to the victim
    names = iter(["planted", "fresh1", "fresh2"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    planted = tmp_path / ".out.bin.planted.tmp"
    planted.symlink_to(victim)
    atomic_write_bytes(target, b"new data")
    assert victim.read_bytes() == b"keep me" and planted.is_symlink()
    assert target.read_bytes() == b"new data" and not target.is_symlink()
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_a_symlink_swapped_in_after_creation_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    out = AtomicFile(tmp_path / "out.bin")
    out.tmp.unlink()
    out.tmp.symlink_to(victim)
    with pytest.raises(OSError):
        out.open()
    with pytest.raises(ReftokError, match="cannot write"):
        out.commit()
    out.discard()
    assert victim.read_bytes() == b"keep me" and not (tmp_path / "out.bin").exists()


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as out, out.open() as fh:
            fh.write(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(8)]

    def writer(payload: bytes) -> None:
        for _ in range(5):
            atomic_write_bytes(target, payload)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.bin"]


def test_every_writer_goes_through_the_helper():
    """No module but files.py makes temp files, renames them into place or opens files for writing
    (appending to a log, one JSON line at a time, is not an artefact write)."""
    pattern = re.compile(r"mkstemp\(|os\.replace\(|open\([^)]*['\"]wb?['\"]|\.write_bytes\(|\.write_text\(|"
                         r"\.with_name\([^)]*partial")
    offenders = []
    for folder in PACKAGE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "files.py" and folder == "reftok_deploy":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_stale_staging_folders_of_dead_exports_are_removed(tmp_path):
    import os

    from reftok_deploy.export.job import remove_stale_staging

    dead = tmp_path / ".staging-999999999-abc"
    live = tmp_path / f".staging-{os.getpid()}-def"
    old_style = tmp_path / ".staging-xyz"
    for folder in (dead, live, old_style):
        folder.mkdir()
        (folder / "encoder.fp32.onnx").write_bytes(b"x" * 100)
    removed = remove_stale_staging(tmp_path)
    assert sorted(removed) == sorted([dead, old_style]) and live.is_dir() and not dead.exists()


def test_a_failed_commit_leaves_no_temp_and_modes_follow_the_umask(tmp_path, monkeypatch):
    import os

    from reftok_deploy.base import files

    def refuse(*args):
        raise PermissionError("read-only target")

    with monkeypatch.context() as patch:
        patch.setattr(files.os, "replace", refuse)
        with pytest.raises(ReftokError, match="cannot write .*a.bin: read-only target"):
            atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert list(tmp_path.iterdir()) == []
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private.bin", b"data")
    finally:
        os.umask(old)
    assert oct((tmp_path / "private.bin").stat().st_mode & 0o777) == oct(0o600)
