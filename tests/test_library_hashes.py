"""Hashes: sha256 / AutoV2 / AutoV3 (A1111 addnet), computed in the background, cached, looked up."""
import hashlib
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, write_lora  # noqa: E402

from lora_core.library import Library  # noqa: E402
from lora_core.library import hashing  # noqa: E402


def a1111_addnet_hash(path):
    """kohya/A1111 definition: sha256 of everything after 8 + header-length bytes."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest()


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors", kohya_lora(rank=8))
    write_lora(root / "b.safetensors", kohya_lora(rank=4))
    (root / "c.pt").write_bytes(b"\x80\x02}q\x00." + b"\0" * 100)
    library = Library([root], tmp_path / "data")
    library.scan()
    yield library
    library.close()


def test_hash_values_match_definitions(lib):
    assert lib.request_hashes() == 3
    assert lib.wait_for_hashes(30)
    for entry in lib.all():
        data = Path(entry.path).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.autov2 == entry.sha256[:10]
        if entry.ext == ".safetensors":
            assert entry.addnet_sha256 == a1111_addnet_hash(entry.path)
            assert entry.autov3 == entry.addnet_sha256[:12] != entry.sha256[:12]
        else:  # A1111 uses the whole-file hash for non-safetensors
            assert entry.addnet_sha256 == entry.sha256


def test_hash_file_chunking_matches_across_block_boundaries(tmp_path, monkeypatch):
    path = write_lora(tmp_path / "x.safetensors", kohya_lora(rank=64))
    monkeypatch.setattr(hashing, "BLOCK", 7)
    sha, addnet = hashing.hash_file(path, True)
    assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert addnet == a1111_addnet_hash(path)


def test_hashing_is_background_and_reports_progress(lib, monkeypatch):
    gate = threading.Event()
    real = hashing.hash_file

    def slow(*args, **kwargs):
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashing, "hash_file", slow)
    calls = []
    start = time.perf_counter()
    lib.request_hashes(progress=lambda done, total, path: calls.append((done, total)))
    assert time.perf_counter() - start < 0.5 and lib.hashing
    assert lib.find("a").sha256 is None           # not blocking: nothing yet
    gate.set()
    assert lib.wait_for_hashes(30)
    assert calls[-1] == (3, 3) and not lib.hashing


def test_never_hashed_twice_for_an_unchanged_file(lib, tmp_path):
    lib.request_hashes()
    lib.wait_for_hashes(30)
    assert lib._hasher.computed == 3
    assert lib.request_hashes() == 0               # nothing left to hash
    lib.request_hashes([lib.find("a").path])       # explicitly asked again: cached
    lib.wait_for_hashes(30)
    assert lib._hasher.computed == 3
    with Library(lib.dirs, tmp_path / "data") as again:  # new process view: cache persists
        again.scan()
        assert again.find("a").sha256 is not None and again.request_hashes() == 0


def test_changed_file_loses_its_hash(lib):
    lib.request_hashes()
    lib.wait_for_hashes(30)
    old = lib.find("a").sha256
    time.sleep(0.01)
    write_lora(lib.find("a").path, kohya_lora(rank=2))
    lib.scan()
    assert lib.find("a").sha256 is None
    lib.request_hashes()
    lib.wait_for_hashes(30)
    assert lib.find("a").sha256 not in (None, old)


def test_by_hash_any_form_case_insensitive(lib):
    lib.request_hashes()
    lib.wait_for_hashes(30)
    a = lib.find("a")
    for form in (a.sha256, a.sha256.upper(), a.autov2, a.autov2.upper(), a.autov3, a.addnet_sha256, "0x" + a.autov2):
        assert [e.name for e in lib.by_hash(form)] == ["a"], form
    assert lib.by_hash("zzzzzzzz") == [] and lib.by_hash("ab") == [] and lib.by_hash("0" * 64) == []
