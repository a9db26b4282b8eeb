"""Issue 14 items 6, 7, 8, 11: one --lora-dir / --models-dir for every command, `list` without a
silent cap, `merge --lora NAME:W` resolved like a tag, "did you mean ...?" for unknown names."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "library"))
sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from libtest_files import write_lora  # noqa: E402

from lora_core import cli  # noqa: E402
from lora_core.commands import list_loras  # noqa: E402
from lora_core.library.locations import lora_dirs, models_dir  # noqa: E402
from lora_core.library import Library  # noqa: E402
from lora_core.library.errors import NotFound  # noqa: E402

# the least each command needs besides the shared options
REQUIRED = {
    "info": ["x"],
    "merge": ["ckpt.safetensors", "--lora", "x", "--out", "o.safetensors"],
    "list": [],
    "serve": [],
    "generate": ["a prompt"],
    "train": ["--checkpoint", "c.safetensors", "--data", "d"],
    "download": ["civitai:1"],
}


def test_every_command_is_covered():
    assert set(REQUIRED) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_command_takes_lora_dir_and_models_dir(command):
    parser = cli.build_parser()
    args = parser.parse_args([command, *REQUIRED[command], "--lora-dir", "a", "--lora-dir", "b", "--models-dir", "m"])
    assert not getattr(args, "_unavailable", None)
    assert lora_dirs(args) == ["a", "b"] and models_dir(args) == "m"
    args = parser.parse_args([command, *REQUIRED[command], "--models-dir", "m"])
    assert lora_dirs(args) == [str(Path("m") / "Lora")]  # default: MODELS_DIR/Lora, the same everywhere


def test_list_keeps_its_old_dir_flag():
    args = cli.build_parser().parse_args(["list", "--dir", "old", "--lora-dir", "new"])
    assert lora_dirs(args) == ["old", "new"]


def run_list(argv):
    parser = argparse.ArgumentParser()
    list_loras.add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = list_loras.run(parser.parse_args(argv))
    return code, out.getvalue()


@pytest.fixture()
def library_of_25(tmp_path):
    root = tmp_path / "Lora"
    for i in range(25):
        write_lora(root / f"l{i:03d}.safetensors")
    return root


def test_list_json_is_not_capped_by_the_page_size(library_of_25, tmp_path, monkeypatch):
    # the library serves at most MAX_PAGE_SIZE entries per search; list must page, not stop there
    monkeypatch.setattr("lora_core.library.library.MAX_PAGE_SIZE", 10)
    code, out = run_list(["--lora-dir", str(library_of_25), "--data-dir", str(tmp_path / "d"), "--json"])
    data = json.loads(out)
    assert code == 0 and data["total"] == 25 and data["shown"] == 25
    assert [e["rel_name"] for e in data["entries"]] == [f"l{i:03d}" for i in range(25)]
    code, out = run_list(["--lora-dir", str(library_of_25), "--data-dir", str(tmp_path / "d"), "--json",
                          "--limit", "23"])
    data = json.loads(out)
    assert data["total"] == 25 and len(data["entries"]) == 23 and data["entries"][-1]["rel_name"] == "l022"
    code, out = run_list(["--lora-dir", str(library_of_25), "--data-dir", str(tmp_path / "d"), "--limit", "0",
                          "--json"])
    assert json.loads(out)["entries"] == []


def test_list_table_says_when_it_shows_fewer(library_of_25, tmp_path):
    code, out = run_list(["--lora-dir", str(library_of_25), "--data-dir", str(tmp_path / "d"), "--limit", "3"])
    assert code == 0 and "l002" in out and "l003" not in out and "25 LoRA file(s)" in out and "first 3 shown" in out


def test_unknown_name_suggests_close_names(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "demo" / "demo_stripes.safetensors")
    write_lora(root / "other_thing.safetensors")
    with Library([root], tmp_path / "d") as lib:
        lib.scan()
        with pytest.raises(NotFound) as err:
            lib.find("demo_stripe")
        assert "no LoRA with that name" in str(err.value) and "did you mean demo_stripes?" in str(err.value)
        assert err.value.suggestions == ["demo_stripes"]
        with pytest.raises(NotFound) as err:
            lib.find("dmeo/demo_stripes")
        assert "did you mean demo/demo_stripes?" in str(err.value)
        with pytest.raises(NotFound) as err:
            lib.find("zzzzzzzz")
        assert "did you mean" not in str(err.value)


# ------------------------------------------------------------------ merge --lora NAME:W
def run_merge(*argv):
    from lora_core.commands import merge as merge_cmd

    parser = argparse.ArgumentParser()
    merge_cmd.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = merge_cmd.run(parser.parse_args([str(a) for a in argv]))
    return code, out.getvalue(), err.getvalue()


def test_merge_resolves_lora_names_like_tags(tmp_path):
    torch = pytest.importorskip("torch")
    from engine_makers import make_lora, tiny_ldm_checkpoint
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors"
    ckpt.parent.mkdir(parents=True)
    save_file(tiny_ldm_checkpoint(), str(ckpt))
    loras = tmp_path / "my_loras" / "styles"
    loras.mkdir(parents=True)
    path = make_lora(loras, "inkwash", seed=1)
    data = tmp_path / "data"
    by_path, by_name = tmp_path / "by_path.safetensors", tmp_path / "by_name.safetensors"
    code, _out, err = run_merge(ckpt, "--lora", f"{path}:0.7", "--out", by_path)
    assert code == 0, err
    # a name (as <lora:inkwash:0.7> would say) in --lora-dir, and the checkpoint by its name
    code, out, err = run_merge("tiny.safetensors", "--models-dir", tmp_path / "models", "--lora", "inkwash:0.7",
                               "--lora-dir", tmp_path / "my_loras", "--data-dir", data, "--out", by_name)
    assert code == 0, err
    a, b = load_file(str(by_path)), load_file(str(by_name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    code, out, err = run_merge(ckpt, "--lora", "styles/inkwash", "--lora-dir", tmp_path / "my_loras",
                               "--data-dir", data, "--out", tmp_path / "folder.safetensors")
    assert code == 0, err
    code, _out, err = run_merge(ckpt, "--lora", "inkwsh:0.7", "--lora-dir", tmp_path / "my_loras",
                                "--data-dir", data, "--out", tmp_path / "bad.safetensors")
    assert code == 2 and "did you mean inkwash?" in err and "unsupported file type" not in err
    assert not (tmp_path / "bad.safetensors").exists()
