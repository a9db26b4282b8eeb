"""Hostile files through every door: the torch-free library scan, formats.load_lora, the Engine and
the `python -m lora_core info` command. Each case of tests/reliability/hostile_files.py must give
a message naming the file and the problem, never a crash, and no pickle may run code.

Per-surface unit tests live with their owners (test_formats_hostile.py, test_library_header.py,
test_library_scan.py, test_cli_engine_info.py); this file checks the same cases on all surfaces
at once, in one folder, so a case one surface forgets shows up here."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "tests" / "patcher"))
from hostile_files import CASES, MARKER_NAME, build_all, write_good  # noqa: E402

from lora_core import cli  # noqa: E402
from lora_core.formats import LoraFormatError, load_lora  # noqa: E402
from lora_core.library import Library  # noqa: E402

# words the message must contain, per case (load_lora / header reader wordings both accepted)
EXPECT = {
    "pickle that runs code (zip .pt)": ("refused",),
    "pickle that runs code (legacy .ckpt)": ("refused",),
    "truncated body": ("outside|beyond",),
    "header length beyond the file": ("past the end|beyond the end",),
    "100 MiB header": ("implausibly large|limit",),
    "invalid JSON header": ("json",),
    "100,000-deep nested JSON header": ("json",),
    "header not UTF-8": ("utf-8",),
    "overlapping offsets": ("overlap",),
    "offsets outside the file": ("outside|beyond",),
    "dtype/shape vs byte span mismatch": ("needs 64 bytes",),
    "unknown dtype": ("dtype",),
    "empty file": ("short",),
    "NaN values": ("nan",),
    "Inf values": ("inf",),
    "zero rank": ("zero rank",),
    "absurd rank": ("absurd rank",),
}


def _has(text: str, alternatives: str) -> bool:
    return any(a in text.lower() for a in alternatives.split("|"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "Lora"
    paths = build_all(root)
    paths["good"] = write_good(root / "good.safetensors")
    return root, paths


@pytest.fixture(autouse=True, scope="module")
def no_pickle_ran(folder):
    yield
    assert not (folder[0] / MARKER_NAME).exists(), "a pickle ran code"


def test_every_case_is_listed():
    assert set(EXPECT) == set(CASES)


def test_scan_gives_error_entries_with_reasons_and_continues(folder, tmp_path):
    root, paths = folder
    with Library([root], tmp_path / "data") as lib:
        report = lib.scan()
        assert report.total == len(paths)
        entries = {e.path: e for e in lib.all()}
        assert set(entries) == set(paths.values())  # every file has an entry: the scan went on
        good = entries[paths["good"]]
        assert good.error is None and good.family == "sd1" and good.algorithm == "lora"
        for name, (_builder, stage) in CASES.items():
            entry = entries[paths[name]]
            if stage == "header":
                assert entry.error and all(_has(entry.error, w) for w in EXPECT[name]), (name, entry.error)
            else:
                # tensor values and pickle contents are not read by the torch-free scan (it reads
                # headers only and never unpickles): these are refused when loaded, see below
                assert entry.error is None, (name, entry.error)
        assert report.errors == sum(1 for _b, stage in CASES.values() if stage == "header")
        # the error entries are not offered as LoRAs to apply
        assert lib.find("good").path == paths["good"]


@pytest.mark.parametrize("name", list(CASES))
def test_load_lora_raises_format_error_naming_the_file(folder, name):
    path = folder[1][name]
    with pytest.raises(LoraFormatError) as info:
        load_lora(path)
    assert info.value.path == path and os.path.basename(path) in str(info.value)
    assert all(_has(info.value.problem, w) for w in EXPECT[name]), info.value.problem


@pytest.mark.parametrize("name", list(CASES))
def test_cli_info_exits_nonzero_with_a_message_and_no_traceback(folder, name):
    path = folder[1][name]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["info", path, "--no-hash"])
    assert code != 0
    assert out.getvalue() == ""
    assert os.path.basename(path) in err.getvalue() and "Traceback" not in err.getvalue()
    assert all(_has(err.getvalue(), w) for w in EXPECT[name]), err.getvalue()


@pytest.mark.parametrize("name", ["pickle that runs code (zip .pt)", "100,000-deep nested JSON header"])
def test_cli_entry_point_in_a_real_process(folder, name):
    path = folder[1][name]
    proc = subprocess.run([sys.executable, "-m", "lora_core", "info", path], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert os.path.basename(path) in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_engine_refuses_each_case_by_name_and_applies_the_good_file(folder):
    import torch
    from engine_makers import base_models

    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest
    from lora_core.targets import Binding

    paths = folder[1]
    unet, te = base_models()
    w0 = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    engine = Engine(Binding.from_diffusers(unet, [te]))
    order = list(CASES) + ["good"]
    report = engine.apply([ApplyRequest(paths[n], 1.0, 1.0) for n in order])
    by_path = {r.path: r for r in report.loras}
    for name in CASES:
        r = by_path[paths[name]]
        assert r.refused and all(_has(r.refused, w) for w in EXPECT[name]), (name, r.refused)
        assert any(os.path.splitext(os.path.basename(paths[name]))[0] in w for w in report.warnings), name
    good = by_path[paths["good"]]
    assert good.refused is None and good.matched == 1
    key = "down_blocks.0.attentions.0.proj_in.weight"
    assert not torch.equal(unet.state_dict()[key], w0[key])
    engine.restore()
    assert all(torch.equal(unet.state_dict()[k], w0[k]) for k in w0)
