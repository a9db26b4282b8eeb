"""Search pages against a brute-force oracle (sort and filter every entry in Python), cached and
stored sort orders staying correct after changes, and the quick (folder-signature) scan."""
import json
import os
import random
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, kohya_metadata, write_lora  # noqa: E402

from lora_core.library import Library, scanner  # noqa: E402

WORDS = ["ink", "wash", "neon", "Cyber", "pastel", "gothic", "retro", "anime", "photo", "sketch", "knight",
         "Witch", "robot", "dragon", "forest", "ocean"]
TAGS = ["smile", "long_hair", "blue_eyes", "solo", "outdoors", "hat"]
FOLDERS = ["", "chars", "chars/deep", "styles", "styles/old", "charsX"]
OLD = 1_500_000_000  # seconds: folder times far from "now", so quick scans trust their signatures
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def nocase(text):  # SQLite NOCASE folds ASCII letters only
    return text.translate(_ASCII_FOLD)


def _tensors(rng, sdxl):
    return kohya_lora(context_dim=2048, te2=True) if sdxl else kohya_lora(rank=rng.choice([4, 8]))


def make_library(root: Path, n: int, seed: int = 0):
    rng = random.Random(seed)
    used = set()
    for i in range(n):
        while True:
            stem = "_".join(rng.sample(WORDS, 2)) + f"{rng.randint(0, 40)}"
            if nocase(stem) not in used:
                used.add(nocase(stem))
                break
        folder = rng.choice(FOLDERS)
        path = root / folder / f"{stem}.safetensors"
        tags = {t: rng.randint(1, 9) for t in rng.sample(TAGS, 2)}
        write_lora(path, _tensors(rng, rng.random() < 0.3), kohya_metadata(rng.choice(WORDS).lower() + "al", tags=tags))
        if rng.random() < 0.2:
            path.with_suffix(".json").write_text(json.dumps({"activation text": rng.choice(WORDS) + " trigger"}))
        t = (OLD + rng.randint(0, 20)) * 10**9  # few distinct times: ties fall back to the name order
        os.utime(path, ns=(t, t))


def backdate_folders(root: Path):
    for folder, _dirs, _files in os.walk(root):
        os.utime(folder, ns=(OLD * 10**9, OLD * 10**9))


def search_texts(lib):
    conn = sqlite3.connect(os.path.join(lib.data_dir, "library.sqlite3"))
    try:
        return dict(conn.execute("SELECT f.path, d.search_text FROM files f JOIN details d ON d.id = f.id"))
    finally:
        conn.close()


def oracle(lib, query="", sort="name", family=None, folder=None, favorites_only=False):
    """Every entry filtered and sorted in Python: the expected full result list (paths)."""
    texts = search_texts(lib)
    out = []
    for e in lib.all():
        ok = True
        for term in query.lower().split():
            if len(term) >= 3:
                ok &= term in nocase(texts[e.path])
            else:
                ok &= term in nocase(e.rel_name) or term in nocase(e.alias or "")
        if family and e.family != family:
            ok = False
        if folder and not (e.folder == folder.strip("/") or e.folder.startswith(folder.strip("/") + "/")):
            ok = False
        if favorites_only and not e.favorite:
            ok = False
        if ok:
            out.append(e)

    def name_key(e):
        return (nocase(e.name), nocase(e.rel_name))
    keys = {
        "name": name_key,
        "date": lambda e: (-round(e.mtime * 1e9), name_key(e)),
        "size": lambda e: (-e.size, name_key(e)),
        "last_used": lambda e: (e.last_used is None, -(e.last_used or 0), name_key(e)),
    }
    return [e.path for e in sorted(out, key=keys[sort])]


def check(lib, page_size, page, **kw):
    expected = oracle(lib, **kw)
    got = lib.search(page=page, page_size=page_size, **kw)
    assert got.total == len(expected), kw
    assert [e.path for e in got.items] == expected[page * page_size:(page + 1) * page_size], (kw, page, page_size)
    return expected


def random_query(rng):
    word = rng.choice(WORDS + TAGS)
    start = rng.randint(0, max(0, len(word) - 3))
    pick = rng.random()
    if pick < 0.25:
        return ""
    if pick < 0.45:
        return word[start:start + rng.randint(3, 5)]
    if pick < 0.6:
        return word[start:start + 2]                     # short: folder/name and alias only
    if pick < 0.75:
        return f"{rng.choice(WORDS)} {rng.choice(TAGS)[:4]}"
    if pick < 0.85:
        return rng.choice(["chars/deep", "trigger", "al", "zzzz-none"])
    return word.upper()


@pytest.fixture
def built(tmp_path):
    root = tmp_path / "Lora"
    make_library(root, 120)
    lib = Library([root], tmp_path / "data")
    lib.scan()
    entries = lib.all()
    rng = random.Random(5)
    for e in rng.sample(entries, 15):
        lib.set_favorite(e.path, True)
    for i, e in enumerate(rng.sample(entries, 20)):
        lib.mark_used([e.path], when=1000.0 + (i % 7))  # ties in last used as well
    yield root, lib
    lib.close()


def test_every_page_matches_brute_force(built):
    _root, lib = built
    rng = random.Random(11)
    for _ in range(60):
        kw = {"query": random_query(rng), "sort": rng.choice(["name", "date", "size", "last_used"])}
        if rng.random() < 0.3:
            kw["family"] = rng.choice(["sdxl", "sd1"])
        if rng.random() < 0.3:
            kw["folder"] = rng.choice(["chars", "chars/deep", "styles", "/styles/"])
        if rng.random() < 0.15:
            kw["favorites_only"] = True
        size = rng.choice([1, 7, 50])
        expected = check(lib, size, 0, **kw)
        last = max(0, (len(expected) - 1) // size)
        for page in {last, last + 1, rng.randint(0, last), min(1, last)}:
            check(lib, size, page, **kw)


def test_fresh_library_uses_the_stored_order_and_matches(built, tmp_path):
    root, lib = built
    for sort in ("name", "date", "size", "last_used"):
        check(lib, 10, 3, sort=sort)
    conn = sqlite3.connect(os.path.join(lib.data_dir, "library.sqlite3"))
    stored = {k.split("\n")[0] for (k,) in conn.execute("SELECT key FROM sort_orders")}
    conn.close()
    assert stored == {"name", "date", "size", "last_used"}
    with Library([root], tmp_path / "data") as fresh:
        for sort in ("name", "date", "size", "last_used"):
            for page in (0, 5, 11):
                check(fresh, 10, page, sort=sort)
                check(fresh, 10, page // 5, sort=sort, query="smi")


@pytest.mark.parametrize("quick", [False, True])
def test_pages_follow_added_removed_and_changed_files(built, quick):
    root, lib = built
    views = [dict(sort="name"), dict(sort="size"), dict(sort="date"), dict(sort="name", query="ink"),
             dict(sort="name", family="sdxl"), dict(sort="date", folder="chars")]
    for kw in views:  # fill every cache first
        check(lib, 7, 2, **kw)
    # added (sorts first by name, newest by date, biggest by size, matches "ink")
    write_lora(root / "chars" / "AAA_ink.safetensors", kohya_lora(rank=64, context_dim=2048, te2=True),
               kohya_metadata("new"))
    assert lib.scan(quick=quick).read == 1
    assert lib.search("", 0, 1).items[0].name == "AAA_ink"
    for kw in views:
        check(lib, 7, 0, **kw)
        check(lib, 7, 2, **kw)
    # removed
    victim = lib.search("", 3, 1).items[0].path
    os.remove(victim)
    assert lib.scan(quick=quick).removed == 1
    for kw in views:
        check(lib, 7, 1, **kw)
    assert victim not in oracle(lib)
    # changed: the oldest file becomes the newest and the largest; a sidecar adds a trigger word
    oldest = lib.search("", lib.search("").total - 1, 1, sort="date").items[0].path
    write_lora(oldest, kohya_lora(rank=512, context_dim=2048, te2=True), kohya_metadata("changed"))
    Path(oldest).with_suffix(".json").unlink(missing_ok=True)
    tmp = Path(oldest).with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"activation text": "qqqword"}))
    os.replace(tmp, Path(oldest).with_suffix(".json"))  # atomic, as sidecar writers do
    lib.scan(quick=quick)
    assert lib.search("", 0, 1, sort="date").items[0].path == oldest
    assert lib.search("", 0, 1, sort="size").items[0].path == oldest
    assert [e.path for e in lib.search("qqqword").items] == [oldest]
    for kw in views:
        check(lib, 7, 0, **kw)
        check(lib, 7, 3, **kw)


def test_user_data_changes_reach_cached_pages(built):
    _root, lib = built
    check(lib, 5, 1, sort="last_used")
    check(lib, 5, 0, favorites_only=True)
    check(lib, 5, 0, query="zzuser")
    e = lib.search("", 7, 1).items[0]
    lib.mark_used([e.path], when=5000.0)
    lib.set_favorite(e.path, True)
    lib.set_user_tags(e.path, ["zzuser"])
    assert lib.search("", 0, 1, sort="last_used").items[0].path == e.path
    assert [x.path for x in lib.search("zzuser").items] == [e.path]
    check(lib, 5, 1, sort="last_used")
    check(lib, 5, 1, favorites_only=True)


def test_changes_by_another_library_object_are_seen(built, tmp_path):
    root, lib = built
    check(lib, 10, 4, sort="name")
    check(lib, 10, 1, sort="name", query="ink")
    with Library([root], tmp_path / "data") as other:  # another process in real life
        write_lora(root / "styles" / "aaa_first_ink.safetensors", kohya_lora(), kohya_metadata("x"))
        os.remove(lib.search("", 9, 1).items[0].path)
        other.scan()
        other.mark_used([str(root / "styles" / "aaa_first_ink.safetensors")], when=9999.0)
    assert lib.search("", 0, 1).items[0].name == "aaa_first_ink"
    assert lib.search("", 0, 1, sort="last_used").items[0].name == "aaa_first_ink"
    check(lib, 10, 4, sort="name")
    check(lib, 10, 1, sort="name", query="ink")


# -- quick scans ------------------------------------------------------------------------------

@pytest.fixture
def settled(tmp_path, monkeypatch):
    """A library whose folders were listed long after they last changed (signatures trusted):
    a folder's ctime cannot be set back, so the "changed just now" window is closed instead."""
    monkeypatch.setattr(scanner, "RACY_NS", 0)
    root = tmp_path / "Lora"
    make_library(root, 40, seed=3)
    backdate_folders(root)
    lib = Library([root], tmp_path / "data")
    lib.scan()
    yield root, lib
    lib.close()


def test_quick_scan_sees_added_removed_renamed_files_and_folders(settled):
    root, lib = settled
    before = len(lib)
    report = lib.scan(quick=True)
    assert (report.read, report.removed, report.total) == (0, 0, before)
    write_lora(root / "styles" / "old" / "added.safetensors", kohya_lora(), kohya_metadata("added"))
    write_lora(root / "brand" / "new" / "nested.safetensors", kohya_lora(), kohya_metadata("nested"))
    report = lib.scan(quick=True)
    assert report.read == 2 and report.total == before + 2
    lib.find("added"), lib.find("nested")
    gone = lib.search("", 0, 1, folder="chars/deep").items[0]
    os.rename(gone.path, gone.path.replace(".safetensors", "_renamed.safetensors"))
    report = lib.scan(quick=True)
    assert report.read == 1 and report.removed == 1
    lib.find(gone.name + "_renamed")
    for folder, _dirs, files in os.walk(root / "styles", topdown=False):
        for f in files:
            os.remove(os.path.join(folder, f))
        os.rmdir(folder)
    report = lib.scan(quick=True)
    assert lib.search("", folder="styles").total == 0 and report.removed > 0
    assert report.total == len(lib) == lib.scan().total


def test_quick_scan_misses_in_place_edits_that_a_full_scan_finds(settled):
    """The documented trade-off: a file changed in place does not change its folder."""
    root, lib = settled
    entry = lib.search("", 0, 1).items[0]
    t = (OLD + 500) * 10**9
    os.utime(entry.path, ns=(t, t))
    assert lib.scan(quick=True).read == 0
    assert lib.scan().read == 1
    assert lib.entry(entry.path).mtime == OLD + 500


def test_quick_scan_lists_a_folder_changed_just_now(tmp_path):
    root = tmp_path / "Lora"
    make_library(root, 5, seed=4)   # folders changed just now: signatures are not trusted yet
    lib = Library([root], tmp_path / "data")
    lib.scan()
    entry = lib.all()[0]
    os.utime(entry.path, ns=(OLD * 10**9 + 7, OLD * 10**9 + 7))
    assert lib.scan(quick=True).read == 1
    lib.close()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_quick_scan_falls_back_to_full_with_symbolic_links(settled):
    root, lib = settled
    target = lib.all()[0].path
    os.symlink(target, root / "linked.safetensors")
    backdate_folders(root)
    lib.scan()
    entry = lib.search("", 0, 1).items[0]
    os.utime(entry.path, ns=((OLD + 900) * 10**9,) * 2)
    assert lib.scan(quick=True).read == 1
