"""diagnose.atomic: the final file appears whole; a failed write leaves the old file and no temporary."""

from __future__ import annotations

import os
import threading

import pytest

from diagnose import atomic
from diagnose.pipeline.rundir import write_atomic


def test_writes_appear_with_their_content(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "héllo\n", encoding="utf-8")
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "c.toml", "x = 1\n")  # the name other modules import
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.toml").read_text() == "x = 1\n"
    atomic.write_text(tmp_path / "a.txt", "new")  # replaces an existing file
    assert (tmp_path / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.toml"]


def test_replacing_syncs_then_renames_in_the_same_folder(tmp_path):
    synced = []
    with atomic.replacing(tmp_path / "f", fsync=synced.append) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.") and tmp.name.endswith(".tmp")
        tmp.write_text("data")
        assert not (tmp_path / "f").exists()  # nothing at the final name until the block succeeds
    assert len(synced) == 1 and (tmp_path / "f").read_text() == "data" and not tmp.exists()


@pytest.mark.parametrize("make", ["file", "folder"])
def test_failure_keeps_the_old_version_and_no_temporary(tmp_path, make):
    final = tmp_path / "target"
    if make == "file":
        final.write_text("old")
    else:
        final.mkdir()
        (final / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.replacing(final) as tmp:
            if make == "file":
                tmp.write_text("partial")
            else:
                tmp.mkdir()
                (tmp / "weights").write_text("partial")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    assert (final if make == "file" else final / "weights").read_text() == "old"


def test_a_folder_replaces_a_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale").write_text("x")
    with atomic.replacing(final) as tmp:
        tmp.mkdir()
        (tmp / ".prepared").write_text("ok")
    assert sorted(p.name for p in final.iterdir()) == [".prepared"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_temporary_names_are_unique_per_process_and_thread(tmp_path):
    names = []

    def name():
        names.append((threading.get_native_id(), atomic.temp_path(tmp_path / "f")))

    threads = [threading.Thread(target=name) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({n for _, n in names}) == 4
    assert all(n.parent == tmp_path and n.name.startswith(f".f.{os.getpid()}.{tid}.") for tid, n in names)
