"""Name resolution: stem, alias, folder/name, ambiguity, and refusal of paths out of the library."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_metadata, write_lora  # noqa: E402

from lora_core.library import AmbiguousName, Library, NotFound  # noqa: E402


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "hero.safetensors", metadata=kohya_metadata("heroAlias"))
    write_lora(root / "chars" / "hero.safetensors")
    write_lora(root / "styles" / "ink.safetensors", metadata=kohya_metadata("InkWash"))
    write_lora(root / "styles" / "old" / "ink2.pt" if False else root / "styles" / "old" / "paper.safetensors")
    write_lora(root / "a" / "x" / "same.safetensors")
    write_lora(root / "b" / "x" / "same.safetensors")
    write_lora(tmp_path / "secret.safetensors")
    library = Library([root], tmp_path / "data")
    library.scan()
    yield library
    library.close()


def test_unique_stem_and_alias(lib):
    assert lib.find("ink").rel_name == "styles/ink"
    assert lib.find("InkWash").rel_name == "styles/ink"
    assert lib.find("inkwash").rel_name == "styles/ink"          # case-insensitive fallback
    assert lib.find("paper.safetensors").rel_name == "styles/old/paper"
    assert lib.find("heroAlias").rel_name == "hero"


def test_shared_stem_is_ambiguous_and_lists_candidates(lib):
    with pytest.raises(AmbiguousName) as info:
        lib.find("hero")
    assert info.value.candidates == ["./hero", "chars/hero"]
    assert "./hero" in str(info.value) and "chars/hero" in str(info.value)


def test_folder_path_resolves_ambiguity(lib):
    assert lib.find("chars/hero").rel_name == "chars/hero"
    assert lib.find("./hero").rel_name == "hero"
    assert lib.find(r"chars\hero").rel_name == "chars/hero"
    assert lib.find("a/x/same").rel_name == "a/x/same"
    with pytest.raises(AmbiguousName) as info:
        lib.find("x/same")                       # a suffix shared by two folders
    assert info.value.candidates == ["a/x/same", "b/x/same"]


@pytest.mark.parametrize("name", ["../secret", "../../secret", "styles/../../secret", "/etc/passwd",
                                  "C:/Windows/x", "~/secret", "./..", ""])
def test_paths_out_of_the_library_are_refused(lib, name):
    with pytest.raises(NotFound) as info:
        lib.find(name)
    assert "refused" in str(info.value) or "empty" in str(info.value)


def test_absolute_path_of_a_real_file_is_refused(lib, tmp_path):
    with pytest.raises(NotFound):
        lib.find(str(tmp_path / "secret.safetensors"))
    with pytest.raises(NotFound, match="outside the library"):
        lib.entry(tmp_path / "secret.safetensors")


def test_file_replaced_by_symlink_out_is_not_returned(lib, tmp_path):
    path = lib.find("paper").path
    os.remove(path)
    os.symlink(tmp_path / "secret.safetensors", path)   # after the scan, before the lookup
    with pytest.raises(NotFound):
        lib.find("paper")


def test_unknown_name(lib):
    with pytest.raises(NotFound, match="no LoRA"):
        lib.find("nothing")
