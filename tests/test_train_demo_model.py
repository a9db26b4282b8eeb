"""tools/train_demo_model.py and its LDM export: key names, exact round trip through diffusers'
own single-file converters (the oracle), determinism, size budget."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_core.demo.model import DemoArch, DemoTrainSettings, build_models, train_demo_model
from lora_core.train.ldm_export import sd1_state_dict
from train.tiny_parts import one_torch_thread

ROOT = Path(__file__).resolve().parent.parent
SMALL = DemoArch(unet_channels=(32, 32, 32, 32), unet_layers_per_block=1, te_hidden=32, te_layers=1,
                 te_intermediate=64, vae_channels=(8, 8, 8, 8))
FEW = DemoTrainSettings(n_images=16, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1)
# the recipe without its options: plain VAE loss on the base shapes, full captions only
PLAIN = DemoTrainSettings(n_images=16, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1,
                          vae_object_weight=0.0, vae_extra_shapes=(), vae_styled_fraction=0.0,
                          partial_caption_rate=0.0)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    yield from one_torch_thread()


def test_ldm_export_round_trips_through_diffusers_converters():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from lora_core.app.checkpoints import _clip_l_tensors

    unet, te, vae = build_models(SMALL, seed=3)
    sd = sd1_state_dict(unet, vae, te)
    for name, got, model in (("unet", convert_ldm_unet_checkpoint(sd, unet.config), unet),
                             ("vae", convert_ldm_vae_checkpoint(sd, vae.config), vae)):
        want = model.state_dict()
        assert sorted(got) == sorted(want), name
        for k in want:
            assert got[k].shape == want[k].shape and torch.equal(got[k], want[k]), (name, k)
    clip = {k.removeprefix("text_model."): v for k, v in _clip_l_tensors(sd).items()}
    want = te.state_dict()
    assert sorted(clip) == sorted(want)
    assert all(torch.equal(clip[k], want[k]) for k in want)


def test_default_demo_model_fits_the_size_budget():
    unet, te, vae = build_models(DemoArch(), seed=0)
    n = sum(p.numel() for m in (unet, te, vae) for p in m.parameters())
    assert n * 2 < 30e6  # stored as fp16
    assert unet.config.cross_attention_dim == te.config.hidden_size
    assert te.config.vocab_size == 49408  # the real CLIP vocabulary


def test_tool_smoke_run_writes_an_ldm_checkpoint_and_manifest(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import train_demo_model as tool
    finally:
        sys.path.pop(0)
    assert tool.main(["--out", str(tmp_path), "--smoke", "--loras", "--no-progress",
                      "--data-dir", str(tmp_path / "cache")]) == 0
    ckpt = tmp_path / "lora_core-demo.safetensors"
    manifest = json.loads((tmp_path / "lora_core-demo.json").read_text())
    assert manifest["vae_steps"] == 2 and manifest["unet_steps"] == 2 and manifest["seed"] == 1234
    from lora_core.demo.model import sha256_file

    assert manifest["sha256"] == sha256_file(ckpt)
    assert ckpt.stat().st_size < 30 * 1024 * 1024
    with safe_open(str(ckpt), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    for key in ("model.diffusion_model.input_blocks.0.0.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.2.bias",
                "model.diffusion_model.out.2.weight", "model.diffusion_model.time_embed.0.weight",
                "first_stage_model.encoder.down.0.block.0.conv1.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in keys, key
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.", "down_blocks")) for k in keys)
    configs = json.loads(meta["lora_core_demo_configs"])
    assert configs["unet"]["block_out_channels"] == [32, 64, 64, 64]
    assert (tmp_path / "configs" / "sd15" / "unet" / "config.json").is_file()
    vae_cfg = json.loads((tmp_path / "configs" / "sd15" / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(manifest["vae_scaling_factor"])
    # the demo LoRAs, made by `lora_core train` on that checkpoint
    from lora_core.formats import load_lora

    loras = {p.stem: load_lora(p) for p in sorted((tmp_path / "loras").glob("*.safetensors"))}
    from lora_core.demo.loras import RECIPES

    assert set(loras) == {r.name for r in RECIPES} >= {"demo_stripes", "demo_lcshape", "demo_checker", "demo_warm"}
    assert all(lf.family == "sd1" and lf.metadata["ss_steps"] == "2" for lf in loras.values())
    # each file has conv (LoCon) modules exactly when its recipe asks for them
    for recipe in RECIPES:
        has_conv = loras[recipe.name].algorithms().get("locon", 0) > 0
        assert has_conv == (recipe.targets == "locon"), (recipe.name, recipe.targets)
    assert {r.targets for r in RECIPES} == {"locon", "attn_ff"}  # both kinds are checked above
    sidecar = json.loads((tmp_path / "loras" / "demo_stripes.json").read_text())
    assert sidecar["activation text"] == "lcstripes"
    assert json.loads(loras["demo_lcshape"].metadata["ss_tag_frequency"])["1_cross"]
    # a recipe with companions also trained on both looks with each companion held in the model
    green = next(r for r in RECIPES if r.name == "demo_green")
    folders = set(json.loads(loras["demo_green"].metadata["ss_dataset_dirs"]))
    assert folders == ({"1_green"} | {f"1_with_{c}" for c in green.companions}
                       | {f"1_words_{c}" for c in green.companions if c != "demo_lcshape"})  # lcshape names a shape


def test_recipes_train_after_their_companions():
    from dataclasses import replace

    from lora_core.demo.loras import RECIPES, training_order

    order = [r.name for r in training_order()]
    assert sorted(order) == sorted(r.name for r in RECIPES)
    for r in RECIPES:
        assert all(order.index(c) < order.index(r.name) for c in r.companions)
    looped = [replace(RECIPES[0], companions=(RECIPES[1].name,)), replace(RECIPES[1], companions=(RECIPES[0].name,))]
    with pytest.raises(ValueError, match="cycle"):
        training_order(looped)


def test_training_is_deterministic_for_a_seed(tmp_path):
    a = train_demo_model(tmp_path / "a", SMALL, FEW, data_dir=tmp_path / "cache", progress=False)
    b = train_demo_model(tmp_path / "b", SMALL, FEW, data_dir=tmp_path / "cache", progress=False)
    assert a["sha256"] == b["sha256"]
    sd = load_file(str(tmp_path / "a" / a["file"]))
    unet, te, vae = build_models(SMALL, seed=FEW.seed)
    fresh = sd1_state_dict(unet, vae, te, dtype=torch.float16)
    assert sd.keys() == fresh.keys()
    # trained: the UNet moved away from its initialisation
    assert not torch.equal(sd["model.diffusion_model.out.2.weight"], fresh["model.diffusion_model.out.2.weight"])


def test_tool_output_loads_through_the_app_and_its_loras_bind(tmp_path):
    """The checkpoint + configs load with lora_core.app.checkpoints, and every module of a LoRA
    trained on it resolves in a lora_core.targets Binding over the loaded model."""
    from lora_core.app.checkpoints import load_checkpoint
    from lora_core.formats import load_lora
    from lora_core.targets import Binding
    from lora_core.demo.loras import train_demo_loras

    manifest = train_demo_model(tmp_path, SMALL, FEW, data_dir=tmp_path / "cache", progress=False)
    ckpt = tmp_path / manifest["file"]
    loaded = load_checkpoint(ckpt, tmp_path / "cache", config_root=tmp_path / "configs")
    assert loaded.family == "sd1"
    assert loaded.components["vae"].config.scaling_factor == pytest.approx(manifest["vae_scaling_factor"])
    paths = train_demo_loras(ckpt, tmp_path / "configs", tmp_path / "loras", tmp_path / "work",
                             data_dir=tmp_path / "cache", steps=1, images=2, preview=False)
    binding = Binding.from_diffusers(loaded.components["unet"], [loaded.components["text_encoder"]])
    for path in paths:
        lora = load_lora(path)
        matched, unmatched = binding.match(lora)
        assert matched == len(lora.adapters) and unmatched == 0, path.name


def test_stage_two_keeps_the_latent_space_and_refines_decoder_and_unet(tmp_path):
    """Stage 2 (lora_core/demo/refine.py) trains the decoder with the encoder frozen, so the
    latents the UNet learned stay valid; the UNet moves; the result loads like any checkpoint."""
    from lora_core.app.checkpoints import load_checkpoint
    from lora_core.demo.model import sha256_file
    from lora_core.demo.refine import RefineSettings, refine_demo_model

    stage1 = train_demo_model(tmp_path / "s1", SMALL, FEW, data_dir=tmp_path / "cache", progress=False)
    src = tmp_path / "s1" / stage1["file"]
    few = RefineSettings(n_images=16, decoder_steps=3, decoder_batch=4, decoder_lr=1e-2, unet_steps=2,
                         unet_batch=4, warmup=1, parallel=False)
    manifest = refine_demo_model(src, tmp_path / "s1" / "configs", tmp_path / "s2", few, data_dir=tmp_path / "cache",
                                 progress=False, stage1=stage1)
    out = tmp_path / "s2" / manifest["file"]
    assert manifest["sha256"] == sha256_file(out) and manifest["stage2"]["from_sha256"] == sha256_file(src)
    assert manifest["seed"] == stage1["seed"] and manifest["stage2"]["settings"]["decoder_steps"] == 3
    before, after = load_file(str(src)), load_file(str(out))
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    for moved in ("first_stage_model.decoder.conv_out.weight", "model.diffusion_model.out.2.weight"):
        assert not torch.equal(before[moved], after[moved]), moved
    loaded = load_checkpoint(out, tmp_path / "cache", config_root=tmp_path / "s2" / "configs")
    assert list(loaded.components["unet"].config.block_out_channels) == list(SMALL.unet_channels)


def test_vae_recipe_options_train_on_extra_shapes_with_object_weighting(tmp_path):
    """--vae-object-weight / --vae-extra-shapes: the VAE sees the extra shape and its loss weights the
    object; without them the VAE trains on the base shapes with a plain loss."""
    from dataclasses import replace

    from lora_core.demo import model as demo_model

    seen = {}
    real = demo_model.train_vae

    def spy(vae, images, settings, generator, progress=True, timings=None, masks=None):
        seen.update(n=len(images), masks=masks, weight=settings.vae_object_weight)
        return real(vae, images, settings, generator, progress, timings, masks)

    few = replace(PLAIN, vae_object_weight=4.0, vae_extra_shapes=("cross",))
    demo_model.train_vae = spy
    try:
        weighted = train_demo_model(tmp_path / "w", SMALL, few, data_dir=tmp_path / "cache", progress=False)
    finally:
        demo_model.train_vae = real
    assert seen["weight"] == 4.0 and seen["masks"] is not None and seen["n"] == few.n_images
    assert seen["masks"].shape[1:] == (1, SMALL.size, SMALL.size) and 0 < float(seen["masks"].mean()) < 0.5
    import numpy as np

    from lora_core.demo.data.datasets import is_held_out
    from lora_core.demo.data.scenes import SHAPES, render_many

    images, masks = demo_model._vae_scenes(replace(few, n_images=40), SMALL.size)
    drawn = list(render_many(few.seed, 40, SMALL.size, shapes=SHAPES + ("cross",), exclude=is_held_out))
    assert any(r.scene.shape == "cross" for r in drawn)
    for i, r in enumerate(drawn):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), np.asarray(r.image))
        assert np.array_equal(masks[i, 0].numpy() > 0.5, r.mask)
    plain = train_demo_model(tmp_path / "p", SMALL, PLAIN, data_dir=tmp_path / "cache", progress=False)
    assert weighted["sha256"] != plain["sha256"]
    assert list(weighted["settings"]["vae_extra_shapes"]) == ["cross"] and plain["settings"]["vae_object_weight"] == 0.0


def test_vae_styled_fraction_adds_striped_and_checkered_scenes():
    """--vae-styled-fraction: that share of the VAE's scenes is drawn striped / checkered (half each),
    the rest plain; 0 leaves the plain scenes alone."""
    from dataclasses import replace

    import numpy as np

    from lora_core.demo.data import stripe_score
    from lora_core.demo import model as demo_model

    base = replace(PLAIN, n_images=40, vae_object_weight=4.0)
    plain, plain_masks = demo_model._vae_scenes(base, SMALL.size)
    styled, masks = demo_model._vae_scenes(replace(base, vae_styled_fraction=0.5), SMALL.size)
    assert styled.shape == plain.shape and masks.shape[0] == 40
    assert np.array_equal(styled[:20].numpy(), plain[:20].numpy())  # the plain part: the same first scenes

    def striped(t, m):
        return stripe_score(t.permute(1, 2, 0).numpy(), m[0].numpy() > 0) > 10.0

    assert sum(striped(t, m) for t, m in zip(plain, plain_masks)) == 0
    assert sum(striped(t, m) for t, m in zip(styled[20:30], masks[20:30])) >= 8  # the striped ten
    assert sum(striped(t, m) for t, m in zip(styled[30:], masks[30:])) <= 2  # the checkered ten: plain backgrounds


def test_partial_captions_name_a_subset_of_the_scene():
    from lora_core.demo.data.scenes import Scene

    one = Scene("square", "white", "large", "left", "black")
    parts = one.partial_captions()
    assert "a white square, on the left" in parts and all(p != one.caption() for p in parts)
    for p in parts:  # only words of the scene itself
        assert set(p.replace(",", "").split()) <= set(one.caption().replace(",", "").split()) | {"a", "an"}
    two = Scene("star", "red", "small", "center", "orange", count=2)
    assert "two red stars" in two.partial_captions()


def test_partial_caption_rate_trains_on_partial_captions(tmp_path):
    """--partial-captions: the UNet also sees the shorter captions (they are tokenised and drawn),
    which changes the weights; rate 0 gives the full-caption recipe's file bit for bit."""
    from dataclasses import replace

    from lora_core.app import clip_tokenizer
    from lora_core.demo import model as demo_model

    seen = []
    real_load = clip_tokenizer.load_clip_tokenizer

    def spying_loader(*a, **k):
        tok = real_load(*a, **k)
        real_call = tok.__call__

        class Spy(type(tok)):
            def __call__(self, text, *args, **kw):
                if isinstance(text, list):
                    seen.append(list(text))
                return real_call(text, *args, **kw)

        tok.__class__ = Spy
        return tok

    import lora_core.app.clip_tokenizer as ct
    ct.load_clip_tokenizer = spying_loader
    try:
        partial = train_demo_model(tmp_path / "p", SMALL, replace(PLAIN, partial_caption_rate=0.5),
                                   data_dir=tmp_path / "cache", progress=False)
    finally:
        ct.load_clip_tokenizer = real_load
    # a full caption always names the background; some partial ones do not
    assert any(any(t.startswith("a ") and "background" not in t for t in batch) for batch in seen)
    plain = train_demo_model(tmp_path / "f", SMALL, PLAIN, data_dir=tmp_path / "cache", progress=False)
    again = train_demo_model(tmp_path / "g", SMALL, replace(PLAIN, partial_caption_rate=0.0),
                             data_dir=tmp_path / "cache", progress=False)
    assert plain["sha256"] == again["sha256"] != partial["sha256"]
    assert partial["settings"]["partial_caption_rate"] == 0.5
