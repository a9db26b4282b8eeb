"""Hostile and broken files: every one must raise LoraFormatError naming the file and the problem;
no pickle may run code."""
from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from lora_core.formats import LoraFormatError, load_lora


def good_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "lora_unet_a_proj_in.lora_up.weight": torch.randn(16, 4, generator=g),
        "lora_unet_a_proj_in.lora_down.weight": torch.randn(4, 16, generator=g),
        "lora_unet_a_proj_in.alpha": torch.tensor(4.0),
    }


def write_raw(path, header: dict | bytes, data: bytes, header_len: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def expect_error(path, *words):
    with pytest.raises(LoraFormatError) as info:
        load_lora(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == os.fspath(path)
    assert os.path.basename(os.fspath(path)) in str(err)
    for w in words:
        assert w.lower() in err.problem.lower(), (w, err.problem)
    return err


def test_valid_file_loads(tmp_path):
    save_file(good_tensors(), str(tmp_path / "ok.safetensors"))
    assert list(load_lora(tmp_path / "ok.safetensors").adapters) == ["unet:a_proj_in"]


def test_truncated_file(tmp_path):
    p = tmp_path / "trunc.safetensors"
    save_file(good_tensors(), str(p))
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    expect_error(p, "beyond the data area")


def test_header_length_beyond_file(tmp_path):
    p = write_raw(tmp_path / "long.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                  b"\0\0\0\0", header_len=10_000)
    expect_error(p, "beyond the end")


def test_tiny_file(tmp_path):
    p = tmp_path / "tiny.safetensors"
    p.write_bytes(b"abc")
    expect_error(p, "shorter than")


def test_invalid_json_header(tmp_path):
    p = write_raw(tmp_path / "json.safetensors", b"{not json at all", b"")
    expect_error(p, "json")


def test_header_not_an_object(tmp_path):
    expect_error(write_raw(tmp_path / "list.safetensors", [1, 2, 3], b""), "object")


@pytest.mark.parametrize("entry,words", [
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}, ("needs 16 bytes",)),
    ({"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}, ("dtype",)),
    ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, ("shape",)),
    ({"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}, ("beyond the data area",)),
    ({"dtype": "F32", "shape": [4], "data_offsets": "x"}, ("data_offsets",)),
])
def test_bad_entries(tmp_path, entry, words):
    p = write_raw(tmp_path / "entry.safetensors", {"lora_unet_a.lora_up.weight": entry}, b"\0" * 16)
    expect_error(p, *words)


def test_overlapping_tensors(tmp_path):
    header = {
        "lora_unet_a.lora_up.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "lora_unet_a.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]},
    }
    expect_error(write_raw(tmp_path / "overlap.safetensors", header, b"\0" * 24), "overlap")


def test_bad_metadata(tmp_path):
    header = {"__metadata__": ["x"], "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    expect_error(write_raw(tmp_path / "meta.safetensors", header, b"\0" * 4), "metadata")


def test_nan_and_inf(tmp_path):
    for bad in (float("nan"), float("inf")):
        t = good_tensors()
        t["lora_unet_a_proj_in.lora_down.weight"][1, 2] = bad
        save_file(t, str(tmp_path / "nan.safetensors"))
        err = expect_error(tmp_path / "nan.safetensors", "nan or inf")
        assert "lora_unet_a_proj_in" in err.problem


def test_nan_in_fp16(tmp_path):
    t = {k: v.half() for k, v in good_tensors().items()}
    t["lora_unet_a_proj_in.lora_up.weight"][0, 0] = float("nan")
    save_file(t, str(tmp_path / "nan16.safetensors"))
    expect_error(tmp_path / "nan16.safetensors", "nan")


def test_zero_rank(tmp_path):
    t = {"lora_unet_a_proj_in.lora_up.weight": torch.zeros(16, 0),
         "lora_unet_a_proj_in.lora_down.weight": torch.zeros(0, 16)}
    save_file(t, str(tmp_path / "zero.safetensors"))
    err = expect_error(tmp_path / "zero.safetensors", "zero rank")
    assert "unet:a_proj_in" in err.problem


def test_absurd_rank(tmp_path):
    t = {"lora_unet_a_proj_in.lora_up.weight": torch.randn(16, 40),
         "lora_unet_a_proj_in.lora_down.weight": torch.randn(40, 8)}
    save_file(t, str(tmp_path / "absurd.safetensors"))
    err = expect_error(tmp_path / "absurd.safetensors", "absurd rank")
    assert "unet:a_proj_in" in err.problem


def test_mismatched_up_down(tmp_path):
    t = {"lora_unet_a_proj_in.lora_up.weight": torch.randn(16, 4),
         "lora_unet_a_proj_in.lora_down.weight": torch.randn(3, 16)}
    save_file(t, str(tmp_path / "mismatch.safetensors"))
    expect_error(tmp_path / "mismatch.safetensors", "does not fit")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_pickle_with_side_effect_is_refused(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"lora_unet_a.lora_up.weight": torch.zeros(2, 1), "x": _Evil(marker)}, path)
    err = expect_error(path, "refused")
    assert "run code" in err.problem
    assert not marker.exists()


def test_unreadable_pickle(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"\x80\x04junkjunkjunk")
    expect_error(p, "")


def test_pickle_of_wrong_type(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    expect_error(tmp_path / "list.pt", "dict")


def test_unsupported_extension(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello")
    expect_error(p, "unsupported file type")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "gone.safetensors", "cannot read")


def test_empty_tensor_file(tmp_path):
    save_file({}, str(tmp_path / "empty.safetensors"))
    expect_error(tmp_path / "empty.safetensors", "no tensors")


@pytest.mark.parametrize("tensors", [
    {"m.hada_w1_a": torch.randn(8, 2), "m.hada_w1_b": torch.randn(2, 8),
     "m.hada_w2_a": torch.randn(8, 3), "m.hada_w2_b": torch.randn(2, 8)},
    {"m.lokr_w1": torch.randn(2, 2), "m.lokr_w2_a": torch.randn(4, 2), "m.lokr_w2_b": torch.randn(3, 4)},
])
def test_inconsistent_factor_shapes_fail_at_load(tmp_path, tensors):
    save_file({"lora_unet_" + k: v for k, v in tensors.items()}, str(tmp_path / "bad.safetensors"))
    err = expect_error(tmp_path / "bad.safetensors", "unet:m")
    assert "inconsistent" in err.problem or "does not fit" in err.problem


def test_factors_not_fitting_the_base_give_a_value_error(tmp_path):
    t = {"lora_unet_m.oft_blocks": torch.randn(3, 4, 4) * 0.1, "lora_unet_m.alpha": torch.tensor(0.0),
         "lora_unet_g.a1.weight": torch.randn(8, 2), "lora_unet_g.a2.weight": torch.randn(2, 8),
         "lora_unet_g.b1.weight": torch.randn(8, 2), "lora_unet_g.b2.weight": torch.randn(2, 8)}
    save_file(t, str(tmp_path / "fit.safetensors"))
    lora = load_lora(tmp_path / "fit.safetensors")
    with pytest.raises(ValueError, match="unet:m"):
        lora.adapters["unet:m"].delta(torch.zeros(10, 4))  # 3 blocks of 4 rows, base has 10 rows
    with pytest.raises(ValueError, match="unet:g"):
        lora.adapters["unet:g"].delta(torch.zeros(5, 7))
    assert lora.adapters["unet:m"].delta(torch.randn(12, 4)).shape == (12, 4)


def test_scalar_factors_do_not_crash(tmp_path):
    t = {"lora_unet_k.lokr_w1": torch.tensor(2.0), "lora_unet_k.lokr_w2": torch.randn(3, 3),
         "lora_unet_h.hada_w1_a": torch.tensor(1.0), "lora_unet_h.hada_w1_b": torch.randn(2, 3),
         "lora_unet_h.hada_w2_a": torch.randn(3, 2), "lora_unet_h.hada_w2_b": torch.randn(2, 3)}
    save_file(t, str(tmp_path / "s.safetensors"))
    try:
        lora = load_lora(tmp_path / "s.safetensors")
    except LoraFormatError as e:
        assert "unet:" in e.problem
        return
    for adapter in lora.adapters.values():
        with pytest.raises(ValueError):
            adapter.delta(torch.zeros(5, 5))


def test_not_a_regular_file(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    expect_error(tmp_path / "dir.safetensors", "regular file")
    os.mkfifo(tmp_path / "fifo.pt")
    expect_error(tmp_path / "fifo.pt", "regular file")
