"""Issue 14 item 13: rewriting a file keeps its mode (name.json at 0644 stays 0644), a new file
gets the umask's default (not mkstemp's 0600); sidecars, Civitai files and merged checkpoints all
go through the one helper, lora_core.library.atomic.atomic_write."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import write_lora  # noqa: E402

from lora_core.library import Library  # noqa: E402
from lora_core.library.atomic import atomic_write, current_umask  # noqa: E402
from lora_core.library.civitai_files import write_info  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_current_umask_reads_without_changing(umask_022):
    assert current_umask() == 0o022
    os.umask(0o027)
    assert current_umask() == 0o027


def test_atomic_write_keeps_mode_or_uses_umask_default(tmp_path, umask_022):
    new = tmp_path / "new.bin"
    atomic_write(new, b"one")
    assert new.read_bytes() == b"one" and mode(new) == 0o644
    os.chmod(new, 0o640)
    atomic_write(new, lambda tmp: Path(tmp).write_bytes(b"two"))  # a writer given the temp path
    assert new.read_bytes() == b"two" and mode(new) == 0o640
    os.umask(0o077)
    atomic_write(tmp_path / "private.bin", b"x")
    assert mode(tmp_path / "private.bin") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "private.bin"]  # no temp files left


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_user_metadata_keeps_the_sidecar_mode(tmp_path, umask_022):
    root = tmp_path / "Lora"
    lora = write_lora(root / "a.safetensors")
    sidecar = root / "a.json"
    sidecar.write_text(json.dumps({"description": "x"}))
    os.chmod(sidecar, 0o644)
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        lib.write_user_metadata(lora, {"activation text": "inkwash"})
        assert json.loads(sidecar.read_text())["activation text"] == "inkwash"
        assert mode(sidecar) == 0o644  # was 0600 (mkstemp's mode) before
        os.chmod(sidecar, 0o664)
        lib.write_user_metadata(lora, {"notes": "n"})
        assert mode(sidecar) == 0o664
        write_lora(root / "b.safetensors")
        lib.scan()
        lib.write_user_metadata(str(root / "b.safetensors"), {"notes": "new"})
        assert mode(root / "b.json") == 0o644  # a new sidecar: the umask's default


def test_civitai_files_get_the_umask_default(tmp_path, umask_022):
    write_info(tmp_path / "a.safetensors", {})
    assert mode(tmp_path / "a.civitai.info") == 0o644


def test_merged_checkpoint_mode(tmp_path, umask_022):
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).parent / "patcher"))
    from engine_makers import make_lora, tiny_ldm_checkpoint
    from safetensors.torch import save_file

    from lora_core.commands import merge as merge_cmd
    from lora_core.request import ApplyRequest

    ckpt = tmp_path / "tiny.safetensors"
    save_file(tiny_ldm_checkpoint(), str(ckpt))
    lora = make_lora(tmp_path, "a", seed=1)
    out = tmp_path / "merged.safetensors"
    assert merge_cmd.merge(str(ckpt), [ApplyRequest(lora, 1.0, 1.0)], str(out))
    assert mode(out) == 0o644
    os.chmod(out, 0o640)
    merge_cmd.merge(str(ckpt), [ApplyRequest(lora, 0.5, 0.5)], str(out))
    assert mode(out) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".partial"))]
