"""Bounded fuzzing across package borders (the per-package fuzzers live in test_library_header.py,
test_formats_fuzz.py and test_tags_parser.py):

* differential: whatever bytes a .safetensors holds, a file `formats.load_lora` accepts is never
  shown as broken by the torch-free library reader, and both see the same tensors and metadata;
* names: any `<lora:NAME>` text, after the tag parser, resolves only to files inside the library
  folders (never to the secret file next to them, whatever `..`, `/`, `\\`, `~` or NUL it holds).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
sys.path.insert(0, str(Path(__file__).parent / "library"))
from hostile_files import good_tensors  # noqa: E402
from libtest_files import write_lora  # noqa: E402

from lora_core.formats import LoraFormatError, load_lora  # noqa: E402
from lora_core.library import AmbiguousName, Library, NotFound  # noqa: E402
from lora_core.formats.header import HeaderError, read_header  # noqa: E402
from lora_core.tags import parse_prompt  # noqa: E402


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    from safetensors.torch import save_file

    p = tmp_path_factory.mktemp("diff") / "v.safetensors"
    save_file(good_tensors(), str(p), metadata={"ss_output_name": "v", "k": "w"})
    return p.read_bytes()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 420)))
def test_loadable_files_are_never_broken_in_the_library(tmp_path, valid_bytes, edits, cut):
    data = bytearray(valid_bytes)
    header_end = 8 + int.from_bytes(valid_bytes[:8], "little")
    for pos, value in edits:  # most edits land in the header, where the readers differ
        data[pos % header_end if pos < 300 else pos % len(data)] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path / "d.safetensors"
    path.write_bytes(bytes(data))
    try:
        lora = load_lora(path)
    except LoraFormatError as exc:
        assert exc.problem and str(path) in str(exc)
        return
    try:
        header, metadata, _ = read_header(str(path))
    except HeaderError as exc:  # pragma: no cover - this is the failure the test looks for
        pytest.fail(f"load_lora accepts the file but the library calls it broken: {exc.problem}")
    assert metadata == lora.metadata
    assert len(header) >= len(lora.adapters)  # every adapter comes from tensors the header lists


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("names")
    root = base / "models" / "Lora"
    write_lora(root / "style.safetensors")
    write_lora(root / "sub" / "inner.safetensors")
    write_lora(base / "models" / "secret.safetensors")   # next to the library folder
    write_lora(base / "secret.safetensors")              # and above it
    os.symlink(base / "secret.safetensors", root / "sub" / "link.safetensors")
    lib = Library([root], base / "data")
    lib.scan()
    yield lib, str(root.resolve())
    lib.close()


_parts = st.sampled_from(["..", ".", "/", "\\", "~", "~/", "C:", "secret", "style", "sub", "inner", "link",
                          "models", "Lora", ".safetensors", "%2e%2e", "\x00", " ", "//", "./"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_parts, min_size=1, max_size=8).map("".join))
def test_tag_names_never_resolve_outside_the_library(library, name):
    lib, root = library
    for req in parse_prompt(f"<lora:{name}:1>").requests:
        try:
            entry = lib.find(req.name)
        except (NotFound, AmbiguousName):
            continue
        real = os.path.realpath(entry.path)
        assert real.startswith(root + os.sep), (name, entry.path)
        assert entry.name in ("style", "inner"), (name, entry.path)
