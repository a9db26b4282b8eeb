"""Search, paging, sorting, filters, folder tree, favorites, user tags, stacks, last used."""
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, kohya_metadata, write_lora  # noqa: E402

from lora_core.library import Library  # noqa: E402


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "Zeta.safetensors", kohya_lora(), kohya_metadata("zetaStyle", tags={"red_hair": 3}))
    write_lora(root / "chars" / "alice.safetensors", kohya_lora(context_dim=2048, te2=True),
               kohya_metadata("wonder", tags={"blue dress": 9, "1girl": 4}, base="sdxl_base_v1-0"))
    write_lora(root / "chars" / "deep" / "bob.safetensors", kohya_lora(rank=32), kohya_metadata("bob"))
    write_lora(root / "styles" / "ink_wash.safetensors", kohya_lora(), kohya_metadata("ink", tags={"monochrome": 2}))
    (root / "styles" / "ink_wash.json").write_text(json.dumps({"activation text": "sumi-e brush"}))
    for i, name in enumerate(["Zeta", "chars/alice", "chars/deep/bob", "styles/ink_wash"]):
        os.utime(root / f"{name}.safetensors", ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    library = Library([root], tmp_path / "data")
    library.scan()
    yield library
    library.close()


def names(page):
    return [e.name for e in page.items]


@pytest.mark.parametrize("query, expected", [
    ("", ["alice", "bob", "ink_wash", "Zeta"]),
    ("ALI", ["alice"]),                        # name, any case
    ("wonder", ["alice"]),                     # alias
    ("deep", ["bob"]),                         # folder path
    ("sumi-e", ["ink_wash"]),                  # activation text
    ("blue dress", ["alice"]),                 # training tag, every word must match
    ("red_hair", ["Zeta"]),
    ("monochrome ink", ["ink_wash"]),
    ("ob", ["bob"]),                           # short terms use substring matching
    ('"', []), ("nothing-like-this", []), ("% _", []),
])
def test_search_fields(lib, query, expected):
    assert names(lib.search(query)) == expected


def test_paging_and_sorting(lib):
    first = lib.search("", page=0, page_size=3)
    second = lib.search("", page=1, page_size=3)
    assert first.total == second.total == 4 and len(first.items) == 3 and names(second) == ["Zeta"]
    assert names(lib.search("", sort="date")) == ["ink_wash", "bob", "alice", "Zeta"]
    assert names(lib.search("", sort="size"))[0] == "bob"
    with pytest.raises(ValueError):
        lib.search("", sort="random")


def test_filters_family_folder_favorites(lib):
    assert names(lib.search("", family="sdxl")) == ["alice"]
    assert names(lib.search("", folder="chars")) == ["alice", "bob"]
    assert names(lib.search("", folder="chars/deep")) == ["bob"]
    assert names(lib.search("", folder="char")) == []          # a folder, not a prefix
    lib.set_favorite(lib.find("bob").path)
    assert names(lib.search("", favorites_only=True)) == ["bob"] and lib.find("bob").favorite
    lib.set_favorite(lib.find("bob").path, False)
    assert lib.search("", favorites_only=True).total == 0


def test_folder_tree(lib):
    assert lib.folders() == [("", 4), ("chars", 2), ("chars/deep", 1), ("styles", 1)]


def test_user_tags_are_searchable_and_replaceable(lib):
    lib.set_user_tags(lib.find("Zeta").path, ["favourite-style", "portrait"])
    assert lib.find("Zeta").user_tags == ("favourite-style", "portrait")
    assert names(lib.search("portrait")) == ["Zeta"]
    lib.set_user_tags(lib.find("Zeta").path, ["other"])
    assert lib.search("portrait").total == 0 and names(lib.search("other")) == ["Zeta"]
    assert names(lib.search("zetaStyle")) == ["Zeta"]  # the rest of the search text is kept


def test_last_used_sort_and_stacks(lib):
    lib.mark_used([lib.find("bob").path], when=100.0)
    lib.mark_used([lib.find("alice").path], when=200.0)
    assert names(lib.search("", sort="last_used")) == ["alice", "bob", "ink_wash", "Zeta"]
    assert lib.find("alice").last_used == 200.0
    lib.save_stack("portrait", [("chars/alice", 0.8), ("ink", 0.5)])
    lib.save_stack("empty", [])
    assert lib.stacks() == {"empty": [], "portrait": [("chars/alice", 0.8), ("ink", 0.5)]}
    assert lib.delete_stack("empty") and not lib.delete_stack("empty")


def test_user_data_survives_a_rescan_of_a_changed_file(lib):
    bob = lib.find("bob")
    lib.set_favorite(bob.path)
    lib.set_user_tags(bob.path, ["keeper"])
    write_lora(bob.path, kohya_lora(rank=2), kohya_metadata("bob2"))
    lib.scan()
    again = lib.find("bob2")
    assert again.favorite and names(lib.search("keeper")) == ["bob"]


@pytest.mark.parametrize("small_match", [0, 10_000])
def test_both_text_search_strategies_agree(lib, monkeypatch, small_match):
    from lora_core.library import search as search_module

    monkeypatch.setattr(search_module, "SMALL_MATCH", small_match)
    lib._search.clear_caches()
    lib.db.write(lambda conn: conn.execute("DELETE FROM sort_orders"), bump=False)  # no stored order either
    assert names(lib.search("style")) == ["ink_wash", "Zeta"]  # folder "styles" / alias "zetaStyle"
    assert names(lib.search("ink", sort="date")) == ["ink_wash"]
    assert names(lib.search("1girl smile", sort="name")) == ["bob"]
    page = lib.search("1girl", page=1, page_size=1)
    assert page.total == 2 and names(page) == ["bob"]
    assert names(lib.search("girl ch")) == ["alice", "bob"]
    assert names(lib.search("girl", folder="chars", sort="size")) == ["bob", "alice"]


def test_phrases_short_words_and_paths(tmp_path):
    """Issue 14 #16: phrases with short words ("on the left") and paths ("models/Lora") find LoRAs."""
    root = tmp_path / "models" / "Lora"
    write_lora(root / "left.safetensors", kohya_lora(), kohya_metadata("lefty", tags={"a red circle on the left": 3}))
    write_lora(root / "sub" / "right.safetensors", kohya_lora(),
               kohya_metadata("righty", tags={"on the right": 5, "left hand": 1}))
    with Library([root], tmp_path / "data") as library:
        library.scan()
        assert names(library.search("on the left")) == ["left", "right"]  # every word, the short one too
        assert names(library.search('"on the left"')) == ["left"]         # a quoted phrase as a whole
        assert names(library.search('"ON  the LEFT" red')) == ["left"]
        assert names(library.search("on")) == []                          # a short word alone: names only
        assert names(library.search("models/Lora")) == ["left", "right"]  # the library folder's own path
        assert names(library.search(str(root))) == ["left", "right"]
        assert names(library.search("models/Lora/sub")) == ["right"]
        assert names(library.search("Lora/sub/ri")) == ["right"]
        assert names(library.search("models\\Lora\\left")) == ["left"]
        assert names(library.search("sub/right.safetensors")) == ["right"]
        assert names(library.search("models/Lora right")) == ["right"]
        assert names(library.search("models/Lora/sub on the")) == ["right"]
        assert names(library.search("other/Lora")) == [] and names(library.search("models/Lora/left/x")) == []


def test_problem_entries_pass_the_family_filter_on_request(tmp_path):
    """Issue 14 #15: an unreadable file is shown beside the checkpoint family's LoRAs."""
    root = tmp_path / "Lora"
    write_lora(root / "one.safetensors", kohya_lora(), kohya_metadata("one"))
    write_lora(root / "xl.safetensors", kohya_lora(context_dim=2048, te2=True), kohya_metadata("xl", base="sdxl_base_v1-0"))
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with Library([root], tmp_path / "data") as library:
        library.scan()
        assert names(library.search("", family="sd1")) == ["one"]
        assert names(library.search("", family="sd1", with_problems=True)) == ["broken", "one"]
        assert names(library.search("", problems_only=True)) == ["broken"]
        assert names(library.search("bro", family="sd1", with_problems=True)) == ["broken"]
