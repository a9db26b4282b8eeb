"""The LoRA trainer on tiny SD1-layout models: kohya names, learning, output file, Ctrl-C.

Oracles from other code: diffusers' `convert_state_dict_to_kohya` for the key names (from a PEFT
LoRA on the same layers), PEFT's own LoRA forward for the module semantics (incl. LoCon 3x3
convs), and lora_core.formats.load_lora reading the file back.
"""
import copy
import json

import pytest
import torch

from lora_core.demo.data import BASE
from lora_core.train import (Components, LoRANetwork, NetworkSpec, TrainConfig, build_metadata, find_targets,
                             save_lora_file, scan_folder, train_lora)
from lora_core.train.network import merged_forward_check
from train.tiny_parts import one_torch_thread, tiny_parts

RES = 16  # 16x16 pixels -> 8x8 latents with the 2-level test VAE


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    BASE.write(root, seed=0, n=4, repeats=2, size=RES)
    return scan_folder(root, trigger="lctest")


def _train(parts, dataset, **kw):
    """Train with small defaults; the caller must `_remove(result)` (the network wraps `parts`)."""
    net_kw = {k: kw.pop(k) for k in ("rank", "alpha", "targets", "train_te", "conv_rank", "conv_alpha") if k in kw}
    spec = NetworkSpec(**{"rank": 4, "alpha": 2.0, **net_kw})
    config = TrainConfig(network=spec, resolution=RES, **{"lr": 1e-3, "steps": 3, "seed": 0, **kw})
    return config, train_lora(Components.from_dict(parts), dataset, config, progress=False)


def _remove(result):
    result.network.remove()


# ------------------------------------------------------------------------------- names
def test_kohya_names_match_diffusers_conversion_of_a_peft_lora(parts):
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = copy.deepcopy(parts["unet"])
    for targets in ("attn_ff", "locon"):
        spec = NetworkSpec(rank=2, alpha=2, targets=targets)
        ours = {name for name, _, _ in find_targets(unet, "lora_unet", spec)}
        paths = [n for n, m in unet.named_modules() if ("lora_unet." + n).replace(".", "_") in ours]
        model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=paths), copy.deepcopy(unet))
        peft_sd = {"unet." + k: v for k, v in get_peft_model_state_dict(model).items()}
        theirs = {k.split(".")[0] for k in convert_state_dict_to_kohya(peft_sd)}
        assert theirs == ours


def test_which_layers_are_targeted(parts):
    unet, te = parts["unet"], parts["text_encoder"]
    attn_ff = {n for n, _, _ in find_targets(unet, "lora_unet", NetworkSpec(targets="attn_ff"))}
    # kohya's default: every Linear / 1x1 conv inside the transformer blocks; 12 per attention
    # (proj_in, proj_out, attn1/attn2 q k v out, ff.net.0.proj, ff.net.2) x 4 attentions
    assert len(attn_ff) == 48
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in attn_ff
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in attn_ff
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj" in attn_ff
    assert "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn1_to_out_0" in attn_ff
    attn = {n for n, _, _ in find_targets(unet, "lora_unet", NetworkSpec(targets="attn"))}
    assert len(attn) == 32 and attn < attn_ff and not any("proj_in" in n or "ff_net" in n for n in attn)
    locon = {n: conv for n, _, conv in find_targets(unet, "lora_unet", NetworkSpec(targets="locon"))}
    assert attn_ff < set(locon)
    assert locon["lora_unet_down_blocks_0_resnets_0_conv1"] is True
    assert locon["lora_unet_down_blocks_0_downsamplers_0_conv"] is True
    assert locon["lora_unet_up_blocks_0_upsamplers_0_conv"] is True
    assert locon["lora_unet_up_blocks_0_resnets_0_conv_shortcut"] is False  # 1x1: network rank
    assert locon["lora_unet_down_blocks_0_resnets_0_time_emb_proj"] is False
    assert not any("conv_in" in n or "conv_out" in n or "time_embedding" in n for n in locon)
    te_names = {n for n, _, _ in find_targets(te, "lora_te", NetworkSpec())}
    assert te_names == {f"lora_te_text_model_encoder_layers_0_{p}" for p in
                        ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                         "mlp_fc1", "mlp_fc2")}


def test_locon_modules_match_peft_forward_and_merged_weight(parts):
    """A LoCon network with non-zero up weights: UNet output equals PEFT's LoRA with the same
    factors, and each module's output equals its layer with ΔW merged in."""
    from peft import LoraConfig, inject_adapter_in_model

    unet = copy.deepcopy(parts["unet"])
    net = LoRANetwork(unet, None, NetworkSpec(rank=2, alpha=1.0, targets="locon", conv_rank=3, conv_alpha=6.0), seed=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in net.loras.values():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.1)
    paths = {("lora_unet." + n).replace(".", "_"): n for n, _ in unet.named_modules()}
    peft_unet = copy.deepcopy(unet)
    ranks = {paths[k]: m.rank for k, m in net.loras.items()}
    alphas = {paths[k]: float(m.alpha) for k, m in net.loras.items()}
    cfg = LoraConfig(r=2, lora_alpha=1.0, target_modules=list(ranks), rank_pattern=ranks, alpha_pattern=alphas)
    peft_unet = inject_adapter_in_model(cfg, peft_unet)
    mods = dict(peft_unet.named_modules())
    with torch.no_grad():
        for k, m in net.loras.items():
            layer = mods[paths[k]]
            layer.lora_A["default"].weight.copy_(m.lora_down.weight)
            layer.lora_B["default"].weight.copy_(m.lora_up.weight)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=ctx).sample
        net.apply_to()
        ours = unet(x, t, encoder_hidden_states=ctx).sample
        theirs = peft_unet(x, t, encoder_hidden_states=ctx).sample
    assert not torch.allclose(base, ours, atol=1e-4)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    conv = net.loras["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.lora_down.weight.shape[1:] == (16, 3, 3) and conv.lora_up.weight.shape[2:] == (1, 1)
    xin = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(conv._base(xin), merged_forward_check(conv, xin), atol=1e-5, rtol=1e-4)
    net.remove()
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=ctx).sample, base)


# ----------------------------------------------------------------------------- training
def test_loss_goes_down(parts, dataset):
    # batches of 4 keep the step-to-step noise of the diffusion loss small enough to compare
    config, result = _train(parts, dataset, steps=30, lr=1e-2, batch_size=4, targets="locon", train_te=False)
    try:
        losses = result.losses
        assert len(losses) == 30 and result.steps == 30 and not result.interrupted
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < first * 0.85, (first, last)
        assert any(float(m.lora_up.weight.detach().abs().max()) > 0 for m in result.network.loras.values())
    finally:
        _remove(result)


def test_same_seed_same_lora_and_base_untouched(parts, dataset):
    before = {k: v.clone() for k, v in parts["unet"].state_dict().items()}
    _, a = _train(parts, dataset, seed=7)
    sd_a = a.network.kohya_state_dict()
    _remove(a)
    _, b = _train(parts, dataset, seed=7)
    sd_b = b.network.kohya_state_dict()
    _remove(b)
    _, c = _train(parts, dataset, seed=8)
    sd_c = c.network.kohya_state_dict()
    _remove(c)
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert a.losses == b.losses and a.losses != c.losses
    after = parts["unet"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_v_prediction_scheduler_and_bf16_train(tmp_path, dataset):
    vparts = tiny_parts(tmp_path, seed=1, prediction_type="v_prediction")
    _, result = _train(vparts, dataset, steps=2, train_te=False, dtype="bf16")
    assert result.prediction_type == "v_prediction" and len(result.losses) == 2
    assert all(loss == loss and loss < 100 for loss in result.losses)  # finite
    assert {p.dtype for p in result.network.parameters()} == {torch.float32}  # LoRA weights stay fp32
    _remove(result)


# ------------------------------------------------------------------------------- output
def _load(path):
    from lora_core.formats import load_lora

    return load_lora(path)


def test_output_file_loads_with_kohya_keys_and_metadata(parts, dataset, tmp_path):
    config, result = _train(parts, dataset, steps=4, rank=4, alpha=2.0, lr=1e-2)
    try:
        meta = build_metadata(name="mylora", family="sd1", config=config, dataset=dataset, result=result,
                              model_name="tiny")
        path = save_lora_file(tmp_path / "mylora.safetensors", result.network, meta)
        lora = _load(path)
        assert lora.family == "sd1"
        assert len(lora.adapters) == 54 and not lora.unclaimed
        assert "unet:down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in lora.adapters
        assert "te1:text_model_encoder_layers_0_self_attn_q_proj" in lora.adapters
        assert {a.rank for a in lora.adapters.values()} == {4}
        assert {a.alpha for a in lora.adapters.values()} == {2.0}
        md = lora.metadata
        assert md["ss_output_name"] == "mylora" and md["ss_base_model_version"] == "sd_v1"
        assert md["ss_network_module"] == "networks.lora"
        assert (md["ss_network_dim"], float(md["ss_network_alpha"])) == ("4", 2.0)
        assert md["ss_resolution"] == f"({RES}, {RES})" and md["ss_num_train_images"] == "8"
        assert md["ss_steps"] == "4" and md["ss_seed"] == "0" and float(md["ss_learning_rate"]) == 1e-2
        assert float(md["ss_training_finished_at"]) >= float(md["ss_training_started_at"])
        freq = json.loads(md["ss_tag_frequency"])
        assert freq["2_scenes"]["lctest"] == 4
        assert json.loads(md["ss_dataset_dirs"]) == {"2_scenes": {"n_repeats": 2, "img_count": 4}}
        # ΔW read back = up @ down * alpha / rank of the trained modules
        for name, module in result.network.loras.items():
            flat = name[len("lora_unet_"):] if name.startswith("lora_unet_") else name[len("lora_te_"):]
            key = ("unet:" if name.startswith("lora_unet_") else "te1:") + flat
            up, down = module.lora_up.weight.detach(), module.lora_down.weight.detach()
            want = (up.flatten(1) @ down.flatten(1)) * (2.0 / 4)
            base = module._base.weight
            got = lora.adapters[key].delta(base)
            torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-6, rtol=1e-5)
        assert any(float(m.lora_up.weight.detach().abs().max()) > 0 for m in result.network.loras.values())
    finally:
        _remove(result)


def test_locon_file_reads_back_as_locon(parts, dataset, tmp_path):
    config, result = _train(parts, dataset, steps=2, targets="locon", train_te=False, conv_rank=2, conv_alpha=1.0)
    try:
        meta = build_metadata(name="lc", family="sd1", config=config, dataset=dataset, result=result)
        lora = _load(save_lora_file(tmp_path / "lc.safetensors", result.network, meta))
        assert lora.algorithms()["locon"] > 0 and not any(k.startswith("te1:") for k in lora.adapters)
        conv = lora.adapters["unet:down_blocks_0_resnets_0_conv1"]
        assert conv.rank == 2 and conv.alpha == 1.0
        assert json.loads(lora.metadata["ss_network_args"])["conv_dim"] == "2"
        module = result.network.loras["lora_unet_down_blocks_0_resnets_0_conv1"]
        torch.testing.assert_close(conv.delta(module._base.weight), module.delta_weight())
    finally:
        _remove(result)


def test_keyboard_interrupt_keeps_a_usable_lora(parts, dataset, tmp_path):
    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    spec = NetworkSpec(rank=4, alpha=4.0)
    config = TrainConfig(network=spec, resolution=RES, lr=1e-2, steps=50, seed=0)
    result = train_lora(Components.from_dict(parts), dataset, config, progress=False, on_step=stop)
    try:
        assert result.interrupted and result.steps == 3 and len(result.losses) == 3
        meta = build_metadata(name="cut", family="sd1", config=config, dataset=dataset, result=result)
        lora = _load(save_lora_file(tmp_path / "cut.safetensors", result.network, meta))
        assert lora.metadata["ss_steps"] == "3" and lora.metadata["ss_max_train_steps"] == "50"
        assert len(lora.adapters) == 54
        assert not list(tmp_path.glob("*.tmp"))
    finally:
        _remove(result)


def test_broken_image_fails_before_training_and_leaves_the_model_unwrapped(parts, tmp_path):
    from PIL import Image

    from lora_core.train import DatasetError

    folder = tmp_path / "1_x"
    folder.mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    steps = []
    config = TrainConfig(network=NetworkSpec(rank=2, alpha=2), resolution=RES, steps=5)
    with pytest.raises(DatasetError, match="b.png"):
        train_lora(Components.from_dict(parts), scan_folder(tmp_path), config, progress=False,
                   on_step=lambda s, loss: steps.append(s))
    assert steps == []
    assert not any("forward" in vars(m) for m in parts["unet"].modules())


# ------------------------------------------------------------ frozen base LoRAs (--base-lora)
@pytest.fixture(scope="module")
def base_lora(parts, dataset, tmp_path_factory):
    """A LoRA file for the tiny model with clearly non-zero weights, and its ΔW per module."""
    config, result = _train(parts, dataset, steps=6, lr=5e-2, targets="locon", seed=3)
    try:
        meta = build_metadata(name="base", family="sd1", config=config, dataset=dataset, result=result)
        path = save_lora_file(tmp_path_factory.mktemp("base") / "base.safetensors", result.network, meta)
        deltas = {m._base: m.delta_weight() for m in result.network.loras.values()}
    finally:
        _remove(result)
    return path, deltas


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    BASE.write(root / "a", seed=0, n=3, repeats=1, size=RES)
    BASE.write(root / "b", seed=1, n=3, repeats=1, size=RES)
    for sub, name in ((root / "a", "1_plain"), (root / "b", "1_mix")):
        (sub / "1_scenes").rename(root / name)
        sub.rmdir()
    return scan_folder(root)


def _state(parts):
    return {f"{m}.{k}": v.clone() for m in ("unet", "text_encoder") for k, v in parts[m].state_dict().items()}


def _sd(result):
    sd = result.network.kohya_state_dict()
    _remove(result)
    return sd


def _plan(path, weight=1.0, folder=None):
    from lora_core.train.base_loras import BaseLora, BaseLoraPlan

    lo = (BaseLora(path, weight),)
    return BaseLoraPlan(by_folder={folder: lo}) if folder else BaseLoraPlan(always=lo)


def _train_on(parts, dataset, plan=None, **kw):
    spec = NetworkSpec(rank=4, alpha=2.0, targets="locon")
    config = TrainConfig(network=spec, resolution=RES, lr=1e-2, steps=4, seed=0, **kw)
    return train_lora(Components.from_dict(parts), dataset, config, progress=False, base_loras=plan, family="sd1")


def test_a_base_lora_trains_as_if_merged_into_the_model_and_is_gone_after(parts, two_folders, base_lora):
    path, deltas = base_lora
    before = _state(parts)
    with_base = _sd(_train_on(parts, two_folders, _plan(path, 0.7)))
    assert all(torch.equal(before[k], v) for k, v in _state(parts).items())  # restored bit for bit
    plain = _sd(_train_on(parts, two_folders))
    # the oracle: the same run on a copy of the model with W0 + 0.7 ΔW written in by hand, ΔW from
    # the trained modules' own math (checked against PEFT's forward above)
    merged = {"unet": copy.deepcopy(parts["unet"]), "text_encoder": copy.deepcopy(parts["text_encoder"])}
    originals = {id(layer): layer for layer in deltas}
    for name in ("unet", "text_encoder"):
        for (_, copied), (_, original) in zip(merged[name].named_modules(), parts[name].named_modules()):
            if id(original) in originals:
                with torch.no_grad():
                    copied.weight.add_(0.7 * deltas[original].reshape(copied.weight.shape))
    by_hand = _sd(_train_on({**parts, **merged}, two_folders))
    assert with_base.keys() == plain.keys() == by_hand.keys()
    assert not all(torch.equal(with_base[k], plain[k]) for k in plain)
    # equal up to float rounding (the two merges add in another order; Adam carries that on), which
    # is far below what the base LoRA changes
    for k in by_hand:
        scale = float(by_hand[k].abs().max()) or 1.0
        assert float((with_base[k] - by_hand[k]).abs().max()) <= 1e-3 * scale, k
    gap = max(float((with_base[k] - plain[k]).abs().max()) / (float(plain[k].abs().max()) or 1.0) for k in plain)
    assert gap > 1e-2


def test_a_folder_lora_is_in_the_model_for_that_folder_only(parts, two_folders, base_lora, tmp_path):
    path, _ = base_lora
    everywhere = _sd(_train_on(parts, two_folders, _plan(path)))
    nowhere = _sd(_train_on(parts, two_folders))
    one_folder = _sd(_train_on(parts, two_folders, _plan(path, folder="1_mix")))
    differs = lambda a, b: not all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert differs(one_folder, everywhere) and differs(one_folder, nowhere)
    # a data set of that folder alone trains exactly as with the LoRA everywhere
    only_mix = scan_folder(two_folders.items[0].image.parent.parent, trigger=None)
    only_mix.items[:] = [i for i in only_mix.items if i.subset == "1_mix"]
    a = _sd(_train_on(parts, only_mix, _plan(path, folder="1_mix")))
    b = _sd(_train_on(parts, only_mix, _plan(path)))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_base_lora_problems_are_clear_errors_and_leave_the_model_alone(parts, two_folders, base_lora, tmp_path):
    path, _ = base_lora
    before = _state(parts)
    with pytest.raises(ValueError, match="no data folder named 1_nope"):
        _train_on(parts, two_folders, _plan(path, folder="1_nope"))
    with pytest.raises(ValueError, match="--batch-size 1"):
        _train_on(parts, two_folders, _plan(path, folder="1_mix"), batch_size=2)
    with pytest.raises(ValueError, match="missing.safetensors: file not found"):
        _train_on(parts, two_folders, _plan(tmp_path / "missing.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ValueError, match="broken.safetensors"):
        _train_on(parts, two_folders, _plan(broken))
    assert all(torch.equal(before[k], v) for k, v in _state(parts).items())
    assert not any("forward" in vars(m) for m in parts["unet"].modules())  # no LoRA left wrapped round a layer


def test_base_lora_arguments_parse_weights_and_keep_drive_letters():
    from pathlib import Path

    from lora_core.train.base_loras import BaseLora

    assert BaseLora.parse("a/b.safetensors") == BaseLora(Path("a/b.safetensors"), 1.0)
    assert BaseLora.parse("a/b.safetensors:0.6") == BaseLora(Path("a/b.safetensors"), 0.6)
    assert BaseLora.parse("C:\\loras\\b.safetensors") == BaseLora(Path("C:\\loras\\b.safetensors"), 1.0)
    assert BaseLora.parse("C:\\loras\\b.safetensors:-0.5") == BaseLora(Path("C:\\loras\\b.safetensors"), -0.5)
