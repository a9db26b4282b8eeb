"""formats vs LyCORIS 4.1.3: files saved by a LyCORIS network; the oracle is the LyCORIS module's
forward pass (outputs of the merged layer W0 + ΔW must equal LyCORIS' outputs)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "formats"))
from lycoris_makers import TinyNet, make_lycoris_file, merged_output, sample_input  # noqa: E402

from lora_core.formats import load_lora  # noqa: E402

CASES = {
    # id: (algo, kwargs, expected kinds)
    "locon": ("lora", {}, {"lora", "locon"}),
    "locon_tucker": ("lora", {"use_tucker": True}, {"lora", "locon"}),
    "dora_out": ("lora", {"dora_wd": True}, {"dora"}),
    "dora_in": ("lora", {"dora_wd": True, "wd_on_output": False}, {"dora"}),
    "loha": ("loha", {}, {"loha"}),
    "loha_tucker": ("loha", {"use_tucker": True}, {"loha"}),
    "lokr_full": ("lokr", {"full_matrix": True}, {"lokr"}),
    "lokr_decomposed": ("lokr", {"decompose_both": True, "linear_dim": 2}, {"lokr"}),
    "lokr_tucker": ("lokr", {"use_tucker": True, "linear_dim": 2}, {"lokr"}),
    "ia3": ("ia3", {}, {"ia3"}),
    "ia3_on_input": ("ia3", {"train_on_input": True}, {"ia3"}),
    "oft": ("diag-oft", {}, {"oft"}),
    "oft_constrained_rescaled": ("diag-oft", {"constraint": 0.01, "rescaled": True}, {"oft"}),
    "boft": ("boft", {}, {"boft"}),
    "boft_rescaled": ("boft", {"rescaled": True, "constraint": 0.02}, {"boft"}),
    "glora": ("glora", {}, {"glora"}),
    "full": ("full", {}, {"full"}),
    "loha_dora": ("loha", {"dora_wd": True}, {"loha"}),
}


def check_against_forward(made, lora, tol=1e-4):
    checked = 0
    for name, module in made.model.named_children():
        key = f"unet:{name}"
        if key not in lora.adapters:
            continue
        adapter = lora.adapters[key]
        w0, b0 = made.originals[name]
        d = adapter.delta(w0)
        assert d.shape == w0.shape and d.dtype == torch.float32
        db = adapter.delta_bias(b0)
        x = sample_input(module)
        ours = merged_output(name, module, x, w0 + d, b0 if db is None else b0 + db)
        ref = made.reference(name, x)
        err = float((ours - ref).norm() / ref.norm())
        assert err < tol, (name, adapter.kind, err)
        # the update is not trivially zero
        base_out = merged_output(name, module, x, w0, b0)
        assert float((ref - base_out).norm()) > 1e-3, name
        checked += 1
    return checked


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_algorithm_matches_forward(case, tmp_path):
    algo, kwargs, kinds = CASES[case]
    kwargs = dict(kwargs)
    dim = kwargs.pop("linear_dim", 4)
    made = make_lycoris_file(tmp_path / f"{case}.safetensors", algo, linear_dim=dim, linear_alpha=2.0, **kwargs)
    lora = load_lora(made.path)
    assert not lora.unclaimed, lora.unclaimed
    assert set(lora.algorithms()) <= kinds and lora.algorithms(), lora.algorithms()
    assert check_against_forward(made, lora) == 3
    if case == "locon_tucker":
        assert "lora_mid.weight" in lora.adapters["unet:conv"].tensors
        assert lora.adapters["unet:conv"].low_rank() is None
        assert lora.adapters["unet:lin"].low_rank() is not None
    if case == "lokr_decomposed":
        assert "lokr_w1_a" in lora.adapters["unet:lin"].tensors and "lokr_w2_a" in lora.adapters["unet:lin"].tensors
    if case == "lokr_tucker":
        assert "lokr_t2" in lora.adapters["unet:conv"].tensors
    if case == "loha_tucker":
        assert "hada_t1" in lora.adapters["unet:conv"].tensors
    if case in ("dora_out", "dora_in", "loha_dora"):
        assert all(a.dora for a in lora.adapters.values())


def test_norm_adapters(tmp_path):
    made = make_lycoris_file(tmp_path / "norm.safetensors", "lora", train_norm=True)
    lora = load_lora(made.path)
    norm = lora.adapters["unet:norm"]
    assert norm.algo == "norm" and norm.target == "norm"
    w0, b0 = made.originals["norm"]
    x = sample_input(made.model.norm)
    ours = merged_output("norm", made.model.norm, x, w0 + norm.delta(w0), b0 + norm.delta_bias(b0))
    ref = made.reference("norm", x)
    assert float((ours - ref).norm() / ref.norm()) < 1e-5
    assert check_against_forward(made, lora) == 4


@pytest.mark.parametrize("algo,kwargs", [("lora", {}), ("loha", {}), ("lokr", {"linear_dim": 4}),
                                         ("lora", {"dora_wd": True}), ("ia3", {}), ("glora", {})])
def test_sd_sized_layers(algo, kwargs, tmp_path):
    """SD1 cross-attention k (768 -> 320) and SDXL's (2048 -> 640) layer shapes."""
    kwargs = dict(kwargs)
    dim = kwargs.pop("linear_dim", 8)
    model = TinyNet(extra_linears=[(768, 320), (2048, 640)])
    made = make_lycoris_file(tmp_path / "big.safetensors", algo, linear_dim=dim, linear_alpha=4.0,
                             model=model, **kwargs)
    lora = load_lora(made.path)
    assert {"unet:big0", "unet:big1"} <= set(lora.adapters)
    assert check_against_forward(made, lora) == 5


def test_fp16_lycoris_file(tmp_path):
    made = make_lycoris_file(tmp_path / "half.safetensors", "loha", dtype=torch.float16)
    lora = load_lora(made.path)
    adapter = lora.adapters["unet:lin"]
    assert adapter.tensors["hada_w1_a"].dtype == torch.float16
    w0 = made.originals["lin"][0]
    assert adapter.delta(w0.half()).dtype == torch.float32
    check_against_forward(made, lora, tol=5e-3)


def test_dylora_truncation(tmp_path):
    made = make_lycoris_file(tmp_path / "dy.safetensors", "lora", linear_dim=8, linear_alpha=4.0)
    adapter = load_lora(made.path).adapters["unet:lin"]
    up, down = adapter.tensors["lora_up.weight"].float(), adapter.tensors["lora_down.weight"].float()
    w0 = made.originals["lin"][0]
    # first 3 ranks only, scale stays alpha / full rank (as DyLoRA trains it)
    expected = (up[:, :3] @ down[:3]) * (4.0 / 8)
    assert torch.allclose(adapter.delta(w0, dyn=3), expected, atol=1e-6)
    up3, down3, scale = adapter.low_rank(dyn=3)
    assert up3.shape[1] == 3 and down3.shape[0] == 3 and scale == 0.5
    assert torch.allclose(adapter.delta(w0, dyn=None), adapter.delta(w0, dyn=100))


@pytest.mark.parametrize("algo,kwargs", [("loha", {}), ("lokr", {"factor": 4}), ("lora", {"dora_wd": True})])
def test_lycoris_kohya_wrapper_on_tiny_sd1(algo, kwargs, tmp_path):
    """LyCORIS through its kohya entry point (how Civitai LyCORIS files are made): `lora_unet_` /
    `lora_te_` names on a diffusers UNet and a CLIP text encoder; forward pass as the oracle."""
    import contextlib
    import io

    from formats_makers import tiny_text_encoder, tiny_unet
    from lycoris.kohya import create_network
    from lycoris_makers import randomise

    unet, te = tiny_unet(768, seed=3), tiny_text_encoder(768, seed=4)
    with contextlib.redirect_stdout(io.StringIO()):
        net = create_network(1.0, 4, 2.0, None, te, unet, algo=algo, preset="attn-mlp", **kwargs)
        net.apply_to(te, unet, True, True)
    randomise(net, algo, seed=5)
    path = tmp_path / f"kohya_{algo}.safetensors"
    net.save_weights(str(path), None, {"ss_network_module": "lycoris.kohya"})
    lora = load_lora(path)
    assert lora.family == "sd1" and not lora.unclaimed
    modules = list(net.unet_loras) + list(net.text_encoder_loras)
    assert len(lora.adapters) == len(modules) > 10
    for m in modules:
        name = m.lora_name
        key = ("unet:" + name[len("lora_unet_"):]) if name.startswith("lora_unet_") else \
            ("te1:text_model_" + name[len("lora_te_"):])
        layer = m.org_module[0]
        x = sample_input(layer)
        with torch.no_grad():
            ref = layer(x)  # patched forward
        w0, b0 = layer.weight.detach(), layer.bias
        ours = merged_output(name, layer, x, w0 + lora.adapters[key].delta(w0), b0)
        assert float((ours - ref).norm() / ref.norm()) < 1e-4, key
