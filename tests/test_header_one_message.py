"""Issue 14 item 12: one safetensors header reader, so one broken file gets one message from
`info` (formats.load_lora), `list` and the LoRA tab (the library's scan) alike."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
from hostile_files import CASES  # noqa: E402

from lora_core.commands import info as info_cmd  # noqa: E402
from lora_core.formats import LoraFormatError, load_lora  # noqa: E402
from lora_core.library import Library  # noqa: E402

HEADER_CASES = sorted(name for name, (_builder, stage) in CASES.items() if stage == "header")


def _info_error(path) -> str:
    parser = argparse.ArgumentParser()
    info_cmd.add_arguments(parser)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert info_cmd.run(parser.parse_args([str(path), "--no-hash"])) == 2
    return err.getvalue()


def _messages(folder: Path, data_dir: Path, path: str) -> tuple[str, str, str]:
    with pytest.raises(LoraFormatError) as err:
        load_lora(path)
    with Library([folder], data_dir) as lib:
        lib.scan()
        entry = lib.entry(path)
    return err.value.problem, entry.error, _info_error(path)


def test_huge_header_length_in_a_small_file(tmp_path):
    """The issue's file: `info` said "runs past the end of the file", `list` and the tab said
    "over the 104857600 byte limit"."""
    folder = tmp_path / "Lora"
    folder.mkdir()
    path = folder / "broken.safetensors"
    path.write_bytes(struct.pack("<Q", 200 * 1024 * 1024) + b'{"a": 1}')
    loaded, listed, printed = _messages(folder, tmp_path / "data", str(path))
    assert loaded == listed
    assert listed in printed


@pytest.mark.parametrize("case", HEADER_CASES)
def test_every_broken_header_reads_the_same_everywhere(case, tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    path = CASES[case][0](os.fspath(folder))
    loaded, listed, printed = _messages(folder, tmp_path / "data", path)
    assert loaded == listed, (loaded, listed)
    assert listed in printed


def test_formats_reader_has_no_header_parser_of_its_own():
    text = (ROOT / "lora_core" / "formats" / "reader.py").read_text()
    assert "json.loads" not in text and "_MAX_HEADER_BYTES" not in text
