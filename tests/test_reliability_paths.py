"""Names and paths from users and HTTP clients never reach outside the configured LoRA folders:
`<lora:../../secret:1>`, absolute paths, `..` in API parameters, symbolic links (LoRA files,
folders and sidecars) that leave the folder. Checked through the library API, the Engine, the UI
controller's save action and the HTTP routes (`lora_core.ui.api.register_routes`, which the
standalone server and the A1111 adapter both mount).

The proof of "nothing outside is read or written": a tree outside the library holds a secret LoRA,
a secret JSON and a secret picture; after every attack its bytes and mtimes are unchanged, nothing
was added to it, its secret text never appears in a response, and the Engine's loader was never
asked for a file outside the library."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import write_lora  # noqa: E402

from lora_core.library import Library, NotFound, StorageError  # noqa: E402

SECRET_TEXT = "TOP-SECRET-DO-NOT-LEAK"


def tree_state(folder: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
            out[p] = (st.st_mtime_ns, digest)
    return out


def build_world(base: Path) -> tuple[Path, Path]:
    """models/Lora with real LoRAs and links out of it, and the secret tree next to it."""
    from PIL import Image

    outside = base / "outside"
    write_lora(outside / "secret.safetensors", metadata={"note": SECRET_TEXT})
    (outside / "secret.json").write_text(json.dumps({"activation text": SECRET_TEXT}))
    (outside / "secret.civitai.info").write_text(json.dumps({"id": 1, "trainedWords": [SECRET_TEXT]}))
    Image.new("RGB", (16, 16), (9, 9, 9)).save(outside / "secret.png")
    root = base / "models" / "Lora"
    write_lora(root / "style.safetensors")
    write_lora(root / "sub" / "inner.safetensors")
    write_lora(base / "models" / "sibling.safetensors")  # next to the library folder, not in it
    # links out of the library: a LoRA, a folder, and the sidecars of a real LoRA
    os.symlink(outside / "secret.safetensors", root / "linked.safetensors")
    os.symlink(outside, root / "linkdir")
    write_lora(root / "victim.safetensors")
    os.symlink(outside / "secret.json", root / "victim.json")
    os.symlink(outside / "secret.civitai.info", root / "victim.civitai.info")
    os.symlink(outside / "secret.png", root / "victim.png")
    return root, outside


@pytest.fixture
def world(tmp_path):
    root, outside = build_world(tmp_path)
    lib = Library([root], tmp_path / "data")
    lib.scan()
    before = tree_state(outside)
    yield lib, root, outside
    lib.close()
    assert tree_state(outside) == before, "something outside the library was written"
    assert not (tmp_path / "models" / "sibling.json").exists()


ATTACK_NAMES = ["../../outside/secret", "../sibling", "../../../outside/secret", "sub/../../sibling",
                "linkdir/secret", "linked", "secret", "/{outside}/secret.safetensors",
                "{outside}/secret", "~/../../{outside}/secret", "..\\..\\outside\\secret", "./../sibling"]


def _names(outside: Path) -> list[str]:
    return [n.format(outside=str(outside).lstrip("/")) if n.startswith("/") else n.format(outside=str(outside))
            for n in ATTACK_NAMES]


def test_library_find_and_entry_refuse_everything_outside(world):
    lib, root, outside = world
    for name in _names(outside):
        with pytest.raises(NotFound):
            lib.find(name)
    for path in [outside / "secret.safetensors", root / ".." / ".." / "outside" / "secret.safetensors",
                 root / "linkdir" / "secret.safetensors", root / "linked.safetensors",
                 root.parent / "sibling.safetensors", str(root) + "/sub/../../sibling.safetensors"]:
        with pytest.raises(NotFound):
            lib.entry(path)
    assert sorted(e.name for e in lib.all()) == ["inner", "style", "victim"]


def test_library_writes_refuse_paths_outside(world):
    lib, root, outside = world
    targets = [outside / "secret.safetensors", root / "linkdir" / "secret.safetensors",
               root / "linked.safetensors", root / ".." / "sibling.safetensors"]
    for path in targets:
        for action in (lambda p: lib.write_user_metadata(p, {"notes": "x"}), lambda p: lib.set_favorite(p, True),
                       lambda p: lib.set_user_tags(p, ["x"]), lambda p: lib.mark_used([p])):
            with pytest.raises(NotFound):
                action(path)
    assert lib.db.query("SELECT COUNT(*) FROM user_data")[0][0] == 0


def test_sidecars_linking_out_are_neither_read_nor_served_nor_overwritten(world):
    lib, root, outside = world
    victim = lib.find("victim")
    assert victim.user_metadata == {} and victim.civitai is None and victim.preview is None
    assert SECRET_TEXT not in json.dumps(victim.to_dict())
    assert lib.thumbnail(victim) is None
    assert lib.search(SECRET_TEXT).total == 0
    with pytest.raises(StorageError, match="links outside"):
        lib.write_user_metadata(victim.path, {"notes": "mine"})
    assert os.path.islink(root / "victim.json")
    # refresh (after a sidecar write elsewhere) follows the same rule as the scan
    assert lib.refresh(victim.path).user_metadata == {}


def test_preview_swapped_for_a_link_out_after_the_scan_is_not_read(world, tmp_path):
    from PIL import Image

    lib, root, outside = world
    Image.new("RGB", (16, 16), (200, 0, 0)).save(root / "style.png")
    lib.scan()
    entry = lib.find("style")
    assert entry.preview == str(root / "style.png")
    os.remove(root / "style.png")
    os.symlink(outside / "secret.png", root / "style.png")
    assert lib.thumbnail(entry) is None


def test_engine_activate_never_loads_a_file_outside(world):
    pytest.importorskip("torch")
    from lora_core.engine import Engine
    from lora_core.patcher import LoraCache

    lib, root, outside = world
    asked = []

    def loader(path):
        asked.append(path)
        raise ValueError("not a real model in this test")

    class NoModel:
        family = "sd1"

    engine = Engine(NoModel(), cache=LoraCache(loader=loader))
    prompt = " ".join(f"<lora:{n}:1>" for n in _names(outside)) + " <lora:style:0.5> a cat"
    clean, report = engine.activate(prompt, lib)
    assert clean.strip() == "a cat"
    real_root = os.path.realpath(root)
    assert [os.path.realpath(p) for p in asked] == [os.path.realpath(root / "style.safetensors")]
    assert all(os.path.realpath(p).startswith(real_root + os.sep) for p in asked)
    from lora_core.tags import parse_prompt

    # the parser turns backslashes into slashes and merges a name given twice
    attacks = [r.name for r in parse_prompt(prompt).requests if r.name != "style"]
    assert len(attacks) >= 10
    refused = [w for w in report.warnings if "refused" in w or "no LoRA" in w]
    assert len(refused) >= len(attacks), report.warnings


def test_ui_save_action_outside_is_a_message(world):
    from lora_core.ui.controller import LoraTabController
    from lora_core.ui.tab import TabSettings

    lib, root, outside = world
    ctl = LoraTabController(lambda: lib, TabSettings())
    for key in [str(outside / "secret.safetensors"), str(root / ".." / ".." / "outside" / "secret.safetensors"),
                str(root / "linkdir" / "secret.safetensors"), str(root / "victim.safetensors")]:
        status = ctl.save_user_metadata(key, {"notes": "x", "preferred weight": 1})
        assert status.startswith("Could not save"), (key, status)
    assert ctl.save_user_metadata(str(root / "style.safetensors"), {"notes": "ok"}) == "Saved."
    assert json.loads((root / "style.json").read_text())["notes"] == "ok"


# ---------------------------------------------------------------------------------------- HTTP
@pytest.fixture
def client(world):
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lora_core.ui.api import register_routes

    lib, root, outside = world
    app = fastapi.FastAPI()
    register_routes(app, lambda: lib)
    return TestClient(app), lib, root, outside


def _path_attacks(root: Path, outside: Path) -> list[str]:
    return [
        str(outside / "secret.safetensors"), str(outside / "secret.png"), str(outside / "secret.json"),
        f"{root}/../../outside/secret.safetensors", f"{root}/style.safetensors/../../../outside/secret.png",
        f"{root}/linkdir/secret.safetensors", f"{root}/linkdir/secret.png", f"{root}/linked.safetensors",
        "../../outside/secret.safetensors", "/etc/passwd", "..%2f..%2foutside%2fsecret.png",
        f"{root}/victim.png", f"{root}/style.safetensors\x00.png", "",
    ]


def test_http_routes_refuse_paths_outside(client):
    c, lib, root, outside = client
    for path in _path_attacks(root, outside):
        for route in ("lora", "thumb"):
            r = c.get(f"/lora_core/api/{route}", params={"path": path})
            assert r.status_code in (404, 422), (route, path, r.status_code)
            assert SECRET_TEXT.encode() not in r.content
            assert not r.headers.get("content-type", "").startswith("image/")
    # the raw query string too, unencoded by the client
    for raw in ("path=../../outside/secret.png", "path=%2e%2e/%2e%2e/outside/secret.png"):
        assert c.get(f"/lora_core/api/thumb?{raw}").status_code == 404
    for name in ("..%2f..%2fsetup.py", "../pyproject.toml", "%2e%2e%2fpyproject.toml", "lora_core.js/../x"):
        assert c.get(f"/lora_core/static/{name}").status_code == 404


def test_http_thumb_of_preview_swapped_for_a_link_out_is_refused(client):
    from PIL import Image

    c, lib, root, outside = client
    Image.new("RGB", (16, 16), (200, 0, 0)).save(root / "style.png")
    lib.scan()
    path = lib.find("style").path
    assert c.get("/lora_core/api/thumb", params={"path": path}).status_code == 200
    os.remove(root / "style.png")
    os.symlink(outside / "secret.png", root / "style.png")
    r = c.get("/lora_core/api/thumb", params={"path": path})
    assert r.status_code == 404, "a preview linking out of the library was served"


def test_http_listings_hold_only_library_files(client):
    c, lib, root, outside = client
    real_root = os.path.realpath(root)
    listed = c.get("/sdapi/v1/loras").json()
    assert sorted(x["name"] for x in listed) == ["inner", "style", "victim"]
    assert all(os.path.realpath(x["path"]).startswith(real_root + os.sep) for x in listed)
    page = c.get("/lora_core/api/loras", params={"q": "", "page_size": 500}).json()
    assert page["total"] == 3
    for q in ("secret", SECRET_TEXT, "../", "outside"):
        assert c.get("/lora_core/api/suggest", params={"q": q}).json()["items"] == []
        assert SECRET_TEXT.encode() not in c.get("/lora_core/api/loras", params={"q": q}).content
    assert c.post("/sdapi/v1/refresh-loras").json()["total"] == 3


def test_a1111_mounted_routes_refuse_paths_outside(tmp_path):
    """The same routes as the A1111 extension mounts them (app_started in the webui stand-in)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    sys.path.insert(0, str(Path(__file__).parent / "a1111_standin"))
    import webui_harness

    from lora_core.a1111 import API_PREFIX

    root, outside = build_world(tmp_path)
    before = tree_state(outside)
    w = webui_harness.launch(tmp_path)
    try:
        c = TestClient(w.app)
        assert c.post("/sdapi/v1/refresh-loras").status_code == 200
        listed = c.get("/sdapi/v1/loras").json()
        assert sorted(x["name"] for x in listed) == ["inner", "style", "victim"]
        assert SECRET_TEXT.encode() not in c.get("/sdapi/v1/loras").content
        for path in _path_attacks(root, outside):
            for route in ("lora", "thumb"):
                r = c.get(f"{API_PREFIX}/{route}", params={"path": path})
                assert r.status_code in (404, 422), (route, path, r.status_code)
                assert SECRET_TEXT.encode() not in r.content
        assert c.get(f"{API_PREFIX}/suggest", params={"q": "secret"}).json()["items"] == []
    finally:
        w.close()
    assert tree_state(outside) == before
