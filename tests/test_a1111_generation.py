"""Generations through the A1111 stand-in on a tiny SD1 model with A1111's LDM parameter names:
`<lora:x:w>` patches the live weights by W0 + w·ΔW, no tag / deactivate restores them bit for
bit, checkpoint switches never leave stale deltas, and the `Lora hashes` infotext round-trips."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "a1111_standin"))
import tiny_ldm  # noqa: E402
import webui_harness  # noqa: E402

TE_Q = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
UNET_Q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"


@pytest.fixture
def webui(tmp_path):
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    deltas = tiny_ldm.write_kohya_lora(lora_dir / "x.safetensors", seed=1)
    deltas_y = tiny_ldm.write_kohya_lora(lora_dir / "y.safetensors", seed=2, modules=[tiny_ldm.SD1_LINEARS[0][0]])
    tiny_ldm.write_kohya_lora(lora_dir / "style" / "z_v2.safetensors", seed=3, output_name="zed")
    w = webui_harness.launch(tmp_path, checkpoints=[
        ("ckpt_a", "sd1", tiny_ldm.TinySD1, tiny_ldm.checkpoint(10)),
        ("ckpt_b", "sd1", tiny_ldm.TinySD1, tiny_ldm.checkpoint(20)),
    ])
    w.deltas, w.deltas_y = deltas, deltas_y
    yield w
    w.close()


def addnet_short(path: Path) -> str:
    """Independent oracle: A1111's Lora short hash, sha256 of the bytes after the header."""
    import hashlib
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()[:12]


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def generate(w, prompt, n_iter=1):
    """Runs a generation; returns the weights the sampler saw, per batch, and p."""
    p = w.m.processing.StableDiffusionProcessing(prompt, n_iter=n_iter)
    seen = w.m.processing.process_images(p, sample=lambda p: weights(w.m.shared.sd_model))
    return seen, p


def assert_bit_exact(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_patched(seen, w0, deltas, m):
    for k in w0:
        expected = w0[k] + m * deltas[k] if k in deltas else w0[k]
        torch.testing.assert_close(seen[k], expected, rtol=1e-5, atol=1e-5, msg=k)


def test_tag_patches_and_no_tag_restores_bit_for_bit(webui):
    w = webui
    w0 = weights(w.m.shared.sd_model)
    seen, p = generate(w, "a cat <lora:x:0.7>", n_iter=2)
    for batch in seen:
        assert_patched(batch, w0, w.deltas, 0.7)
    assert not torch.equal(seen[0][UNET_Q], w0[UNET_Q]) and not torch.equal(seen[0][TE_Q], w0[TE_Q])
    assert p.prompts == ["a cat "]
    seen, _ = generate(w, "a cat")
    assert_bit_exact(seen[0], w0)
    assert_bit_exact(weights(w.m.shared.sd_model), w0)


def test_deactivate_restores_when_keep_applied_is_off(webui):
    w = webui
    w.m.script_callbacks.ui_settings_callback()
    w.m.shared.opts.lora_core_keep_applied = False
    w0 = weights(w.m.shared.sd_model)
    seen, _ = generate(w, "<lora:x:1>")
    assert_patched(seen[0], w0, w.deltas, 1.0)
    assert_bit_exact(weights(w.m.shared.sd_model), w0)  # after deactivate


def test_keep_applied_default_keeps_the_merge_until_the_next_generation(webui):
    w = webui
    w0 = weights(w.m.shared.sd_model)
    generate(w, "<lora:x:1>")
    assert_patched(weights(w.m.shared.sd_model), w0, w.deltas, 1.0)


def test_changing_stack_between_generations(webui):
    w = webui
    w0 = weights(w.m.shared.sd_model)
    generate(w, "<lora:x:0.5>")
    seen, _ = generate(w, "<lora:y:1> <lyco:x:0.25>")
    combined = {k: w.deltas_y.get(k, 0) + 0.25 * w.deltas.get(k, 0) for k in set(w.deltas) | set(w.deltas_y)}
    assert_patched(seen[0], w0, combined, 1.0)


def test_te_and_unet_weights_come_from_the_tag_arguments(webui):
    w = webui
    w0 = weights(w.m.shared.sd_model)
    seen, _ = generate(w, "<lora:x:0.5:unet=1.5>")
    torch.testing.assert_close(seen[0][TE_Q], w0[TE_Q] + 0.5 * w.deltas[TE_Q], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0][UNET_Q], w0[UNET_Q] + 1.5 * w.deltas[UNET_Q], rtol=1e-5, atol=1e-5)
    seen, _ = generate(w, "<lora:x:0.5:0>")  # positional unet weight 0
    torch.testing.assert_close(seen[0][TE_Q], w0[TE_Q] + 0.5 * w.deltas[TE_Q], rtol=1e-5, atol=1e-5)
    assert torch.equal(seen[0][UNET_Q], w0[UNET_Q])


def test_lora_hashes_infotext_round_trip_and_paste_resolves_renamed_file(webui):
    w = webui
    seen, p = generate(w, "a cat <lora:x:0.7>")
    short = addnet_short(Path(w.m.shared.cmd_opts.lora_dir) / "x.safetensors")
    assert p.extra_generation_params["Lora hashes"] == f"x: {short}"
    text = w.m.infotext_utils.create_infotext(p, "a cat <lora:x:0.7>")
    assert f'Lora hashes: "x: {short}"' in text

    # The user renames x -> renamed; pasting the old infotext must point at the renamed file.
    lora_dir = Path(w.m.shared.cmd_opts.lora_dir)
    (lora_dir / "x.safetensors").rename(lora_dir / "renamed.safetensors")
    w.host.refresh()
    assert w.host.library().wait_for_hashes(30)
    params = w.m.infotext_utils.parse_generation_parameters(text)
    assert params["Prompt"] == "a cat <lora:renamed:0.7>"
    assert params["Lora hashes"] == f"x: {short}"


def test_lora_hashes_use_the_name_as_written(webui):
    w = webui
    _, p = generate(w, "<lora:zed:1> <lora:x:0.5>")  # zed: the training output name (alias) of z_v2
    lora_dir = Path(w.m.shared.cmd_opts.lora_dir)
    assert w.host.library().find("zed").name == "z_v2"
    z, x = addnet_short(lora_dir / "style" / "z_v2.safetensors"), addnet_short(lora_dir / "x.safetensors")
    assert p.extra_generation_params["Lora hashes"] == f"zed: {z}, x: {x}"


def test_missing_lora_is_reported_and_changes_nothing(webui):
    w = webui
    w0 = weights(w.m.shared.sd_model)
    seen, p = generate(w, "a cat <lora:nope:1>")
    assert_bit_exact(seen[0], w0)
    assert any("nope" in c for c in p.comments)
    assert "Lora hashes" not in p.extra_generation_params
    assert w.m.errors.recorded == []


def test_checkpoint_switch_in_place_leaves_no_stale_deltas(webui):
    w = webui
    model = w.m.shared.sd_model
    generate(w, "<lora:x:1>")  # merged and kept (keep_applied default)
    info_b = w.m.sd_models.checkpoints_list["ckpt_b"]
    w.m.sd_models.reload_model_weights(info=info_b)
    assert w.m.shared.sd_model is model  # loaded in place, like the webui does
    w_b = weights(model)
    assert_bit_exact(w_b, tiny_ldm.checkpoint(20)())
    seen, _ = generate(w, "<lora:x:0.5>")
    assert_patched(seen[0], w_b, w.deltas, 0.5)
    seen, _ = generate(w, "no lora")
    assert_bit_exact(seen[0], w_b)


def test_checkpoint_switch_to_new_object_restores_the_old_one(webui):
    w = webui
    old = w.m.shared.sd_model
    w0 = weights(old)
    generate(w, "<lora:x:1>")
    w.m.sd_models.load_model(w.m.sd_models.checkpoints_list["ckpt_b"])
    assert w.m.shared.sd_model is not old
    assert_bit_exact(weights(old), w0)  # a model the webui may keep cached is clean again
    new_w0 = weights(w.m.shared.sd_model)
    seen, _ = generate(w, "<lora:x:1>")
    assert_patched(seen[0], new_w0, w.deltas, 1.0)


def test_unguarded_in_place_reload_drops_backups_instead_of_writing_them(webui):
    """If something reloads weights behind our back, the next restore must not write the old
    checkpoint's W0 into the new weights."""
    w = webui
    model = w.m.shared.sd_model
    generate(w, "<lora:x:1>")
    model.load_state_dict(tiny_ldm.checkpoint(20)())  # not through sd_models
    w.m.script_callbacks.model_loaded_callback(model)
    seen, _ = generate(w, "plain")
    assert_bit_exact(seen[0], tiny_ldm.checkpoint(20)())


def test_script_unload_restores_the_model(webui):
    w = webui
    w0 = weights(w.m.shared.sd_model)
    generate(w, "<lora:x:1>")
    w.m.script_callbacks.script_unloaded_callback()
    assert_bit_exact(weights(w.m.shared.sd_model), w0)


def test_reload_ui_restores_then_the_reloaded_script_takes_over(webui):
    """'Reload UI': script_unloaded callbacks, callbacks cleared, scripts executed again."""
    w = webui
    m = w.m
    model = m.shared.sd_model
    w0 = weights(model)
    original_reload = m.sd_models.reload_model_weights.__lora_core_guarded__
    generate(w, "<lora:x:1>")
    m.script_callbacks.script_unloaded_callback()
    assert_bit_exact(weights(model), w0)
    m.script_callbacks.clear_callbacks()
    m.extra_networks.initialize()
    m.ui_extra_networks.initialize()
    m.scripts.load_scripts([], [str(webui_harness.REPO)])
    m.script_callbacks.model_loaded_callback(model)
    m.script_callbacks.before_ui_callback()
    assert m.sd_models.reload_model_weights.__lora_core_guarded__ is original_reload  # not wrapped twice
    seen, _ = generate(w, "<lora:x:0.5>")
    assert_patched(seen[0], w0, w.deltas, 0.5)
    seen, _ = generate(w, "")
    assert_bit_exact(seen[0], w0)


def test_details_count_matched_modules_before_any_generation(webui):
    """A1111 loads its checkpoint at start-up: the tab's details must count modules against it
    without waiting for a first generation to bind the engine, and binding changes no weight."""
    w0 = weights(webui.m.shared.sd_model)
    lora = webui.host.library().find("x")
    matched, unmatched = webui.host.match_counts(lora.path)
    assert matched == len(webui.deltas) and unmatched == 0
    assert_bit_exact(weights(webui.m.shared.sd_model), w0)
    webui.m.shared.sd_model = None
    assert webui.host.match_counts(lora.path) is None


def test_the_webuis_per_generation_reload_call_costs_an_unchanged_stack_nothing(webui, monkeypatch):
    """A1111 calls sd_models.reload_model_weights() before every generation; for the loaded
    checkpoint it returns at once. The guard must not restore then, or every request re-applies
    its LoRAs (measured in the real A1111: +0.6 s per request for an unchanged stack)."""
    w = webui
    generate(w, "a <lora:x:1>")
    engine = w.host._engine
    restores = []
    real_restore = engine.patcher.restore
    monkeypatch.setattr(engine.patcher, "restore", lambda *a, **k: (restores.append(1), real_restore(*a, **k))[1])
    generate(w, "a <lora:x:1>")
    assert restores == []
    assert w.host._engine is engine and w.host._patched
