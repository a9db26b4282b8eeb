"""Scanning into the SQLite index: incremental rescans, deletions, bad files, symlinks, storage failures."""
import builtins
import json
import multiprocessing
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, kohya_metadata, write_lora  # noqa: E402

from lora_core.library import Library, scanner  # noqa: E402
from lora_core.library.index_db import IndexDB  # noqa: E402


@pytest.fixture
def lora_dir(tmp_path):
    root = tmp_path / "models" / "Lora"
    write_lora(root / "a.safetensors", metadata=kohya_metadata("alpha"))
    write_lora(root / "chars" / "b.safetensors", kohya_lora(context_dim=2048, te2=True), kohya_metadata("beta", base="sdxl_base_v1-0"))
    write_lora(root / "chars" / "deep" / "c.safetensors", kohya_lora(context_dim=1024, te_dim=1024))
    return root


def lib_for(root, tmp_path):
    return Library([root], tmp_path / "data")


class OpenSpy:
    """Records every LoRA file opened (through builtins.open) while active."""

    def __init__(self, monkeypatch):
        self.opened = []
        real_open = builtins.open

        def spy(file, *args, **kwargs):
            if str(file).endswith((".safetensors", ".pt", ".ckpt")):
                self.opened.append(str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy)


def test_cold_scan_indexes_everything(lora_dir, tmp_path):
    calls = []
    with lib_for(lora_dir, tmp_path) as lib:
        report = lib.scan(progress=lambda done, total, path: calls.append((done, total)))
        assert (report.total, report.read, report.errors) == (3, 3, 0)
        assert calls == [(1, 3), (2, 3), (3, 3)]
        by_rel = {e.rel_name: e for e in lib.all()}
        assert set(by_rel) == {"a", "chars/b", "chars/deep/c"}
        assert by_rel["a"].family == "sd1" and by_rel["chars/b"].family == "sdxl" and by_rel["chars/deep/c"].family == "sd2"
        assert by_rel["a"].alias == "alpha" and by_rel["chars/deep/c"].folder == "chars/deep"
        assert by_rel["a"].summary["top_tags"][0] == ["1girl", 10]
    assert (tmp_path / "data" / "library.sqlite3").exists()


def test_warm_start_reads_no_lora_file(lora_dir, tmp_path, monkeypatch):
    with lib_for(lora_dir, tmp_path) as lib:
        lib.scan()
    spy = OpenSpy(monkeypatch)
    with lib_for(lora_dir, tmp_path) as lib:
        report = lib.scan()
        assert report.read == 0 and report.total == 3
        assert lib.find("b").rel_name == "chars/b"
    assert spy.opened == []


def test_rescan_reads_only_new_and_changed_and_drops_deleted(lora_dir, tmp_path, monkeypatch):
    with lib_for(lora_dir, tmp_path) as lib:
        lib.scan()
        time.sleep(0.01)
        write_lora(lora_dir / "a.safetensors", kohya_lora(rank=8), kohya_metadata("alpha2"))
        write_lora(lora_dir / "new.safetensors")
        os.remove(lora_dir / "chars" / "deep" / "c.safetensors")
        spy = OpenSpy(monkeypatch)
        report = lib.scan()
        assert sorted(os.path.basename(p) for p in spy.opened) == ["a.safetensors", "new.safetensors"]
        assert (report.read, report.removed, report.total) == (2, 1, 3)
        assert lib.find("alpha2").name == "a"
        assert {e.rel_name for e in lib.all()} == {"a", "chars/b", "new"}
        assert lib.search("deep").total == 0  # search index follows deletions


def test_sidecar_change_rereads_sidecar_not_lora(lora_dir, tmp_path, monkeypatch):
    with lib_for(lora_dir, tmp_path) as lib:
        lib.scan()
        (lora_dir / "a.json").write_text(json.dumps({"activation text": "inkwash style"}))
        (lora_dir / "a.preview.png").write_bytes(b"x")
        spy = OpenSpy(monkeypatch)
        report = lib.scan()
        assert spy.opened == [] and report.sidecars == 1 and report.read == 0
        entry = lib.find("a")
        assert entry.trigger_words == ["inkwash style"] and entry.preview.endswith("a.preview.png")
        assert lib.search("inkwash").total == 1


def test_bad_files_become_error_entries_and_scan_goes_on(lora_dir, tmp_path, monkeypatch):
    (lora_dir / "short.safetensors").write_bytes(b"1234")
    good = (lora_dir / "a.safetensors").read_bytes()
    (lora_dir / "trunc.safetensors").write_bytes(good[: len(good) // 2])
    (lora_dir / "garbage.pt").write_bytes(b"hello world")
    (lora_dir / "legacy.ckpt").write_bytes(b"\x80\x02}q\x00.")
    os.mkfifo(lora_dir / "fifo.safetensors")
    os.symlink(lora_dir / "missing-target.safetensors", lora_dir / "broken.safetensors")
    (lora_dir / "locked.safetensors").write_bytes(good)
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if str(file).endswith("locked.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with lib_for(lora_dir, tmp_path) as lib:
        report = lib.scan()
        errors = {e.rel_name: e.error for e in lib.all() if e.error}
        assert report.errors == len(errors) == 6
        assert "shorter than the 8-byte" in errors["short"]
        assert "beyond the data area" in errors["trunc"]
        assert "not a safetensors or torch" in errors["garbage"]
        assert errors["fifo"] == "not a regular file"
        assert "broken symbolic link" in errors["broken"]
        assert "Permission denied" in errors["locked"]
        legacy = lib.find("legacy")
        assert legacy.error is None and "legacy pickle" in legacy.summary["note"]
        assert lib.find("a").error is None  # good files still indexed
        monkeypatch.setattr(builtins, "open", real_open)   # permission fixed: mtime unchanged
        report = lib.scan()
        assert lib.find("locked").error is None and report.errors == 5


def test_symlinks_out_of_the_library_are_not_followed(tmp_path):
    root = tmp_path / "lib"
    outside = tmp_path / "outside"
    write_lora(outside / "secret.safetensors")
    write_lora(outside / "dir" / "hidden.safetensors")
    write_lora(root / "inner" / "real.safetensors")
    os.symlink(outside / "secret.safetensors", root / "secret.safetensors")
    os.symlink(outside / "dir", root / "linkdir")
    os.symlink(root / "inner", root / "alias_dir")          # inside: followed but not double-indexed
    os.symlink(root, root / "inner" / "loop")               # loop: visited once
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        names = sorted(e.name for e in lib.all())
        assert names == ["real"]


def test_extra_dirs_and_nested_roots_index_each_file_once(tmp_path):
    main, extra = tmp_path / "models" / "Lora", tmp_path / "extra"
    write_lora(main / "a.safetensors")
    write_lora(main / "sub" / "b.safetensors")
    write_lora(extra / "c.safetensors")
    with Library([main, extra, main / "sub"], tmp_path / "data") as lib:
        assert lib.scan().total == 3
        assert sorted(e.name for e in lib.all()) == ["a", "b", "c"]


def test_missing_library_folder_is_a_problem_not_a_crash(tmp_path):
    with Library([tmp_path / "nope"], tmp_path / "data") as lib:
        report = lib.scan()
        assert report.total == 0 and "does not exist" in report.problems[0]


def test_unwritable_data_dir_falls_back_to_memory(lora_dir, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with Library([lora_dir], blocker / "data") as lib:
        assert lib.problems and "in-memory" in lib.problems[0]
        assert lib.scan().total == 3 and lib.find("a").name == "a"


def test_disk_full_during_scan_keeps_index_consistent(lora_dir, tmp_path, monkeypatch):
    with lib_for(lora_dir, tmp_path) as lib:
        lib.scan()
    write_lora(lora_dir / "new.safetensors")

    def full(conn, records):
        conn.execute("DELETE FROM files")  # partial work that must be rolled back
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(IndexDB, "upsert_files", staticmethod(full))
    with lib_for(lora_dir, tmp_path) as lib:
        report = lib.scan()
        assert any("disk full" in p for p in report.problems)
        assert len(lib) == 3  # the failed transaction left the previous index intact
    monkeypatch.undo()
    conn = sqlite3.connect(tmp_path / "data" / "library.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with lib_for(lora_dir, tmp_path) as lib:
        assert lib.scan().read == 1 and len(lib) == 4


def _scan_in_process(root, data_dir, queue):
    try:
        with Library([root], data_dir) as lib:
            lib.scan()
            queue.put(len(lib))
    except Exception as exc:  # reported to the parent
        queue.put(repr(exc))


def test_two_processes_scanning_one_folder_and_index(tmp_path):
    root = tmp_path / "shared"
    for i in range(120):
        write_lora(root / f"d{i % 4}" / f"l{i}.safetensors", metadata=kohya_metadata(f"n{i}"))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_scan_in_process, args=(root, tmp_path / "data", queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [120, 120]
    with Library([root], tmp_path / "data") as lib:
        assert lib.scan().read == 0 and len(lib) == 120
        assert lib.search("n17").total == 1


def test_index_is_scoped_to_the_library_roots(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_lora(one / "a.safetensors")
    write_lora(two / "b.safetensors")
    data = tmp_path / "data"
    with Library([one], data) as lib_one, Library([two], data) as lib_two:
        lib_one.scan()
        lib_two.scan()
        lib_one.scan()  # must not prune the other library's rows
        assert [e.name for e in lib_one.all()] == ["a"] and [e.name for e in lib_two.all()] == ["b"]


def test_walk_reports_unlistable_folder(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    write_lora(root / "sub" / "x.safetensors")
    real_scandir = os.scandir

    def failing(path):
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(scanner.os, "scandir", failing)
    result = scanner.walk([str(root)])
    assert result.files == {} and "cannot list" in result.problems[0]


def test_unmounted_folder_keeps_its_entries(tmp_path):
    drive = tmp_path / "drive"
    write_lora(drive / "a.safetensors")
    with Library([drive], tmp_path / "data") as lib:
        lib.scan()
        drive.rename(tmp_path / "elsewhere")
        report = lib.scan()
        assert report.removed == 0 and "does not exist" in report.problems[0]
        assert lib.find("a").name == "a"
