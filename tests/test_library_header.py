"""Torch-free safetensors header reader: agrees with the safetensors library, rejects bad files."""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_core.formats.header import MAX_HEADER_BYTES, HeaderError, read_header


def raw_file(path, header_obj, data=b"", header_bytes=None):
    body = header_bytes if header_bytes is not None else json.dumps(header_obj).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(body)) + body + data)
    return str(path)


def test_matches_safetensors_library(tmp_path):
    path = str(tmp_path / "a.safetensors")
    tensors = {"w": np.zeros((3, 5), np.float16), "b": np.arange(7, dtype=np.int64), "e": np.zeros((0, 4), np.float32),
               "s": np.array(2.5, np.float32)}
    save_file(tensors, path, metadata={"ss_output_name": "zeta", "k": "v"})
    header, metadata, offset = read_header(path)
    with safe_open(path, "np") as f:
        assert set(f.keys()) == set(header)
        assert f.metadata() == metadata
        for key in f.keys():
            assert list(f.get_tensor(key).shape) == header[key]["shape"]
    n = struct.unpack("<Q", open(path, "rb").read(8))[0]
    assert offset == 8 + n
    # the data offsets really locate the tensor bytes
    raw = open(path, "rb").read()
    begin, end = header["b"]["data_offsets"]
    assert np.frombuffer(raw[offset + begin: offset + end], np.int64).tolist() == list(range(7))


def good_entry(begin=0, shape=(2,), dtype="F32"):
    size = int(np.prod(shape)) * {"F32": 4, "F16": 2, "I8": 1}[dtype]
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + size]}


@pytest.mark.parametrize("make, fragment", [
    (lambda p: open(p, "wb").write(b"abc"), "shorter than the 8-byte"),
    (lambda p: open(p, "wb").write(struct.pack("<Q", 1000) + b"{}"), "beyond the end"),
    (lambda p: open(p, "wb").write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}"), "over the"),
    (lambda p: raw_file(p, None, header_bytes=b"\xff\xfe{}"), "not valid UTF-8"),
    (lambda p: raw_file(p, None, header_bytes=b"{not json"), "not valid JSON"),
    (lambda p: raw_file(p, [1, 2]), "not an object"),
    (lambda p: raw_file(p, {"__metadata__": [1]}), "__metadata__"),
    (lambda p: raw_file(p, {"a": good_entry(0), "b": good_entry(4)}, b"\0" * 12), "overlaps"),
    (lambda p: raw_file(p, {"a": good_entry(0, (4,))}, b"\0" * 8), "beyond the data area"),
    (lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12 bytes"),
    (lambda p: raw_file(p, {"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "unknown dtype"),
    (lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "shape"),
    (lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "before begin"),
    (lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": "x"}}), "data_offsets"),
    (lambda p: raw_file(p, {"a": 5}), "not an object"),
])
def test_bad_headers_raise_header_error_naming_file(tmp_path, make, fragment):
    path = str(tmp_path / "bad.safetensors")
    make(path)
    with pytest.raises(HeaderError) as info:
        read_header(path)
    assert fragment in info.value.problem
    assert info.value.path == path and path in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(HeaderError, match="cannot read"):
        read_header(str(tmp_path / "none.safetensors"))
    if os.geteuid() != 0:  # root ignores permission bits
        path = raw_file(tmp_path / "p.safetensors", {})
        os.chmod(path, 0)
        with pytest.raises(HeaderError, match="cannot read"):
            read_header(path)


def test_metadata_non_string_values_are_kept_as_text(tmp_path):
    path = raw_file(tmp_path / "m.safetensors", {"__metadata__": {"n": 5, "s": "x"}})
    assert read_header(path)[1] == {"n": "5", "s": "x"}


def test_truncated_real_file_is_rejected(tmp_path):
    path = str(tmp_path / "t.safetensors")
    save_file({"w": np.ones((64, 64), np.float32)}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(HeaderError, match="beyond the data area"):
        read_header(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.integers(0, 300))
def test_fuzz_random_bytes_never_crash(tmp_path, data, claimed):
    path = str(tmp_path / "f.safetensors")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", claimed) + data)
    try:
        read_header(path)
    except HeaderError:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 100) | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                           max_leaves=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]), json_values | st.fixed_dictionaries(
    {"dtype": st.sampled_from(["F32", "F16", "I8", "X"]), "shape": st.lists(st.integers(-1, 4), max_size=3),
     "data_offsets": st.lists(st.integers(-1, 40), max_size=3)})), st.integers(0, 40))
def test_fuzz_structured_headers_never_crash(tmp_path, obj, data_len):
    path = raw_file(tmp_path / "s.safetensors", obj, b"\0" * data_len)
    try:
        header, metadata, offset = read_header(path)
    except HeaderError:
        return
    # anything accepted is consistent: spans inside the data area, sizes matching
    assert all(isinstance(v, str) for v in metadata.values())
    for info in header.values():
        begin, end = info["data_offsets"]
        assert 0 <= begin <= end <= data_len
