"""`merge` into Flux.1 and SD3 single-file checkpoints, through the CLI.

Oracle: diffusers reads the LoRA file (its kohya converter splits a fused qkv into to_q/to_k/to_v),
loads it as a PEFT adapter on a tiny FluxTransformer2DModel / SD3Transformer2DModel and fuses it
(`fuse_lora`); the merged single-file checkpoint is turned into the diffusers layout by diffusers'
own single-file converter and compared with that. Text encoders (CLIP-L, CLIP-G, T5 under
`text_encoders.*`) are checked by the plain LoRA math W0 + w·(alpha/r)·up@down. bf16 and fp8
(float8_e4m3fn) checkpoints are compared within half a unit in the last place of their dtype, and
every tensor the LoRAs do not touch must come back bit for bit, in its dtype.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent / "targets"))
sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from dit_files import (  # noqa: E402
    KOHYA_FLUX_TE, KOHYA_FLUX_TENSORS, KOHYA_SD3, PREFIX, diffusers_fused, flux_checkpoint, kohya_flux_file,
    kohya_sd3_file, peft_file, sd3_checkpoint,
)
from dit_files import transformer_part as _transformer  # noqa: E402
from dit_models import flux_to_diffusers, sd3_to_diffusers  # noqa: E402
from engine_makers import make_lora  # noqa: E402

from lora_core.commands import merge as merge_cmd  # noqa: E402

TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2 ** -8 + 1e-5, 1e-6),
       torch.float8_e4m3fn: (2 ** -4 + 1e-5, 2 ** -10)}  # half an ulp of the stored dtype (rtol, atol)


def run_merge(*argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    merge_cmd.add_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = merge_cmd.run(args)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ checks

def _check_against(merged_diffusers, expect, dtype, base):
    rtol, atol = TOL[dtype]
    changed = 0
    for k, v in expect.items():
        torch.testing.assert_close(merged_diffusers[k], v, rtol=rtol, atol=atol, msg=k)
        changed += not torch.equal(merged_diffusers[k], base[k])
    return changed


def _check_untouched(merged, original, touched):
    assert list(merged) == list(original)
    for k, v in original.items():
        assert merged[k].dtype == v.dtype, k
        if k not in touched:
            assert torch.equal(merged[k].view(torch.uint8) if v.dtype.itemsize == 1 else merged[k],
                               v.view(torch.uint8) if v.dtype.itemsize == 1 else v), k


def _differs(a, b):
    return not torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.dtype.itemsize == 1 else not torch.equal(a, b)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("merge_dit")
    files = {"dir": d}
    for family, build in (("flux", flux_checkpoint), ("sd3", sd3_checkpoint)):
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float8_e4m3fn, "fp8")):
            path = d / f"{family}_{tag}.safetensors"
            save_file(build(dtype), str(path), metadata={"modelspec.architecture": family, "note": tag})
            files[(family, tag)] = path
    bare = {k[len(PREFIX):]: v for k, v in load_file(str(files[("flux", "bf16")])).items() if k.startswith(PREFIX)}
    files["flux_bare"] = d / "flux1-dev.safetensors"
    save_file(bare, str(files["flux_bare"]))
    files["kohya_flux"] = d / "kohya_flux.safetensors"
    files["kohya_flux_tensors"] = kohya_flux_file(files["kohya_flux"])
    files["kohya_sd3"] = d / "kohya_sd3.safetensors"
    files["kohya_sd3_tensors"] = kohya_sd3_file(files["kohya_sd3"])
    files["peft_flux"] = peft_file(d, "flux")
    files["peft_sd3"] = peft_file(d, "sd3")
    files["sdxl"] = Path(make_lora(d, "sdxl_lora", seed=3, kohya=True,
                                   metadata={"ss_base_model_version": "sdxl_base_v1-0"}))
    return files


@pytest.mark.parametrize("tag", ["fp32", "bf16", "fp8"])
def test_kohya_flux_lora_into_bfl_checkpoint_equals_diffusers_fuse(work, tag):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[tag]
    weight = 4.0 if tag == "fp8" else 0.8   # fp8: a ΔW large enough to move values by whole fp8 steps
    src, out = work[("flux", tag)], work["dir"] / f"merged_kohya_flux_{tag}.safetensors"
    code, stdout, stderr = run_merge(src, "--lora", f"{work['kohya_flux']}:{weight}", "--out", out)
    assert code == 0, stderr
    # 9 modules (7 transformer, CLIP-L, T5), 9 tensors: the q/k/v slots of a fused qkv are one tensor
    assert "9 modules merged" in stdout and "9 tensors changed" in stdout, stdout
    original, merged = load_file(str(src)), load_file(str(out))
    touched = {PREFIX + n for n in KOHYA_FLUX_TENSORS} | set(KOHYA_FLUX_TE.values())
    assert touched <= set(original)
    _check_untouched(merged, original, touched)
    assert sum(_differs(merged[k], original[k]) for k in touched) == len(touched)

    base = flux_to_diffusers(_transformer(original))
    expect = diffusers_fused("flux", base, work["kohya_flux"], weight)
    assert _check_against(flux_to_diffusers(_transformer(merged)), expect, dtype, base) >= 9  # qkv: 3 tensors each
    # text encoders: the plain LoRA math, multiplier × alpha/rank
    t = work["kohya_flux_tensors"]
    rtol, atol = TOL[dtype if dtype != torch.float8_e4m3fn else torch.bfloat16]   # encoders stay bf16 there
    for lora_key, name in KOHYA_FLUX_TE.items():
        delta = weight * (1.0 / 2) * t[f"{lora_key}.lora_up.weight"] @ t[f"{lora_key}.lora_down.weight"]
        torch.testing.assert_close(merged[name].float(), original[name].float() + delta, rtol=rtol, atol=atol)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["note"] == tag and "kohya_flux.safetensors" in meta["lora_core.merged"]


@pytest.mark.parametrize("tag", ["fp32", "bf16"])
def test_peft_flux_lora_into_bfl_checkpoint_equals_diffusers_fuse(work, tag):
    """PEFT's to_q/to_k/to_v/proj_mlp land in row slices of the fused qkv / linear1, norm_out in the
    swapped halves of final_layer.adaLN_modulation.1."""
    dtype = torch.float32 if tag == "fp32" else torch.bfloat16
    src, out = work[("flux", tag)], work["dir"] / f"merged_peft_flux_{tag}.safetensors"
    code, stdout, stderr = run_merge(src, "--lora", f"{work['peft_flux']}:0.7", "--out", out)
    assert code == 0, stderr
    original, merged = load_file(str(src)), load_file(str(out))
    assert list(merged) == list(original)
    text_and_vae = [k for k in original if not k.startswith(PREFIX)]
    assert all(torch.equal(merged[k], original[k]) for k in text_and_vae)
    base = flux_to_diffusers(_transformer(original))
    expect = diffusers_fused("flux", base, work["peft_flux"], 0.7)
    assert _check_against(flux_to_diffusers(_transformer(merged)), expect, dtype, base) > 30
    changed = sum(_differs(merged[k], original[k]) for k in original)
    assert f"{changed} tensors changed" in stdout, stdout


def test_transformer_only_flux_file_keeps_its_bare_names(work):
    """flux1-dev.safetensors as BFL publishes it: `double_blocks.0...` with no prefix."""
    src, out = work["flux_bare"], work["dir"] / "merged_bare.safetensors"
    code, stdout, stderr = run_merge(src, "--lora", str(work["peft_flux"]), "--lora", f"{work['kohya_flux']}:0.5",
                                     "--out", out)
    assert code == 0, stderr
    assert "(flux," in stdout
    original, merged = load_file(str(src)), load_file(str(out))
    assert list(merged) == list(original) and all(merged[k].dtype == torch.bfloat16 for k in merged)
    base = flux_to_diffusers(_transformer(original, prefix=""))
    once = diffusers_fused("flux", base, work["peft_flux"], 1.0)
    expect = diffusers_fused("flux", once, work["kohya_flux"], 0.5)   # both LoRAs, fused one after the other
    assert _check_against(flux_to_diffusers(_transformer(merged, prefix="")), expect, torch.bfloat16, base) > 30
    # the kohya file's CLIP-L / T5 parts have nowhere to go in a transformer-only file
    assert "2 not in the checkpoint" in stdout, stdout


@pytest.mark.parametrize("tag", ["fp32", "bf16", "fp8"])
def test_peft_sd3_lora_into_mmdit_checkpoint_equals_diffusers_fuse(work, tag):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[tag]
    weight = 3.0 if tag == "fp8" else 0.9
    src, out = work[("sd3", tag)], work["dir"] / f"merged_peft_sd3_{tag}.safetensors"
    code, stdout, stderr = run_merge(src, "--lora", f"{work['peft_sd3']}:{weight}", "--out", out)
    assert code == 0, stderr
    assert "(sd3," in stdout
    original, merged = load_file(str(src)), load_file(str(out))
    assert list(merged) == list(original)
    assert all(merged[k].dtype == original[k].dtype for k in original)
    assert all(torch.equal(merged[k], original[k]) for k in original if not k.startswith(PREFIX))
    base = sd3_to_diffusers(_transformer(original))
    expect = diffusers_fused("sd3", base, work["peft_sd3"], weight)
    assert _check_against(sd3_to_diffusers(_transformer(merged)), expect, dtype, base) > 20


@pytest.mark.parametrize("tag", ["fp32", "bf16"])
def test_kohya_sd3_lora_with_three_text_encoders(work, tag):
    """kohya SD3 names: the fused MMDiT qkv as one module, CLIP-G (te2) and T5 (te3) by the LoRA
    math. `--lora file:TE:UNET` weighs the two sides apart."""
    src, out = work[("sd3", tag)], work["dir"] / f"merged_kohya_sd3_{tag}.safetensors"
    code, stdout, stderr = run_merge(src, "--lora", f"{work['kohya_sd3']}:0.5:1.5", "--out", out)
    assert code == 0, stderr
    assert "4 modules merged" in stdout and "4 tensors changed" in stdout, stdout
    original, merged = load_file(str(src)), load_file(str(out))
    _check_untouched(merged, original, set(KOHYA_SD3.values()))
    t = work["kohya_sd3_tensors"]
    rtol, atol = TOL[torch.float32 if tag == "fp32" else torch.bfloat16]
    for lora_key, name in KOHYA_SD3.items():
        weight = 1.5 if lora_key.startswith("lora_unet_") else 0.5
        delta = weight * (3.0 / 2) * t[f"{lora_key}.lora_up.weight"] @ t[f"{lora_key}.lora_down.weight"]
        torch.testing.assert_close(merged[name].float(), original[name].float() + delta, rtol=rtol, atol=atol,
                                   msg=name)
        assert _differs(merged[name], original[name]), name


@pytest.mark.parametrize("ckpt,lora,families", [
    (("flux", "bf16"), "sdxl", ("sdxl", "flux")),
    (("sd3", "bf16"), "kohya_flux", ("flux", "sd3")),
    (("flux", "fp8"), "peft_sd3", ("sd3", "flux")),
    ("flux_bare", "kohya_sd3", ("sd3", "flux")),
])
def test_lora_of_another_family_is_refused_naming_both(work, ckpt, lora, families):
    out = work["dir"] / "never.safetensors"
    before = set(work["dir"].iterdir())
    code, stdout, stderr = run_merge(work[ckpt], "--lora", str(work[lora]), "--out", out)
    assert code == merge_cmd.EXIT_INCOMPATIBLE, (stdout, stderr)
    assert all(f in stderr for f in families) and Path(work[lora]).name in stderr, stderr
    assert set(work["dir"].iterdir()) == before   # nothing written, no temporary file left


def test_file_without_a_model_names_what_was_looked_for(work):
    path = work["dir"] / "vae_only.safetensors"
    save_file({"vae.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    code, _o, stderr = run_merge(path, "--lora", str(work["kohya_flux"]), "--out", work["dir"] / "never.safetensors")
    assert code == merge_cmd.EXIT_BAD_INPUT
    assert "vae_only.safetensors" in stderr and "Flux/SD3" in stderr and "SD1/SD2/SDXL" in stderr, stderr


def test_only_touched_tensors_are_read_and_every_other_byte_is_copied(work, monkeypatch):
    """A 12B transformer is not loaded whole: the merge reads the tensors the LoRA writes, and the
    output's data area is the input's except in those tensors' spans; the header differs only in
    its metadata."""
    from lora_core.commands import merge_file
    from lora_core.formats.header import read_header

    reads = []
    real = merge_file.CheckpointFile.load

    def spy(self, names):
        names = list(names)
        reads.append(names)
        return real(self, names)

    monkeypatch.setattr(merge_file.CheckpointFile, "load", spy)
    src, out = work[("flux", "bf16")], work["dir"] / "merged_streamed.safetensors"
    code, _stdout, stderr = run_merge(src, "--lora", str(work["kohya_flux"]), "--out", out)
    assert code == 0, stderr
    touched = {PREFIX + n for n in KOHYA_FLUX_TENSORS} | set(KOHYA_FLUX_TE.values())
    assert len(reads) == 1 and set(reads[0]) == touched
    h_in, m_in, off_in = read_header(str(src))
    h_out, m_out, off_out = read_header(str(out))
    assert list(h_out) == list(h_in) and h_out == h_in
    assert m_out == {**m_in, "lora_core.merged": m_out["lora_core.merged"]}
    data_in, data_out = bytearray(src.read_bytes()[off_in:]), bytearray(out.read_bytes()[off_out:])
    assert len(data_in) == len(data_out)
    for name in touched:
        begin, end = h_in[name]["data_offsets"]
        assert data_in[begin:end] != data_out[begin:end], name
        data_in[begin:end] = data_out[begin:end] = b"\0" * (end - begin)
    assert data_in == data_out
