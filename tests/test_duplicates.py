"""Duplicates (same SHA256 in several places) in a real temp library: listing, "keep one" into the
trash with sidecars, collision-safe names, undo, and refusals; newer versions on Civitai through the
loopback mock (badge data, cache, offline)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from lora_core.library import Library
from lora_core.library import duplicates, updates
from tests.civitai_mock import CivitaiMock, closed_port_url, make_model, make_version, new_client
from tests.library.libtest_files import kohya_lora, kohya_metadata, write_lora


def _hashed(lib):
    lib.scan()
    lib.request_hashes()
    assert lib.wait_for_hashes(60)


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "Lora"
    first = write_lora(root / "style.safetensors", kohya_lora(rank=4), kohya_metadata(name="style"))
    os.makedirs(root / "copies" / "deep")
    shutil.copy2(first, root / "copies" / "style_copy.safetensors")
    shutil.copy2(first, root / "copies" / "deep" / "style.safetensors")
    (root / "copies" / "deep" / "style.json").write_text(json.dumps({"activation text": "mine"}))
    (root / "copies" / "deep" / "style.preview.png").write_bytes(b"\x89PNG fake")
    write_lora(root / "other.safetensors", kohya_lora(rank=2), kohya_metadata(name="other"))
    library = Library([root], data_dir=tmp_path / "data")
    _hashed(library)
    yield library
    library.close()


def test_find_keep_one_and_undo(lib, tmp_path):
    root = tmp_path / "Lora"
    report = duplicates.find_duplicates(lib)
    assert report.unhashed == 0
    (group,) = report.groups
    paths = [e.path for e in group.entries]
    assert paths == sorted(str(p) for p in (root / "style.safetensors", root / "copies" / "style_copy.safetensors",
                                            root / "copies" / "deep" / "style.safetensors"))
    original = (root / "style.safetensors").read_bytes()
    # something already in the trash under the same name: the new one gets " (2)"
    os.makedirs(root / ".trash" / "copies" / "deep")
    (root / ".trash" / "copies" / "deep" / "style.json").write_text("{}")

    result = duplicates.keep_one(lib, str(root / "style.safetensors"))
    assert result.ok, result.message
    trashed = root / ".trash" / "copies" / "deep" / "style (2).safetensors.trashed"
    assert trashed.read_bytes() == original
    assert json.loads((root / ".trash" / "copies" / "deep" / "style (2).json").read_text()) == {"activation text": "mine"}
    assert (root / ".trash" / "copies" / "deep" / "style (2).preview.png").exists()
    assert (root / ".trash" / "copies" / "style_copy.safetensors.trashed").read_bytes() == original
    assert not (root / "copies" / "deep" / "style.safetensors").exists()
    assert (root / "style.safetensors").read_bytes() == original  # the kept one is untouched
    # the index follows, and the trash is not listed as LoRAs
    assert sorted(e.name for e in lib.all()) == ["other", "style"]
    assert duplicates.find_duplicates(lib).groups == []
    assert [b["id"] for b in duplicates.trash_batches(lib)] == [result.batch_id]

    back = duplicates.undo(lib, result.batch_id)
    assert back.ok, back.message
    assert (root / "copies" / "deep" / "style.safetensors").read_bytes() == original
    assert json.loads((root / "copies" / "deep" / "style.json").read_text()) == {"activation text": "mine"}
    assert (root / "copies" / "style_copy.safetensors").exists() and not trashed.exists()
    assert duplicates.trash_batches(lib) == []
    # the recorded hashes came back with the files (same size and mtime): nothing to hash again
    again = duplicates.find_duplicates(lib)
    assert again.unhashed == 0 and len(again.groups[0].entries) == 3
    assert not duplicates.undo(lib, result.batch_id).ok  # twice: a message, nothing moves


def test_refusals(lib, tmp_path):
    root = tmp_path / "Lora"
    assert "no other copy" in duplicates.keep_one(lib, str(root / "other.safetensors")).message
    assert not duplicates.keep_one(lib, str(tmp_path / "elsewhere.safetensors")).ok
    # a copy changed since it was hashed is not trashed as a duplicate
    changed = root / "copies" / "style_copy.safetensors"
    with open(changed, "ab") as fh:
        fh.write(b"\0")
    result = duplicates.keep_one(lib, str(root / "style.safetensors"))
    assert result.ok and "changed since it was hashed" in result.message
    assert changed.exists() and not (root / ".trash" / "copies" / "style_copy.safetensors.trashed").exists()
    # undo never overwrites a file that took the old place
    (root / "copies" / "deep" / "style.safetensors").write_bytes(b"new file")
    back = duplicates.undo(lib, result.batch_id)
    assert not back.ok and "a file is there now" in back.message
    assert (root / "copies" / "deep" / "style.safetensors").read_bytes() == b"new file"
    assert (root / ".trash" / "copies" / "deep" / "style.safetensors.trashed").exists()
    # a tampered record cannot move files from outside the trash
    manifest = root / ".trash" / duplicates.MANIFEST
    batches = json.loads(manifest.read_text())
    batches[0]["moves"] = [[str(tmp_path / "outside.txt"), str(root / "other.safetensors")]]
    manifest.write_text(json.dumps(batches))
    assert not duplicates.undo(lib, batches[0]["id"]).ok
    assert (root / "other.safetensors").exists() and not (tmp_path / "outside.txt").exists()


def _civitai_lib(tmp_path, versions):
    root = tmp_path / "Lora"
    write_lora(root / "old.safetensors", kohya_lora(rank=4), kohya_metadata(name="old"))
    write_lora(root / "current.safetensors", kohya_lora(rank=3), kohya_metadata(name="current"))
    write_lora(root / "plain.safetensors", kohya_lora(rank=2), kohya_metadata(name="plain"))
    (root / "old.civitai.info").write_text(json.dumps(versions[1]))
    (root / "current.civitai.info").write_text(json.dumps(versions[0]))
    lib = Library([root], data_dir=tmp_path / "data")
    lib.scan()
    return lib


def test_newer_version_from_civitai(tmp_path):
    v2, v1 = make_version(702, 70, b"v2 bytes", name="v2.0"), make_version(701, 70, b"v1 bytes", name="v1.0")
    lib = _civitai_lib(tmp_path, [v2, v1])
    with CivitaiMock() as mock:
        mock.add_model(make_model(70, [v2, v1]))
        checker = updates.UpdateChecker(lambda: lib, lambda: new_client(mock.base_url, tmp_path))
        assert checker.start()
        assert checker.wait(30)
        assert checker.status()["updates"] == 1, checker.status()
        assert mock.count("GET", "/api/v1/models/70") == 1  # one request per model, not per file
        (found,) = updates.updates_for(lib)
        assert (found.path, found.latest_version_id, found.latest_name, found.download) == (
            lib.find("old").path, 702, "v2.0", "civitai:70@702")
        assert updates.update_of(lib.find("current"), updates.read_cache(lib)) is None
        # cached: a second run within a day asks nothing
        checker.start()
        checker.wait(30)
        assert mock.count("GET", "/api/v1/models/70") == 1
    # offline: the cached answer stays; a forced re-check that fails changes nothing and raises nothing
    offline = updates.UpdateChecker(lambda: lib, lambda: new_client(closed_port_url(), tmp_path, max_retries=0))
    offline.start(force=True)
    offline.wait(30)
    assert offline.status()["errors"] == 1 and len(updates.updates_for(lib)) == 1
    lib.close()


def test_no_cache_no_badge(tmp_path):
    v2, v1 = make_version(802, 80, b"a"), make_version(801, 80, b"b")
    lib = _civitai_lib(tmp_path, [v2, v1])
    assert updates.updates_for(lib) == []
    (tmp_path / "data" / updates.CACHE_FILE).write_text("{not json")
    assert updates.updates_for(lib) == []
    lib.close()


def test_undo_does_not_restore_stale_hashes(lib, tmp_path):
    root = tmp_path / "Lora"
    result = duplicates.keep_one(lib, str(root / "style.safetensors"))
    trashed = root / ".trash" / "copies" / "style_copy.safetensors.trashed"
    with open(trashed, "ab") as fh:  # changed while in the trash: its recorded hash is wrong now
        fh.write(b"\0")
    assert duplicates.undo(lib, result.batch_id).ok
    restored = lib.entry(str(root / "copies" / "style_copy.safetensors"))
    assert restored.sha256 is None
    assert lib.entry(str(root / "copies" / "deep" / "style.safetensors")).sha256 == lib.find("./style").sha256
