"""`python -m lora_core list` and the torch-free import guarantee of tags/library/list command."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, kohya_metadata, write_lora  # noqa: E402

from lora_core.commands import list_loras  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_list(argv):
    parser = argparse.ArgumentParser()
    list_loras.add_arguments(parser)
    return list_loras.run(parser.parse_args(argv))


def test_list_json(tmp_path, capsys):
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors", kohya_lora(context_dim=2048, te2=True), kohya_metadata("alpha"))
    write_lora(root / "sub" / "b.safetensors")
    (root / "bad.safetensors").write_bytes(b"xx")
    assert run_list(["--dir", str(root), "--data-dir", str(tmp_path / "d"), "--json", "--hashes"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 3 and out["scan"]["errors"] == 1
    entries = {e["rel_name"]: e for e in out["entries"]}
    assert entries["a"]["family"] == "sdxl" and entries["a"]["alias"] == "alpha"
    assert len(entries["sub/b"]["sha256"]) == 64 and entries["sub/b"]["autov2"] == entries["sub/b"]["sha256"][:10]
    assert "shorter than" in entries["bad"]["error"]


def test_list_table_and_filters(tmp_path, capsys):
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors", kohya_lora(context_dim=2048, te2=True))
    write_lora(root / "b.safetensors")
    assert run_list(["--dir", str(root), "--data-dir", str(tmp_path / "d"), "--family", "sd1"]) == 0
    out = capsys.readouterr().out
    assert "b " in out and "\na " not in out and "1 LoRA file(s)" in out


def test_catalog_modules_do_not_import_torch():
    code = (
        "import sys, lora_core.tags, lora_core.library, lora_core.commands.list_loras\n"
        "import lora_core.library.thumbnails, lora_core.library.hashing\n"
        "heavy = [m for m in ('torch', 'numpy', 'safetensors', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
