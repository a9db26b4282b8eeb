"""Disk trouble degrades to a message, never to a corrupt sidecar or index:

* a disk that fills up in the middle of writing a `.json` / `.civitai.info` sidecar (a real
  size-limited tmpfs, and a monkeypatched ENOSPC raised by write() or fsync() mid-file): the old
  sidecar is intact and readable, no temp file is left, the caller gets StorageError / a status line;
* the library index (SQLite) on a disk that is full: the scan reports "disk full", the index stays
  consistent (integrity_check) with all its old rows, user-data writes raise StorageError, and once
  space is back the next scan completes;
* a read-only models folder (a real read-only bind mount; root ignores chmod): saving metadata is
  a message, the old sidecar is untouched, scanning still works.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from libtest_files import kohya_metadata, write_lora  # noqa: E402
from mounts import fill, read_only_bind, tiny_tmpfs  # noqa: E402

from lora_core.library import Library, StorageError, civitai_files, sidecars  # noqa: E402

OLD = {"activation text": "old words", "notes": "keep me"}


def _temp_files(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".") and n != ".filler"]


def _make_folder(root: Path, n: int = 2) -> list[str]:
    paths = [str(write_lora(root / f"l{i}.safetensors", metadata=kohya_metadata(f"l{i}"))) for i in range(n)]
    (root / "l0.json").write_text(json.dumps(OLD))
    (root / "l0.civitai.info").write_text(json.dumps({"id": 7, "trainedWords": ["old"]}))
    return paths


def _assert_old_sidecars(root: Path):
    assert json.loads((root / "l0.json").read_text()) == OLD
    assert json.loads((root / "l0.civitai.info").read_text()) == {"id": 7, "trainedWords": ["old"]}


# ------------------------------------------------------------------ sidecars: monkeypatched ENOSPC
class _DiesMidWrite:
    """A file object that writes part of the data, then fails like a full disk."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("where", ["write", "fsync"])
@pytest.mark.parametrize("module", [sidecars, civitai_files], ids=["library.sidecars", "civitai_files"])
def test_enospc_mid_write_keeps_the_old_sidecar(tmp_path, monkeypatch, where, module):
    root = tmp_path / "Lora"
    paths = _make_folder(root)
    real_fdopen = os.fdopen
    if where == "write":
        monkeypatch.setattr(module.os, "fdopen", lambda fd, *a, **k: _DiesMidWrite(real_fdopen(fd, *a, **k)))
    else:
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(module.os, "fsync", no_space)
    big = {"notes": "n" * 50_000}
    with pytest.raises((StorageError, OSError), match="No space left"):
        if module is sidecars:
            sidecars.write_user_metadata(paths[0], big)
        else:
            civitai_files.write_info(paths[0], {"id": 8, "description": "d" * 50_000})
    _assert_old_sidecars(root)
    assert _temp_files(root) == []


def test_enospc_through_library_and_ui_is_a_message(tmp_path, monkeypatch):
    from lora_core.ui.controller import LoraTabController
    from lora_core.ui.tab import TabSettings

    root = tmp_path / "Lora"
    paths = _make_folder(root)
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        real_fdopen = os.fdopen
        monkeypatch.setattr(sidecars.os, "fdopen", lambda fd, *a, **k: _DiesMidWrite(real_fdopen(fd, *a, **k)))
        with pytest.raises(StorageError, match="No space left"):
            lib.write_user_metadata(paths[0], {"notes": "new"})
        status = LoraTabController(lambda: lib, TabSettings()).save_user_metadata(paths[0], {"notes": "new"})
        assert status.startswith("Could not save") and "No space left" in status
        assert lib.find("l0").user_metadata["notes"] == "keep me"   # the index still has the old text
    _assert_old_sidecars(root)
    assert _temp_files(root) == []


# ------------------------------------------------------------------------- sidecars: a real full disk
def test_real_full_disk_keeps_sidecars_and_reports(tmp_path):
    mnt = tmp_path / "small"
    with tiny_tmpfs(mnt, "256k"):
        root = Path(mnt) / "Lora"
        paths = _make_folder(root)
        with Library([root], tmp_path / "data") as lib:   # index on the normal disk here
            lib.scan()
            filler = fill(mnt, leave=8192)
            with pytest.raises(StorageError, match="No space left"):
                lib.write_user_metadata(paths[0], {"notes": "x" * 60_000})
            with pytest.raises(OSError, match="No space left"):
                civitai_files.write_info(paths[0], {"id": 9, "description": "y" * 60_000})
            _assert_old_sidecars(root)
            assert _temp_files(root) == []
            assert lib.find("l0").user_metadata == OLD
            os.remove(filler)   # space is back: the same save works
            lib.write_user_metadata(paths[0], {"notes": "x" * 60_000})
            assert json.loads((root / "l0.json").read_text())["notes"] == "x" * 60_000
            assert lib.find("l0").user_metadata["notes"].startswith("xxxx")


# ---------------------------------------------------------------------------- index on a full disk
def _integrity(db_path) -> str:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_index_on_a_full_disk_stays_consistent(tmp_path):
    root = tmp_path / "Lora"
    _make_folder(root, n=5)
    mnt = tmp_path / "data_small"
    with tiny_tmpfs(mnt, "1m"):
        data = Path(mnt) / "data"
        with Library([root], data) as lib:
            assert lib.scan().total == 5 and not lib.problems
            lib.set_favorite(str(root / "l1.safetensors"), True)
            lib.save_stack("mine", [("l0", 0.5)])
            # many new files with long metadata: their index rows cannot fit once the disk is full
            for i in range(40):
                write_lora(root / f"new{i:02d}.safetensors",
                           metadata=kohya_metadata(f"new{i}", tags={f"t{i}-{j}": j for j in range(200)}))
            filler = fill(mnt, leave=0)
            report = lib.scan()
            assert any("disk full" in p for p in report.problems), report.problems
            with pytest.raises(StorageError, match="disk full"):
                for i in range(200):  # user-data writes fail with a message, not an sqlite3 error
                    lib.save_stack(f"s{i}", [("l0" * 500, 1.0)] * 50)
            # the old rows are all there and readable, in this process
            assert {e.name for e in lib.all()} >= {"l0", "l1", "l2", "l3", "l4"}
            assert lib.find("l1").favorite and lib.stacks()["mine"] == [("l0", 0.5)]
        assert _integrity(data / "library.sqlite3") == "ok"
        # opening the index while the disk is still full: a message (temporary in-memory index),
        # and the file on disk is left alone
        with Library([root], data) as lib:
            assert lib.problems and "in-memory" in lib.problems[0]
            assert lib.scan().total == 45 and lib.find("l0").name == "l0"
        assert _integrity(data / "library.sqlite3") == "ok"
        os.remove(filler)
        with Library([root], data) as lib:   # space is back: old user data is there, the scan completes
            assert not lib.problems
            assert lib.find("l1").favorite and lib.stacks()["mine"] == [("l0", 0.5)]
            report = lib.scan()
            assert not report.problems and len(lib) == 45
            assert lib.find("new39").name == "new39"
        assert _integrity(data / "library.sqlite3") == "ok"


# ------------------------------------------------------------------------ read-only models folder
def test_read_only_models_folder(tmp_path):
    from lora_core.ui.controller import LoraTabController
    from lora_core.ui.tab import TabSettings

    src = tmp_path / "src"
    paths = _make_folder(src)
    view = tmp_path / "ro"
    with read_only_bind(src, view):
        root = Path(view)
        with Library([root], tmp_path / "data") as lib:
            assert lib.scan().total == 2          # reading works
            entry = lib.find("l0")
            assert entry.user_metadata == OLD
            with pytest.raises(StorageError, match="Read-only"):
                lib.write_user_metadata(entry.path, {"notes": "new"})
            status = LoraTabController(lambda: lib, TabSettings()).save_user_metadata(entry.path, {"notes": "new"})
            assert status.startswith("Could not save") and "Read-only" in status
            with pytest.raises(OSError, match="Read-only"):
                civitai_files.write_info(entry.path, {"id": 1})
            # favorites, tags and stacks live in the index, not the models folder: they still work
            lib.set_favorite(entry.path, True)
            assert lib.find("l0").favorite
        _assert_old_sidecars(root)
        assert _temp_files(root) == []
    assert paths


def test_read_only_data_dir_falls_back_with_a_message(tmp_path):
    root = tmp_path / "Lora"
    _make_folder(root)
    src = tmp_path / "data_src"
    with Library([root], src) as lib:   # an index made earlier
        lib.scan()
        lib.set_favorite(str(root / "l1.safetensors"), True)
    before = (src / "library.sqlite3").read_bytes()
    view = tmp_path / "data_ro"
    with read_only_bind(src, view):
        with Library([root], view) as lib:
            assert lib.problems and "in-memory" in lib.problems[0]
            assert lib.scan().total == 2 and lib.find("l0").name == "l0"
            lib.save_stack("x", [("l0", 1.0)])   # kept for this run only
            assert "x" in lib.stacks()
    assert (src / "library.sqlite3").read_bytes() == before
    assert _integrity(src / "library.sqlite3") == "ok"
