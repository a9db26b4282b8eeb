"""`info`: algorithms, family, rank/alpha, module counts, training metadata, hashes."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from engine_makers import make_lora  # noqa: E402

from lora_core.commands import info as info_cmd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

META = {
    "ss_output_name": "tiny_style",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "8",
    "ss_num_epochs": "3",
    "ss_base_model_version": "sd_v1",
    "ss_tag_frequency": json.dumps({"5_set": {"red hat": 9, "smile": 4}, "1_more": {"red hat": 2}}),
    "ss_sd_model_name": "evil\x1b[31mred\nname",
}


def run_info(*argv):
    parser = argparse.ArgumentParser()
    info_cmd.add_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = info_cmd.run(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    d = tmp_path_factory.mktemp("info")
    return make_lora(d, "tiny_style", seed=1, rank=4, alpha=8.0, kohya=True, metadata=META)


def _expected_hashes(path):
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(data[8 + n:]).hexdigest()


def test_json_output(lora):
    code, out, err = run_info(lora, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["algorithms"] == {"lora": 54}
    assert info["modules"] == {"unet": 48, "te1": 6}
    assert info["ranks"] == {"4": 54} and info["alphas"] == {"8": 54}
    assert info["family"] in ("sd1", "unknown")
    assert info["training"]["network module"] == "networks.lora"
    assert info["training"]["epochs"] == "3"
    assert info["top_tags"][0] == ["red hat", 11]
    sha, addnet = _expected_hashes(lora)
    h = info["hashes"]
    assert h["sha256"] == sha and h["autov2"] == sha[:10]
    assert h["addnet"] == addnet and h["autov3"] == addnet[:12]
    assert h["addnet"] != h["sha256"]


def test_text_output_is_safe_and_complete(lora):
    code, out, _ = run_info(lora)
    assert code == 0
    assert "lora ×54" in out and "unet ×48" in out and "te1 ×6" in out
    assert "tiny_style" in out and "red hat (11)" in out
    sha, addnet = _expected_hashes(lora)
    assert sha in out and addnet[:12].upper() in out
    assert "\x1b" not in out  # metadata cannot inject terminal escapes
    assert "evil" in out and "red" in out


def test_bad_and_missing_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00notjson!")
    code, out, err = run_info(bad)
    assert code == 2 and "bad.safetensors" in err and out == ""
    code, _o, err = run_info(tmp_path / "missing.safetensors")
    assert code == 2 and "no such file" in err


def test_command_line_entry_point(lora):
    proc = subprocess.run([sys.executable, "-m", "lora_core", "info", str(lora), "--json", "--no-hash"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["algorithms"] == {"lora": 54}
