"""The safetensors reader maps the file and views tensors in place: same values as the safetensors
library for every dtype and layout, writes never reach the file, and a file that shrinks between
the header check and the read is refused by name."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_core.formats import LoraFormatError
from lora_core.formats import reader


def _tensors():
    g = torch.Generator().manual_seed(3)
    return {
        "a.f16": torch.randn(7, 5, generator=g).half(),
        "b.bf16": torch.randn(3, 2, 2, generator=g).bfloat16(),
        "c.f32": torch.randn(11, generator=g),
        "d.f64": torch.randn(2, 3, generator=g).double(),
        "e.i64": torch.arange(6).reshape(2, 3),
        "f.u8": torch.arange(9, dtype=torch.uint8),
        "g.bool": torch.tensor([True, False, True]),
        "h.scalar": torch.tensor(4.0),
        "i.empty": torch.zeros(0, 4),
        "j.f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
    }


def test_values_match_the_safetensors_library(tmp_path):
    path = tmp_path / "all.safetensors"
    save_file(_tensors(), str(path), metadata={"k": "v"})
    ours, meta = reader.read_tensors(str(path))
    theirs = load_file(str(path))
    assert meta == {"k": "v"}
    assert set(ours) == set(theirs)
    for key, t in theirs.items():
        assert ours[key].dtype == t.dtype and ours[key].shape == t.shape, key
        # compared as bytes: NaN-free equality for every dtype, float8 included
        assert torch.equal(ours[key].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), key


def _write_unaligned(path):
    """A valid file whose header length is odd, so every tensor's data starts unaligned."""
    data = struct.pack("<4f", 1.5, -2.0, 3.25, 0.0) + struct.pack("<2e", 0.5, -1.0)
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "h": {"dtype": "F16", "shape": [2], "data_offsets": [16, 20]}}
    raw = json.dumps(header).encode()
    if len(raw) % 2 == 0:
        raw += b" "
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_unaligned_data_is_read_correctly(tmp_path):
    path = tmp_path / "odd.safetensors"
    _write_unaligned(path)
    tensors, _ = reader.read_tensors(str(path))
    assert tensors["w"].tolist() == [[1.5, -2.0], [3.25, 0.0]]
    assert tensors["h"].tolist() == [0.5, -1.0]
    assert tensors["w"].data_ptr() % 4 == 0  # copied to aligned memory


def test_writing_a_tensor_never_changes_the_file(tmp_path):
    path = tmp_path / "cow.safetensors"
    save_file({"x": torch.ones(64)}, str(path))
    before = path.read_bytes()
    tensors, _ = reader.read_tensors(str(path))
    tensors["x"].mul_(7)
    del tensors
    assert path.read_bytes() == before


def test_file_shrunk_after_the_header_check_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "shrinks.safetensors"
    save_file({"x": torch.ones(1024), "y": torch.ones(1024)}, str(path))
    real_check = reader.check_safetensors_header

    def check_then_truncate(p):
        result = real_check(p)
        with open(p, "r+b") as f:  # another process rewrites the file in between
            f.truncate(f.seek(0, 2) - 2048)
        return result

    monkeypatch.setattr(reader, "check_safetensors_header", check_then_truncate)
    with pytest.raises(LoraFormatError) as info:
        reader.read_tensors(str(path))
    assert "shrinks.safetensors" in str(info.value)
    assert "changed while it was read" in info.value.problem
