"""`merge`: bake LoRAs into a tiny LDM checkpoint; check against diffusers' own fuse (after
converting the merged checkpoint back with diffusers' convert_ldm_unet_checkpoint) and PEFT's merge."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from engine_makers import (  # noqa: E402
    base_models, diffusers_fused_unet, make_lora, peft_merged_text_encoder, tiny_ldm_checkpoint,
)

from lora_core.commands import merge as merge_cmd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_merge(*argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    merge_cmd.add_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = merge_cmd.run(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    ckpt = d / "tiny.safetensors"
    save_file(tiny_ldm_checkpoint(), str(ckpt), metadata={"note": "tiny test model"})
    ckpt16 = d / "tiny16.safetensors"
    save_file(tiny_ldm_checkpoint(torch.float16), str(ckpt16))
    garbage = d / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    return {
        "dir": d, "ckpt": ckpt, "ckpt16": ckpt16, "garbage": garbage,
        "a": make_lora(d, "a", seed=1),
        "b": make_lora(d, "b", seed=2, rank=8, alpha=4.0, kohya=True),
        "xl": make_lora(d, "xl", seed=3, kohya=True, metadata={"ss_base_model_version": "sdxl_base_v1-0"}),
    }


def test_merged_unet_matches_diffusers_fuse(work):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    out = work["dir"] / "merged.safetensors"
    code, stdout, stderr = run_merge(work["ckpt"], "--lora", f"{work['a']}:0.7", "--lora", f"{work['b']}:1:-0.4",
                                     "--out", out)
    assert code == 0, stderr
    assert "wrote" in stdout
    merged = load_file(str(out))
    original = load_file(str(work["ckpt"]))
    # same keys and dtypes, non-weight entries untouched
    assert list(merged) == list(original)
    assert all(merged[k].dtype == original[k].dtype for k in original)
    for k in ("alphas_cumprod", "cond_stage_model.transformer.embeddings.position_ids"):
        assert torch.equal(merged[k], original[k])
    unet, _ = base_models()
    back = convert_ldm_unet_checkpoint(merged, dict(unet.config))
    want = diffusers_fused_unet([(work["a"], 0.7), (work["b"], -0.4)])
    assert set(back) == set(want)
    assert max((back[k] - want[k]).abs().max().item() for k in want) < 1e-6
    changed = [k for k in want if not torch.equal(want[k], unet.state_dict()[k])]
    assert changed and all(not torch.equal(back[k], unet.state_dict()[k]) for k in changed)
    # text encoder: b has a te part only through a (b's te weight is 1, a's 0.7)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["note"] == "tiny test model"
    baked = json.loads(meta["lora_core.merged"])
    assert [x["file"] for x in baked] == ["a.safetensors", "b.safetensors"]


def test_merged_text_encoder_matches_peft_merge(work):
    out = work["dir"] / "te_only.safetensors"
    code, _o, err = run_merge(work["ckpt"], "--lora", f"{work['a']}:0.5:0", "--out", out)
    assert code == 0, err
    merged = load_file(str(out))
    original = load_file(str(work["ckpt"]))
    want = peft_merged_text_encoder(work["a"], 0.5)
    for module, w in want.items():
        got = merged[f"cond_stage_model.transformer.{module}.weight"]
        assert (got - w).abs().max().item() < 1e-6, module
    # unet weight 0: the UNet is bit for bit the original
    unet_keys = [k for k in original if k.startswith("model.diffusion_model.")]
    assert all(torch.equal(merged[k], original[k]) for k in unet_keys)


def test_fp16_checkpoint_stays_fp16(work):
    out = work["dir"] / "merged16.safetensors"
    code, _o, err = run_merge(work["ckpt16"], "--lora", str(work["a"]), "--out", out)
    assert code == 0, err
    merged, original = load_file(str(out)), load_file(str(work["ckpt16"]))
    assert {k: v.dtype for k, v in merged.items()} == {k: v.dtype for k, v in original.items()}
    assert sum(not torch.equal(merged[k], original[k]) for k in original) > 40


def test_incompatible_lora_fails_cleanly(work):
    out = work["dir"] / "never.safetensors"
    code, _o, err = run_merge(work["ckpt"], "--lora", str(work["xl"]), "--out", out)
    assert code == merge_cmd.EXIT_INCOMPATIBLE
    assert "sdxl" in err and "sd1" in err and "xl.safetensors" in err
    assert not out.exists()


def test_bad_files_fail_cleanly(work):
    out = work["dir"] / "never2.safetensors"
    code, _o, err = run_merge(work["ckpt"], "--lora", str(work["garbage"]), "--out", out)
    assert code == merge_cmd.EXIT_BAD_INPUT and "garbage.safetensors" in err
    code, _o, err = run_merge(work["garbage"], "--lora", str(work["a"]), "--out", out)
    assert code == merge_cmd.EXIT_BAD_INPUT and "garbage.safetensors" in err
    code, _o, err = run_merge(work["dir"] / "missing.safetensors", "--lora", str(work["a"]), "--out", out)
    assert code == merge_cmd.EXIT_BAD_INPUT and "no such file" in err
    assert not out.exists()
    code, _o, err = run_merge(work["ckpt"], "--lora", str(work["a"]), "--out", work["ckpt"])
    assert code == merge_cmd.EXIT_BAD_INPUT


def test_lora_argument_parsing():
    from lora_core.request import ApplyRequest

    assert merge_cmd.parse_lora_arg("x.safetensors") == ApplyRequest("x.safetensors", 1.0, 1.0)
    assert merge_cmd.parse_lora_arg("x.safetensors:0.5") == ApplyRequest("x.safetensors", 0.5, 0.5)
    assert merge_cmd.parse_lora_arg("x.safetensors:0.5:-1") == ApplyRequest("x.safetensors", 0.5, -1.0)
    assert merge_cmd.parse_lora_arg(r"C:\loras\x.safetensors:0.3") == ApplyRequest(r"C:\loras\x.safetensors", 0.3, 0.3)


def test_command_line_entry_point(work):
    out = work["dir"] / "cli.safetensors"
    proc = subprocess.run([sys.executable, "-m", "lora_core", "merge", str(work["ckpt"]), "--lora", str(work["a"]),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
