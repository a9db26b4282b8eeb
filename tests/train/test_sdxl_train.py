"""LoRA training on a tiny SDXL-structured model: kohya's SDXL names and metadata, learning, and the
saved file read back by us (load_lora, Binding, Engine) and by diffusers (a real producer's loader).

Oracles from other code: diffusers' `StableDiffusionXLPipeline.load_lora_weights` (its kohya
converter maps our `lora_unet_input_blocks_...` / `lora_te1_` / `lora_te2_` keys to its own modules)
and `fuse_lora`, whose fused weights must equal the Engine's; diffusers' `encode_prompt` for the
text conditioning the trainer computes.
"""
import copy
import json

import pytest
import torch

from lora_core.demo.data import BASE
from lora_core.train import Components, NetworkSpec, TrainConfig, build_metadata, save_lora_file, scan_folder, train_lora
from lora_core.train.conditioning import time_ids
from train.sdxl_parts import TE1_WIDTH, TE2_WIDTH, tiny_sdxl_parts
from train.tiny_parts import one_torch_thread

RES = 16  # 16x16 pixels -> 8x8 latents with the 2-level test VAE
MODELS = ("unet", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_sdxl_parts(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    BASE.write(root, seed=0, n=4, repeats=2, size=RES)
    return scan_folder(root, trigger="lctest")


def _probe_inputs(parts):
    """A fixed UNet input, conditioned the way the trainer conditions it."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    sizes = torch.stack([time_ids((20, 16), (2, 0), (RES, RES)), time_ids((RES, RES), (0, 0), (RES, RES))])
    return x, torch.tensor([50, 700]), ["lctest, a red square", "lctest"], sizes


def _outputs(parts, probe):
    """(UNet prediction, context, pooled) for the probe with the models as they are now."""
    x, t, captions, sizes = probe
    cond = Components.from_dict(parts).conditioning()
    with torch.no_grad():
        enc = cond.encode(captions)
        pred = parts["unet"](x, t, **cond.unet_kwargs(enc, sizes)).sample
    return pred, enc["context"], enc["pooled"]


@pytest.fixture(scope="module")
def trained(parts, dataset, tmp_path_factory):
    """A LoCon LoRA on the UNet and both text encoders, saved; the model's outputs with it applied
    by the network itself. The network is removed afterwards (the base weights never change)."""
    spec = NetworkSpec(rank=4, alpha=2.0, targets="locon", conv_rank=2, conv_alpha=1.0, train_te=True)
    config = TrainConfig(network=spec, resolution=RES, lr=1e-2, steps=4, batch_size=2, seed=0)
    result = train_lora(Components.from_dict(parts), dataset, config, progress=False)
    try:
        meta = build_metadata(name="xl", family="sdxl", config=config, dataset=dataset, result=result,
                              model_name="tiny_xl")
        path = save_lora_file(tmp_path_factory.mktemp("out") / "xl.safetensors", result.network, meta)
        with_lora = _outputs(parts, _probe_inputs(parts))
    finally:
        result.network.remove()
    return result, path, with_lora


def _load(path):
    from lora_core.formats import load_lora

    return load_lora(path)


def _binding(models):
    from lora_core.targets import Binding

    return Binding.from_diffusers(models["unet"], [models["text_encoder"], models["text_encoder_2"]], family="sdxl")


# ------------------------------------------------------------------------------- names
def test_kohya_sdxl_names(parts):
    """UNet names in kohya's LDM layout (its SDXL UNet's), text encoders as lora_te1_/lora_te2_;
    each name resolves (through lora_core.targets' checkpoint naming) to the very layer wrapped."""
    from lora_core.train.sdxl import kohya_unet_names
    from lora_core.train.network import LoRANetwork

    unet, te1, te2 = (parts[k] for k in MODELS)
    net = LoRANetwork(unet, [te1, te2], NetworkSpec(targets="locon"), unet_names=kohya_unet_names(unet))
    names = set(net.loras)
    for expected in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",  # level 1, first attention
                     "lora_unet_input_blocks_8_1_transformer_blocks_1_ff_net_2",  # level 2, depth 2
                     "lora_unet_input_blocks_4_1_proj_in", "lora_unet_middle_block_1_transformer_blocks_1_attn1_to_out_0",
                     "lora_unet_output_blocks_0_1_proj_out", "lora_unet_output_blocks_8_0_skip_connection",
                     "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_1_0_emb_layers_1",
                     "lora_unet_input_blocks_1_0_out_layers_3", "lora_unet_input_blocks_3_0_op",
                     "lora_unet_output_blocks_2_2_conv", "lora_unet_output_blocks_5_2_conv",
                     "lora_unet_middle_block_2_in_layers_2",
                     "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te1_text_model_encoder_layers_1_mlp_fc2",
                     "lora_te2_text_model_encoder_layers_1_self_attn_out_proj", "lora_te2_text_model_encoder_layers_0_mlp_fc1"):
        assert expected in names, expected
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block_" in n for n in names)
    assert not any(n.startswith("lora_te_") for n in names)
    assert not any("text_projection" in n or "conv_in" in n or "label_emb" in n for n in names)
    assert sum(n.startswith("lora_te1_") for n in names) == sum(n.startswith("lora_te2_") for n in names) == 12
    binding = _binding(parts)
    for name, module in net.loras.items():
        prefix, _, flat = name.partition("_")[2].partition("_")
        component = {"unet": "unet", "te1": "te1", "te2": "te2"}[prefix]
        slot = binding.resolve(f"{component}:{flat}")
        assert slot is not None and slot.tensor is module._base.weight, name
    assert net.loras["lora_unet_input_blocks_3_0_op"].lora_down.weight.shape[1:] == (16, 3, 3)


def test_text_conditioning_equals_the_diffusers_pipeline(parts):
    """context = [CLIP-L | bigG] penultimate states, pooled = bigG's projection, as
    StableDiffusionXLPipeline.encode_prompt computes them."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                     text_encoder_2=parts["text_encoder_2"], tokenizer=parts["tokenizer"],
                                     tokenizer_2=parts["tokenizer_2"], unet=parts["unet"],
                                     scheduler=parts["scheduler"], add_watermarker=False)
    captions = ["lctest, a red square", "a blue circle on green"]
    with torch.no_grad():
        ctx, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
        ours = Components.from_dict(parts).conditioning().encode(captions)
    assert ours["context"].shape == (2, 77, TE1_WIDTH + TE2_WIDTH)
    torch.testing.assert_close(ours["context"], ctx)
    torch.testing.assert_close(ours["pooled"], pooled)


# ----------------------------------------------------------------------------- training
def test_loss_goes_down(parts, dataset):
    spec = NetworkSpec(rank=4, alpha=2.0, targets="locon", train_te=False)
    config = TrainConfig(network=spec, resolution=RES, lr=1e-2, steps=20, batch_size=4, seed=0)
    result = train_lora(Components.from_dict(parts), dataset, config, progress=False)
    try:
        losses = result.losses  # seen: 1.07 -> 0.78 (mean of the first / last five)
        assert len(losses) == 20 and not result.interrupted
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < first * 0.9, (first, last)
    finally:
        result.network.remove()


def test_bf16_with_both_text_encoders_trains_finite(parts, dataset):
    spec = NetworkSpec(rank=2, alpha=2.0, train_te=True)
    config = TrainConfig(network=spec, resolution=RES, lr=1e-3, steps=2, batch_size=2, dtype="bf16")
    result = train_lora(Components.from_dict(parts), dataset, config, progress=False)
    try:
        assert len(result.losses) == 2 and all(0 < loss < 100 for loss in result.losses)
        assert {p.dtype for p in result.network.parameters()} == {torch.float32}
        te2 = [m for n, m in result.network.loras.items() if n.startswith("lora_te2_")]
        assert te2 and any(float(m.lora_up.weight.detach().abs().max()) > 0 for m in te2)  # bigG got gradients
    finally:
        result.network.remove()


def test_bad_sdxl_parts_are_refused_by_name(parts):
    bad = dict(parts, tokenizer_2=None)
    with pytest.raises(ValueError, match="tokenizer_2"):
        Components.from_dict(bad)
    sd1_unet = copy.deepcopy(parts["unet"])
    sd1_unet.register_to_config(addition_embed_type=None)
    with pytest.raises(ValueError, match="addition_embed_type"):
        Components.from_dict(dict(parts, unet=sd1_unet))
    swapped = dict(parts, text_encoder=parts["text_encoder_2"], text_encoder_2=copy.deepcopy(parts["text_encoder_2"]))
    with pytest.raises(ValueError, match="context is 80 wide"):
        Components.from_dict(swapped)


# ------------------------------------------------------------------------------- output
def test_file_loads_as_sdxl_and_every_key_resolves(parts, dataset, trained):
    result, path, _ = trained
    lora = _load(path)
    assert lora.family == "sdxl" and not lora.unclaimed
    assert len(lora.adapters) == len(result.network.loras)
    binding = _binding(parts)
    assert binding.match(lora) == (len(lora.adapters), 0) and binding.unmatched(lora) == []
    components = {k.split(":")[0] for k in lora.adapters}
    assert components == {"unet", "te1", "te2"}
    assert lora.algorithms()["locon"] > 0
    assert lora.adapters["unet:input_blocks_1_0_in_layers_2"].rank == 2
    assert lora.adapters["te2:text_model_encoder_layers_0_self_attn_q_proj"].rank == 4
    for name, module in result.network.loras.items():  # the file holds exactly the trained ΔW
        prefix, _, flat = name.partition("_")[2].partition("_")
        got = lora.adapters[f"{prefix}:{flat}"].delta(module._base.weight)
        torch.testing.assert_close(got, module.delta_weight().reshape(got.shape), atol=1e-6, rtol=1e-5)
    md = lora.metadata
    assert md["ss_base_model_version"] == "sdxl_base_v1-0" and md["ss_v2"] == "False"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["ss_network_module"] == "networks.lora"
    assert (md["ss_network_dim"], float(md["ss_network_alpha"])) == ("4", 2.0)
    assert json.loads(md["ss_network_args"])["conv_dim"] == "2"
    assert md["ss_resolution"] == f"({RES}, {RES})" and md["ss_steps"] == "4"
    assert md["ss_network_train_unet_only"] == "False" and md["ss_sd_model_name"] == "tiny_xl"
    assert json.loads(md["ss_tag_frequency"])["2_scenes"]["lctest"] == 4


def test_engine_at_weight_one_reproduces_the_trained_model(parts, trained):
    """Merging the saved file with the Engine gives the outputs the network gave while training:
    the network's forward equals the merged weights; restore gives the base model back exactly."""
    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest

    _, path, (pred_lora, ctx_lora, pooled_lora) = trained
    probe = _probe_inputs(parts)
    base = _outputs(parts, probe)
    assert not torch.allclose(base[0], pred_lora, atol=1e-3)  # the LoRA does change the output
    assert not torch.allclose(base[1], ctx_lora, atol=1e-4) and not torch.allclose(base[2], pooled_lora, atol=1e-4)
    engine = Engine(_binding(parts))
    report = engine.apply([ApplyRequest(path)])
    try:
        assert not report.warnings and report.loras[0].unmatched == 0
        merged = _outputs(parts, probe)
    finally:
        engine.restore()
    torch.testing.assert_close(merged[1], ctx_lora, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged[2], pooled_lora, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged[0], pred_lora, atol=1e-5, rtol=1e-4)
    after = _outputs(parts, probe)
    assert all(torch.equal(a, b) for a, b in zip(after, base))


def test_diffusers_loads_the_file_and_fuses_what_the_engine_merges(parts, trained):
    """diffusers' SDXL kohya loader + fuse_lora on a copy of the base model; every weight of the
    UNet and both text encoders equals the Engine's merge (touched and untouched alike)."""
    from diffusers import StableDiffusionXLPipeline
    from peft.tuners.lora import LoraLayer

    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest

    result, path, _ = trained
    theirs = {k: copy.deepcopy(parts[k]) for k in (*MODELS, "vae")}
    pipe = StableDiffusionXLPipeline(vae=theirs["vae"], text_encoder=theirs["text_encoder"],
                                     text_encoder_2=theirs["text_encoder_2"], tokenizer=parts["tokenizer"],
                                     tokenizer_2=parts["tokenizer_2"], unet=theirs["unet"],
                                     scheduler=parts["scheduler"], add_watermarker=False)
    pipe.load_lora_weights(str(path))
    wrapped = {k: sum(isinstance(m, LoraLayer) for m in theirs[k].modules()) for k in MODELS}
    lora = _load(path)
    assert wrapped == {"unet": sum(k.startswith("unet:") for k in lora.adapters),
                       "text_encoder": sum(k.startswith("te1:") for k in lora.adapters),
                       "text_encoder_2": sum(k.startswith("te2:") for k in lora.adapters)}
    pipe.fuse_lora(lora_scale=1.0)
    engine = Engine(_binding(parts))
    engine.apply([ApplyRequest(path)])
    try:
        for k in MODELS:
            fused = {n.replace(".base_layer", ""): p for n, p in theirs[k].named_parameters()
                     if ".lora_" not in n}
            ours = dict(parts[k].named_parameters())
            assert fused.keys() == ours.keys()
            for n, p in ours.items():
                torch.testing.assert_close(fused[n], p, atol=1e-6, rtol=1e-5, msg=f"{k}.{n}")
    finally:
        engine.restore()
    base = {k: dict(parts[k].named_parameters()) for k in MODELS}
    moved = [n for k in MODELS for n, p in theirs[k].named_parameters()
             if ".lora_" not in n and not torch.equal(p, base[k][n.replace(".base_layer", "")])]
    # diffusers did change every trained layer (so the comparison means something)
    trained_layers = sum(bool(m.lora_up.weight.detach().abs().max() > 0) for m in result.network.loras.values())
    assert trained_layers > 200 and len(moved) == trained_layers


def test_size_conditioning_of_a_training_image(tmp_path):
    """time_ids = (original h, w, crop top, left, target h, w): the crop corner is where the
    centre crop starts in the resized image (a 40x24 image at 16 px: resized to 27x16, crop at x=5)."""
    from PIL import Image

    from lora_core.train.dataset import load_image_crop, load_image_tensor

    Image.new("RGB", (40, 24), (10, 200, 30)).save(tmp_path / "wide.png")
    pixels, original, crop = load_image_crop(tmp_path / "wide.png", RES)
    assert pixels.shape == (3, RES, RES) and original == (24, 40) and crop == (0, 5)
    assert torch.equal(pixels, load_image_tensor(tmp_path / "wide.png", RES))
    assert time_ids(original, crop, (RES, RES)).tolist() == [24.0, 40.0, 0.0, 5.0, 16.0, 16.0]
