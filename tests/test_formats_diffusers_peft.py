"""formats vs diffusers + PEFT: files written by `save_lora_weights` and converted with
`convert_state_dict_to_kohya`; the oracle is PEFT's own merge (W_merged − W0) per module."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent / "formats"))
from formats_makers import make_sd1_lora_files, rename_keys  # noqa: E402

from lora_core.formats import load_lora  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / (b.norm() + 1e-30))


def assert_matches_reference(lora, made, tol=1e-5):
    assert set(made.reference_deltas) <= set(lora.adapters), sorted(set(made.reference_deltas) - set(lora.adapters))[:5]
    for key, ref in made.reference_deltas.items():
        got = lora.adapters[key].delta(made.base[key])
        assert got.dtype == torch.float32 and got.shape == made.base[key].shape, key
        assert rel_err(got, ref) < tol, (key, rel_err(got, ref))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return make_sd1_lora_files(tmp_path_factory.mktemp("sd1"), rank=4, alpha=8.0)


def test_diffusers_file_matches_peft_merge(sd1):
    lora = load_lora(sd1.diffusers)
    assert lora.family == "sd1"
    assert not lora.unclaimed
    assert lora.adapters.keys() == sd1.reference_deltas.keys()
    # alpha (8) != rank (4): the scale must come from the file's adapter metadata
    assert lora.adapters["unet:down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].low_rank()[2] == 2.0
    assert_matches_reference(lora, sd1)


def test_kohya_conversion_matches_peft_merge(sd1):
    lora = load_lora(sd1.kohya)
    assert lora.family == "sd1"
    assert lora.adapters.keys() == sd1.reference_deltas.keys()
    assert_matches_reference(lora, sd1)
    counts = lora.algorithms()
    assert counts["locon"] > 0 and counts["lora"] > 0  # resnet conv1/conv2 are 3×3 LoCon


def test_diffusers_without_metadata_means_alpha_equals_rank(sd1, tmp_path):
    path = rename_keys(sd1.diffusers, str(tmp_path / "nometa.safetensors"), lambda k: k, metadata={})
    lora = load_lora(path)
    key = "unet:down_blocks_0_attentions_0_proj_in"
    ref = sd1.reference_deltas[key] / 2.0  # alpha/rank was 2
    assert rel_err(lora.adapters[key].delta(sd1.base[key]), ref) < 1e-5


def test_low_rank_reproduces_delta(sd1):
    lora = load_lora(sd1.kohya)
    for key, adapter in lora.adapters.items():
        up, down, scale = adapter.low_rank()
        base = sd1.base[key]
        rebuilt = (scale * up.float() @ down.float()).reshape(base.shape)
        assert rel_err(rebuilt, adapter.delta(base)) < 1e-6, key


def test_peft_alpha_pattern(tmp_path):
    from peft.utils import get_peft_model_state_dict
    from formats_makers import (UNET_TARGETS, _save_diffusers, add_peft_lora, base_weights,
                                peft_reference_deltas, tiny_text_encoder, tiny_unet, TE_TARGETS)

    unet, te = tiny_unet(768), tiny_text_encoder(768)
    ucfg = add_peft_lora(unet, UNET_TARGETS, 4, 8.0, alpha_pattern={"proj_in": 1.0, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 3.0})
    tcfg = add_peft_lora(te, TE_TARGETS, 4, 2.0)
    path = _save_diffusers(str(tmp_path), get_peft_model_state_dict(unet), get_peft_model_state_dict(te),
                           ucfg.to_dict(), tcfg.to_dict(), "pattern.safetensors")
    refs = {**peft_reference_deltas(unet, "unet"), **peft_reference_deltas(te, "te1")}
    bases = {**base_weights(unet, "unet"), **base_weights(te, "te1")}
    lora = load_lora(path)
    for key, ref in refs.items():
        assert rel_err(lora.adapters[key].delta(bases[key]), ref) < 1e-5, key
    assert lora.adapters["unet:down_blocks_0_attentions_0_proj_in"].low_rank()[2] == 0.25
    assert lora.adapters["unet:down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].low_rank()[2] == 0.75


def test_dora_diffusers_and_kohya(tmp_path):
    made = make_sd1_lora_files(tmp_path, rank=4, alpha=6.0, use_dora=True)
    lora = load_lora(made.diffusers)
    assert lora.algorithms()["dora"] == len(lora.adapters)
    assert all(a.low_rank() is None for a in lora.adapters.values())
    assert_matches_reference(lora, made, tol=1e-5)
    # kohya spelling of the same file: dora_scale next to lora_up/lora_down/alpha
    def kohya_name(k):
        k = k.replace("lora_magnitude_vector", "dora_scale").replace("lora_A.weight", "lora_down.weight")
        k = k.replace("lora_B.weight", "lora_up.weight")
        prefix, _, rest = k.partition(".")
        module, _, suffix = rest.rpartition(".lora_") if ".lora_" in rest else rest.rpartition(".dora_")
        suffix = ("lora_" if ".lora_" in rest else "dora_") + suffix
        head = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[prefix]
        return head + module.replace(".", "_") + "." + suffix
    kohya = rename_keys(made.diffusers, str(tmp_path / "dora_kohya.safetensors"), kohya_name, metadata={})
    with safe_open(kohya, "pt") as f:
        extra = {k.rsplit(".", 2)[0] + ".alpha": torch.tensor(6.0) for k in f.keys() if k.endswith("lora_down.weight")}
        # LyCORIS' wd_on_out layout of the magnitude: (out, 1[, 1, 1])
        tensors = {k: (f.get_tensor(k).reshape(-1, *[1] * (f.get_tensor(k.replace("dora_scale", "lora_down.weight")).dim() - 1))
                       if k.endswith("dora_scale") else f.get_tensor(k)) for k in f.keys()}
    save_file({**tensors, **extra}, kohya)
    assert_matches_reference(load_lora(kohya), made, tol=1e-5)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families_from_shapes(family, tmp_path):
    made = make_sd1_lora_files(tmp_path, rank=4, alpha=6.0, family=family)
    for path in (made.diffusers, made.kohya):
        lora = load_lora(path)
        assert lora.family == family, path
        assert_matches_reference(lora, made)
    if family == "sdxl":
        assert any(k.startswith("te2:") for k in load_lora(made.kohya).adapters)


def test_fp16_file_keeps_dtype_and_computes_in_fp32(sd1, tmp_path):
    with safe_open(sd1.kohya, "pt") as f:
        half = {k: f.get_tensor(k).half() for k in f.keys()}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path), metadata={"ss_network_dim": "4"})
    lora = load_lora(path, name="half")
    assert lora.name == "half" and lora.metadata["ss_network_dim"] == "4"
    adapter = lora.adapters["unet:down_blocks_0_attentions_0_proj_in"]
    assert adapter.tensors["lora_up.weight"].dtype == torch.float16
    base = sd1.base["unet:down_blocks_0_attentions_0_proj_in"].half()
    d = adapter.delta(base)
    assert d.dtype == torch.float32
    assert rel_err(d, sd1.reference_deltas["unet:down_blocks_0_attentions_0_proj_in"]) < 2e-3
    assert lora.nbytes == sum(t.numel() * 2 for t in half.values())


def test_diffusers_reads_the_kohya_file_as_we_do(sd1, tmp_path):
    """Independent consumer: diffusers' own kohya loader + fuse_lora on a fresh copy of the UNet."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from formats_makers import tiny_unet
    from peft.tuners.lora import LoraLayer

    state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(sd1.kohya)
    unet = tiny_unet(768, seed=0)  # same init as the model the LoRA was made on
    w0 = {n: p.detach().clone() for n, p in unet.named_parameters()}
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, unet, adapter_name="k")
    unet.fuse_lora()
    ours = load_lora(sd1.kohya)
    checked = 0
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            base = w0[name + ".weight"]
            ref = module.get_base_layer().weight.detach() - base
            got = ours.adapters["unet:" + name.replace(".", "_")].delta(base)
            assert rel_err(got, ref) < 1e-5, name
            checked += 1
    assert checked == sum(k.startswith("unet:") for k in ours.adapters) > 20
