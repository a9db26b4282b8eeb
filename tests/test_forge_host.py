"""lora_core in the stand-in started as Forge, on a Forge-shaped tiny SD1 engine (tiny_forge.py):
`shared.sd_model` is an engine object (not a torch module) whose UNet / text encoder live in
`forge_objects`, layers are not nn.Linear, and Forge's own LoRA merges by swapping Parameters.
Tags patch by W0 + w·ΔW, no tag restores bit for bit, a checkpoint reload (new engine) re-binds,
and Forge's own LoRA never stacks with ours nor leaks merged weights into the base."""
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "a1111_standin"))
import tiny_forge  # noqa: E402
import tiny_ldm  # noqa: E402
import webui_harness  # noqa: E402

TE_Q = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
UNET_Q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
UNET_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
UNET_FF = "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.ff.net.2.weight"


@pytest.fixture(params=[True, False], ids=["builtin-enabled", "builtin-disabled"])
def forge(request, tmp_path):
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    deltas = tiny_ldm.write_kohya_lora(lora_dir / "x.safetensors", seed=1)
    deltas_y = tiny_ldm.write_kohya_lora(lora_dir / "y.safetensors", seed=2, modules=[tiny_ldm.SD1_LINEARS[0][0]])
    w = webui_harness.launch(tmp_path, forge=True, builtin=request.param, checkpoints=[
        ("ckpt_a", "sd1", tiny_forge.builder, tiny_ldm.checkpoint(10)),
        ("ckpt_b", "sd1", tiny_forge.builder, tiny_ldm.checkpoint(20)),
    ])
    w.deltas, w.deltas_y = deltas, deltas_y
    w.forge_deltas = {k: torch.full_like(v, 0.125) for k, v in deltas.items()}  # "Forge's own" LoRA
    yield w
    w.close()


def generate(w, prompt, n_iter=1):
    """A generation as Forge runs it; returns [(image, weights seen by the sampler)] and p."""
    p = w.m.processing.StableDiffusionProcessing(prompt, n_iter=n_iter)

    def sample(p):
        image = tiny_forge.sample(p.sd_model)
        return image, tiny_forge.ldm_weights(p.sd_model, p.sd_model.forge_objects)

    return w.m.processing.process_images(p, sample=sample), p


def engine(w):
    return w.m.shared.sd_model


def base(w):
    return tiny_forge.ldm_weights(engine(w))


def assert_bit_exact(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_patched(seen, w0, deltas, m=1.0):
    for k in w0:
        expected = w0[k] + m * deltas[k] if k in deltas else w0[k]
        torch.testing.assert_close(seen[k], expected, rtol=1e-5, atol=1e-5, msg=k)


def test_starts_as_forge(forge):
    w = forge
    sd_model = engine(w)
    assert isinstance(sd_model, tiny_forge.TinyForgeSD1) and not isinstance(sd_model, torch.nn.Module)
    assert not any(isinstance(m, torch.nn.Linear) for m in sd_model.forge_objects.unet.model.modules())
    assert w.m.errors.recorded == []
    assert w.m.sd_models.load_model() is None  # Forge's stubs (wrapped by our guard)
    assert type(w.m.extra_networks.extra_network_registry["lora"]).__name__ == "LoraCoreNetwork"


def test_tag_patches_and_no_tag_restores_bit_for_bit(forge):
    w = forge
    w0 = base(w)
    plain, _ = generate(w, "a cat")
    seen, p = generate(w, "a cat <lora:x:0.7>", n_iter=2)
    for image, weights in seen:
        assert_patched(weights, w0, w.deltas, 0.7)
        assert not torch.equal(image, plain[0][0])
    assert not torch.equal(seen[0][1][UNET_Q], w0[UNET_Q]) and not torch.equal(seen[0][1][TE_Q], w0[TE_Q])
    assert p.comments == {} and "Lora hashes" in p.extra_generation_params
    again, _ = generate(w, "a cat")
    assert torch.equal(again[0][0], plain[0][0])
    assert_bit_exact(again[0][1], w0)
    assert_bit_exact(base(w), w0)
    if "lora_script.py" in w.scripts:
        assert not [c for c in w.scripts["lora_script.py"].calls if c[0] == "activate"]


def test_stacking_and_te_unet_weights(forge):
    w = forge
    w0 = base(w)
    seen, _ = generate(w, "<lora:y:1> <lyco:x:0.25>")
    combined = {k: w.deltas_y.get(k, 0) + 0.25 * w.deltas.get(k, 0) for k in set(w.deltas) | set(w.deltas_y)}
    assert_patched(seen[0][1], w0, combined)
    seen, _ = generate(w, "<lora:x:0.5:unet=1.5>")
    torch.testing.assert_close(seen[0][1][TE_Q], w0[TE_Q] + 0.5 * w.deltas[TE_Q], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0][1][UNET_Q], w0[UNET_Q] + 1.5 * w.deltas[UNET_Q], rtol=1e-5, atol=1e-5)
    seen, _ = generate(w, "<lora:x:0.5:0>")
    assert torch.equal(seen[0][1][UNET_Q], w0[UNET_Q])
    generate(w, "")
    assert_bit_exact(base(w), w0)


def test_lbw_block_weights(forge):
    w = forge
    w0 = base(w)
    lbw = ["1"] * 26
    lbw[0], lbw[2], lbw[16] = "0.5", "2", "0"  # BASE (text encoder), IN01, OUT02
    seen, p = generate(w, f"<lora:x:1:lbw={','.join(lbw)}>")
    weights = seen[0][1]
    torch.testing.assert_close(weights[TE_Q], w0[TE_Q] + 0.5 * w.deltas[TE_Q], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights[UNET_Q], w0[UNET_Q] + 2 * w.deltas[UNET_Q], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights[UNET_K], w0[UNET_K] + 2 * w.deltas[UNET_K], rtol=1e-5, atol=1e-5)
    assert torch.equal(weights[UNET_FF], w0[UNET_FF])
    generate(w, "")
    assert_bit_exact(base(w), w0)


def test_checkpoint_reload_builds_a_new_engine_and_rebinds(forge):
    w = forge
    old = engine(w)
    w0_old = base(w)
    generate(w, "<lora:x:1>")  # merged and kept (keep_applied default)
    w.m.sd_models.model_data.forge_loading_parameters = {"checkpoint_info": w.m.sd_models.checkpoints_list["ckpt_b"]}
    seen, _ = generate(w, "<lora:x:0.5>")  # Forge reloads at the start of the batch
    new = engine(w)
    assert new is not old
    assert_bit_exact(tiny_forge.ldm_weights(old), w0_old)  # the dropped engine was cleaned
    w0_new = {k: v for k, v in tiny_ldm.checkpoint(20)().items() if k in w0_old}
    assert_patched(seen[0][1], w0_new, w.deltas, 0.5)
    seen, _ = generate(w, "plain")
    assert_bit_exact(seen[0][1], w0_new)


def _forge_merges(w, deltas, strength=1.0):
    """Forge's own LoRA code merges `deltas` (as sd_forge_lora would for its tag): patchers
    cloned with patches, merged when the sampler loads them."""
    sd_model = engine(w)
    tiny_forge.forge_builtin_lora(sd_model, deltas, strength)
    sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
    tiny_forge.sample(sd_model)
    assert sd_model.forge_objects_original.unet.model.lora_loader.backup  # merged: Parameters swapped


def _forge_restores(w):
    """Forge's own LoRA code with no LoRA asked: the original patchers are loaded again and the
    loader puts its backups back."""
    sd_model = engine(w)
    tiny_forge.forge_builtin_lora(sd_model, None)
    sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
    tiny_forge.sample(sd_model)


def test_forge_lora_merged_before_our_tag_is_undone_first(forge, caplog):
    w = forge
    w0 = base(w)
    original_params = {n: id(t) for n, t in engine(w).forge_objects_original.unet.model.named_parameters()}
    _forge_merges(w, w.forge_deltas)
    assert_patched(base(w), w0, w.forge_deltas)  # Forge's LoRA is in the model now
    with caplog.at_level(logging.WARNING, logger="lora_core"):
        seen, p = generate(w, "<lora:x:1>")
    assert_patched(seen[0][1], w0, w.deltas)  # ours only: Forge's merge was undone before ours
    assert any("Forge's built-in LoRA" in r.getMessage() for r in caplog.records)
    loader = engine(w).forge_objects_original.unet.model.lora_loader
    assert loader.backup == {} and engine(w).current_lora_hash == str([])
    assert {n: id(t) for n, t in engine(w).forge_objects_original.unet.model.named_parameters()} == original_params
    seen, _ = generate(w, "<lora:x:1>")  # the next batch does not bring Forge's merge back
    assert_patched(seen[0][1], w0, w.deltas)
    seen, _ = generate(w, "")
    assert_bit_exact(seen[0][1], w0)
    assert_bit_exact(base(w), w0)


def test_ours_then_forge_merge_and_restore_then_our_restore(forge):
    """Our edit is in the original Parameters; Forge's merge puts temporary copies in the model
    and its restore puts the originals back: our restore must land in the base, exactly."""
    w = forge
    w0 = base(w)
    generate(w, "<lora:x:1>")
    _forge_merges(w, w.forge_deltas)
    combined = {k: w.deltas[k] + w.forge_deltas[k] for k in w.deltas}
    assert_patched(base(w), w0, combined)  # Forge merged on top of our (kept) merge
    _forge_restores(w)
    assert_patched(base(w), w0, w.deltas)
    seen, _ = generate(w, "no lora")
    assert_bit_exact(seen[0][1], w0)
    assert_bit_exact(base(w), w0)
    assert engine(w).forge_objects_original.unet.model.lora_loader.backup == {}


def test_no_tag_while_forge_merged_then_forge_restores(forge):
    """Ours applied, Forge merges, then a request without tags (ours restores while Forge's
    temporary Parameters are in the model), then Forge restores: the base ends at W0."""
    w = forge
    w0 = base(w)
    generate(w, "<lora:x:1>")
    _forge_merges(w, w.forge_deltas)
    p = w.m.processing.StableDiffusionProcessing("plain")
    w.m.extra_networks.activate(p, {})
    _forge_restores(w)
    assert_bit_exact(base(w), w0)
    seen, _ = generate(w, "<lora:x:0.5>")
    assert_patched(seen[0][1], w0, w.deltas, 0.5)
    generate(w, "")
    assert_bit_exact(base(w), w0)


def test_ours_then_forge_merge_then_our_new_tag(forge):
    """A new tag of ours while Forge's merge is in the model: Forge's is undone, ours re-applied
    to the originals; one LoRA in effect, and W0 at the end."""
    w = forge
    w0 = base(w)
    generate(w, "<lora:x:1>")
    _forge_merges(w, w.forge_deltas)
    seen, _ = generate(w, "<lora:y:1>")
    assert_patched(seen[0][1], w0, w.deltas_y)
    generate(w, "")
    assert_bit_exact(base(w), w0)


def test_binding_made_while_forge_merged_is_renewed(forge):
    """The tab's details bind the engine while Forge's temporary Parameters are in the model; the
    next tag must patch the Parameters that are in the model after Forge's merge is undone."""
    w = forge
    w0 = base(w)
    _forge_merges(w, w.forge_deltas)
    matched, _ = w.host.match_counts(w.host.library().find("x").path)
    assert matched == len(w.deltas)
    seen, _ = generate(w, "<lora:x:1>")
    assert_patched(seen[0][1], w0, w.deltas)
    generate(w, "")
    assert_bit_exact(base(w), w0)


class _NoUnet:
    """A Forge engine whose forge_objects lack the UNet patcher (an unknown Forge version)."""

    def __init__(self, real):
        self.forge_objects = self.forge_objects_original = self.forge_objects_after_applying_lora = \
            tiny_forge.ForgeObjects(None, real.forge_objects_original.clip, None, None)
        self.current_lora_hash = str([])
        self.is_sd1 = True


@pytest.mark.parametrize("model", ["no_unet", "no_parameters"])
def test_unknown_model_object_logs_once_and_comments(forge, caplog, model):
    w = forge
    if model == "no_unet":
        w.m.shared.sd_model = _NoUnet(engine(w))
    else:
        w.m.shared.sd_model.forge_objects_original.unet.model = object()  # no named_parameters
    records = []
    with caplog.at_level(logging.DEBUG, logger="lora_core"):
        for prompt in ("<lora:x:1>", "<lora:y:0.5>", "<lora:x:1>"):
            p = w.m.processing.StableDiffusionProcessing(prompt)
            w.m.extra_networks.activate(p, w.m.extra_networks.parse_prompt(prompt)[1])  # no exception
            records.append(p.comments)
    assert w.m.errors.recorded == []  # nothing escaped to the webui
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert sum(1 for r in caplog.records if r.exc_info) <= 1
    for comments in records:
        assert any(c.startswith("LoRA tags ignored: ") and "Forge" in c for c in comments), comments


def test_stale_forge_merge_is_undone_by_a_request_without_tags(forge):
    """Forge's own LoRA left merged (by code other than a tag we handle): a plain request must
    not carry it, since with lora_core installed only lora_core applies LoRAs."""
    w = forge
    w0 = base(w)
    _forge_merges(w, w.forge_deltas)
    seen, _ = generate(w, "plain")
    assert_bit_exact(seen[0][1], w0)
    assert_bit_exact(base(w), w0)


def _swap_parameters(module, inference=False):
    """Forge moving weights between devices in its low-VRAM path: every Parameter replaced by a
    new object with the same content (`m.weight = tensor2parameter(m.weight.to(device))`).
    `inference`: the new ones made under torch.inference_mode(), as Forge loads its models."""
    for name, param in list(module.named_parameters()):
        if inference:
            with torch.inference_mode():
                new = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
        else:
            new = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
        tiny_forge._set_attr(module, name, new)


def test_parameters_swapped_while_patched_keep_exact_w0(forge):
    """Our merge is in the model, then the webui replaces the Parameter objects by copies (which
    carry the merged values): the next request must put W0 into the new objects, not take the
    merged values for W0."""
    w = forge
    w0 = base(w)
    generate(w, "<lora:x:1>")
    objects = engine(w).forge_objects_original
    _swap_parameters(objects.unet.model)
    _swap_parameters(objects.clip.cond_stage_model)
    seen, _ = generate(w, "<lora:x:0.5>")
    assert_patched(seen[0][1], w0, w.deltas, 0.5)
    seen, _ = generate(w, "")
    assert_bit_exact(seen[0][1], w0)
    assert_bit_exact(base(w), w0)


def test_inference_tensors_are_patched_and_restored(forge):
    """Forge creates its weights under torch.inference_mode(); in-place writes to them are only
    allowed inside it, on every thread that writes (the patcher uses worker threads)."""
    w = forge
    objects = engine(w).forge_objects_original
    _swap_parameters(objects.unet.model, inference=True)
    _swap_parameters(objects.clip.cond_stage_model, inference=True)
    assert next(objects.unet.model.parameters()).is_inference()
    w0 = base(w)
    seen, p = generate(w, "<lora:x:1> <lora:y:0.5>")
    expected = {k: w.deltas[k] + 0.5 * w.deltas_y.get(k, torch.zeros_like(w.deltas[k])) for k in w.deltas}
    assert_patched(seen[0][1], w0, expected)
    assert p.comments == {}
    seen, _ = generate(w, "")
    assert_bit_exact(seen[0][1], w0)
