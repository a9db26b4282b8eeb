"""A tiny random Flux.1-dev single-file checkpoint, the matching tiny component configs for Forge, and
tiny Flux LoRAs in two layouts, for running Flux in the real Forge on a CPU (tools/forge_flux_check.sh).

    python tools/forge_flux/make_tiny_flux.py FORGE_DIR     # writes into a COPY of the Forge tree

Writes (all derived from the dimensions in `DIMS`):
* FORGE_DIR/models/Stable-diffusion/tiny_flux1_dev.safetensors: the key layout Forge's loader splits
  (backend/loader.py `split_state_dict` with huggingface_guess's `Flux`): the BFL transformer under
  `model.diffusion_model.`, CLIP-L under `text_encoders.clip_l.transformer.` (HF names), T5 under
  `text_encoders.t5xxl.transformer.` (Forge's T5: `encoder.block.N.layer...`, `shared`), the VAE
  under `vae.` in LDM names (Forge's IntegratedAutoencoderKL). fp32, ~45 MB.
* FORGE_DIR/backend/huggingface/black-forest-labs/FLUX.1-dev/{text_encoder,text_encoder_2,vae}/config.json:
  the shipped configs with the widths/depths of the tiny model (Forge builds these three components
  from these files; the tokenizers stay as shipped, so the vocabularies keep their real sizes).
* FORGE_DIR/models/Lora/flux_kohya.safetensors (kohya: fused double-block qkv, single-block linear1
  and linear2, CLIP-L `lora_te1_`, T5 `lora_te3_`) and flux_peft.safetensors (diffusers/PEFT:
  `transformer.transformer_blocks.N.attn.to_q/to_k/to_v`, `add_k_proj`, single-block to_q/to_k/to_v/
  proj_mlp, i.e. the row slices of the fused qkv / linear1 tensors).

The transformer's widths are not what huggingface_guess assumes (it hard-codes the 12B model); the
rig-only shim tools/forge_flux/rig_shim/preload.py makes Forge read them from the tensors.
Values: weights ~ N(0, 1/fan_in), norms 1, so activations stay O(1) and a LoRA (ΔW of W's size)
visibly changes a 64x64 image. Deterministic (fixed seeds). Needs torch + safetensors only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# hidden = heads x 128 (Flux's rotary axes 16+56+56 need head dim 128); T5 d_model is the
# transformer's context_in_dim, CLIP-L's width its vec_in_dim.
DIMS = dict(hidden=128, heads=1, depth=2, depth_single=2, mlp_ratio=4, in_channels=16,
            t5_d_model=64, t5_heads=2, t5_ff=128, t5_layers=2, t5_vocab=32128,
            clip_width=64, clip_heads=2, clip_ff=128, clip_layers=2, clip_vocab=49408, clip_positions=77,
            vae_ch=32, vae_levels=4, vae_latent=16)
REPO = "backend/huggingface/black-forest-labs/FLUX.1-dev"
CKPT_NAME = "tiny_flux1_dev.safetensors"


class _Init:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def w(self, *shape: int) -> torch.Tensor:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        return torch.randn(*shape, generator=self.g) / math.sqrt(fan_in)

    def b(self, n: int) -> torch.Tensor:
        return torch.randn(n, generator=self.g) * 0.02

    def linear(self, sd: dict, name: str, out: int, inp: int, bias: bool = True) -> None:
        sd[f"{name}.weight"] = self.w(out, inp)
        if bias:
            sd[f"{name}.bias"] = self.b(out)


def transformer(d: dict, seed: int = 1) -> dict:
    """BFL Flux names (flux/model.py, Forge's backend/nn/flux.py)."""
    r, sd = _Init(seed), {}
    h, mlp, hd = d["hidden"], d["hidden"] * d["mlp_ratio"], d["hidden"] // d["heads"]
    r.linear(sd, "img_in", h, 4 * d["in_channels"])            # 2x2 patches of the 16-channel latent
    r.linear(sd, "txt_in", h, d["t5_d_model"])
    for emb, width in (("time_in", 256), ("vector_in", d["clip_width"]), ("guidance_in", 256)):
        r.linear(sd, f"{emb}.in_layer", h, width)
        r.linear(sd, f"{emb}.out_layer", h, h)
    for i in range(d["depth"]):
        for s in ("img", "txt"):
            p = f"double_blocks.{i}.{s}"
            r.linear(sd, f"{p}_mod.lin", 6 * h, h)
            r.linear(sd, f"{p}_attn.qkv", 3 * h, h)
            sd[f"{p}_attn.norm.query_norm.scale"] = torch.ones(hd)
            sd[f"{p}_attn.norm.key_norm.scale"] = torch.ones(hd)
            r.linear(sd, f"{p}_attn.proj", h, h)
            r.linear(sd, f"{p}_mlp.0", mlp, h)
            r.linear(sd, f"{p}_mlp.2", h, mlp)
    for i in range(d["depth_single"]):
        p = f"single_blocks.{i}"
        r.linear(sd, f"{p}.linear1", 3 * h + mlp, h)
        r.linear(sd, f"{p}.linear2", h, h + mlp)
        sd[f"{p}.norm.query_norm.scale"] = torch.ones(hd)
        sd[f"{p}.norm.key_norm.scale"] = torch.ones(hd)
        r.linear(sd, f"{p}.modulation.lin", 3 * h, h)
    r.linear(sd, "final_layer.linear", 4 * d["in_channels"], h)
    r.linear(sd, "final_layer.adaLN_modulation.1", 2 * h, h)
    return sd


def clip_l(d: dict, seed: int = 2) -> dict:
    """HF CLIPTextModel names (what Forge's IntegratedCLIP.transformer holds)."""
    r, sd, w = _Init(seed), {}, d["clip_width"]
    sd["text_model.embeddings.token_embedding.weight"] = torch.randn(d["clip_vocab"], w, generator=r.g) * 0.5
    sd["text_model.embeddings.position_embedding.weight"] = torch.randn(d["clip_positions"], w, generator=r.g) * 0.1
    for i in range(d["clip_layers"]):
        p = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            r.linear(sd, f"{p}.self_attn.{proj}", w, w)
        for norm in ("layer_norm1", "layer_norm2"):
            sd[f"{p}.{norm}.weight"], sd[f"{p}.{norm}.bias"] = torch.ones(w), torch.zeros(w)
        r.linear(sd, f"{p}.mlp.fc1", d["clip_ff"], w)
        r.linear(sd, f"{p}.mlp.fc2", w, d["clip_ff"])
    sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"] = torch.ones(w), torch.zeros(w)
    return sd


def t5(d: dict, seed: int = 3) -> dict:
    """Forge's T5 encoder names (backend/nn/t5.py = HF T5EncoderModel's, gated GELU)."""
    r, sd, m = _Init(seed), {}, d["t5_d_model"]
    sd["shared.weight"] = torch.randn(d["t5_vocab"], m, generator=r.g)
    for i in range(d["t5_layers"]):
        p = f"encoder.block.{i}.layer"
        for proj in "qkvo":
            sd[f"{p}.0.SelfAttention.{proj}.weight"] = r.w(m, m)
        if i == 0:
            sd[f"{p}.0.SelfAttention.relative_attention_bias.weight"] = torch.randn(32, d["t5_heads"], generator=r.g)
        sd[f"{p}.0.layer_norm.weight"] = torch.ones(m)
        sd[f"{p}.1.DenseReluDense.wi_0.weight"] = r.w(d["t5_ff"], m)
        sd[f"{p}.1.DenseReluDense.wi_1.weight"] = r.w(d["t5_ff"], m)
        sd[f"{p}.1.DenseReluDense.wo.weight"] = r.w(m, d["t5_ff"])
        sd[f"{p}.1.layer_norm.weight"] = torch.ones(m)
    sd["encoder.final_layer_norm.weight"] = torch.ones(m)
    return sd


def vae(d: dict, seed: int = 4) -> dict:
    """LDM AutoencoderKL names (Forge's IntegratedAutoencoderKL), no quant convs (Flux's VAE),
    one resnet per encoder level (two per decoder level), all levels `vae_ch` wide."""
    r, sd, c, z = _Init(seed), {}, d["vae_ch"], d["vae_latent"]

    def conv(name, out, inp, k):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = r.w(out, inp, k, k), r.b(out)

    def norm(name):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.ones(c), torch.zeros(c)

    def resnet(p):
        norm(f"{p}.norm1")
        conv(f"{p}.conv1", c, c, 3)
        norm(f"{p}.norm2")
        conv(f"{p}.conv2", c, c, 3)

    def mid(p):
        resnet(f"{p}.mid.block_1")
        norm(f"{p}.mid.attn_1.norm")
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{p}.mid.attn_1.{proj}", c, c, 1)
        resnet(f"{p}.mid.block_2")

    levels = d["vae_levels"]
    conv("encoder.conv_in", c, 3, 3)
    for i in range(levels):
        resnet(f"encoder.down.{i}.block.0")
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder")
    norm("encoder.norm_out")
    conv("encoder.conv_out", 2 * z, c, 3)
    conv("decoder.conv_in", c, z, 3)
    mid("decoder")
    for i in range(levels):
        for j in range(2):
            resnet(f"decoder.up.{i}.block.{j}")
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out")
    conv("decoder.conv_out", 3, c, 3)
    return sd


def checkpoint(d: dict = DIMS) -> dict:
    ckpt = {f"model.diffusion_model.{k}": v for k, v in transformer(d).items()}
    ckpt.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_l(d).items()})
    ckpt.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5(d).items()})
    ckpt.update({f"vae.{k}": v for k, v in vae(d).items()})
    return {k: v.contiguous() for k, v in ckpt.items()}


def component_configs(shipped: Path, d: dict = DIMS) -> dict[str, dict]:
    """The shipped FLUX.1-dev component configs with the tiny model's sizes."""
    def read(name):
        return json.loads((shipped / name / "config.json").read_text())

    te = read("text_encoder")
    te.update(hidden_size=d["clip_width"], intermediate_size=d["clip_ff"], num_hidden_layers=d["clip_layers"],
              num_attention_heads=d["clip_heads"], projection_dim=d["clip_width"], vocab_size=d["clip_vocab"],
              max_position_embeddings=d["clip_positions"])
    te2 = read("text_encoder_2")
    te2.update(d_model=d["t5_d_model"], d_ff=d["t5_ff"], d_kv=d["t5_d_model"] // d["t5_heads"], num_heads=d["t5_heads"],
               num_layers=d["t5_layers"], num_decoder_layers=d["t5_layers"], vocab_size=d["t5_vocab"])
    v = read("vae")
    v.update(block_out_channels=[d["vae_ch"]] * d["vae_levels"], layers_per_block=1, latent_channels=d["vae_latent"])
    return {"text_encoder": te, "text_encoder_2": te2, "vae": v}


# ------------------------------------------------------------------ LoRAs

def _pair(g: torch.Generator, out: int, inp: int, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """up, down with ΔW = up @ down ~ scale · N(0, 1/inp): of the size of the weight itself."""
    down = torch.randn(rank, inp, generator=g) / math.sqrt(inp)
    up = torch.randn(out, rank, generator=g) * scale / math.sqrt(rank)
    return up, down


def kohya_lora(d: dict = DIMS, seed: int = 11, rank: int = 4, alpha: float = 4.0) -> dict:
    h, mlp = d["hidden"], d["hidden"] * d["mlp_ratio"]
    g = torch.Generator().manual_seed(seed)
    modules = {"lora_unet_double_blocks_0_img_attn_qkv": (3 * h, h),
               "lora_unet_double_blocks_1_txt_mlp_0": (mlp, h),
               "lora_unet_double_blocks_0_img_mlp_2": (h, mlp),
               "lora_unet_single_blocks_0_linear1": (3 * h + mlp, h),
               "lora_unet_single_blocks_1_linear2": (h, h + mlp),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (d["clip_width"], d["clip_width"]),
               "lora_te1_text_model_encoder_layers_1_mlp_fc1": (d["clip_ff"], d["clip_width"]),
               "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (d["t5_d_model"], d["t5_d_model"]),
               "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0": (d["t5_ff"], d["t5_d_model"])}
    t = {}
    for name, (out, inp) in modules.items():
        t[f"{name}.lora_up.weight"], t[f"{name}.lora_down.weight"] = _pair(g, out, inp, rank, 1.5)
        t[f"{name}.alpha"] = torch.tensor(alpha)
    return t


def peft_lora(d: dict = DIMS, seed: int = 12, rank: int = 4) -> dict:
    """diffusers' FluxTransformer2DModel names; q/k/v (and proj_mlp) are row slices of BFL's fused
    img_attn.qkv / txt_attn.qkv / single_blocks.N.linear1. PEFT without alpha: scale 1."""
    h, mlp = d["hidden"], d["hidden"] * d["mlp_ratio"]
    g = torch.Generator().manual_seed(seed)
    modules = {f"transformer.transformer_blocks.0.attn.{p}": (h, h) for p in ("to_q", "to_k", "to_v")}
    modules["transformer.transformer_blocks.1.attn.add_k_proj"] = (h, h)
    modules.update({f"transformer.single_transformer_blocks.1.attn.{p}": (h, h) for p in ("to_q", "to_k", "to_v")})
    modules["transformer.single_transformer_blocks.1.proj_mlp"] = (mlp, h)
    t = {}
    for name, (out, inp) in modules.items():
        t[f"{name}.lora_B.weight"], t[f"{name}.lora_A.weight"] = _pair(g, out, inp, rank, 1.5)
    return t


def write_all(forge_dir: Path) -> list[Path]:
    """Writes everything into the (copied) Forge tree; returns the files written."""
    torch.set_num_threads(1)
    repo = forge_dir / REPO
    if not (repo / "model_index.json").is_file():
        raise SystemExit(f"{forge_dir} is not a Forge tree: no {REPO}/model_index.json")
    written = []
    for name, cfg in component_configs(repo).items():
        path = repo / name / "config.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
        os.replace(tmp, path)
        written.append(path)
    targets = [(forge_dir / "models" / "Stable-diffusion" / CKPT_NAME, checkpoint(), {"modelspec.architecture": "Flux.1-dev"}),
               (forge_dir / "models" / "Lora" / "flux_kohya.safetensors", kohya_lora(), {"ss_base_model_version": "flux1"}),
               (forge_dir / "models" / "Lora" / "flux_peft.safetensors", peft_lora(), {})]
    for path, tensors, meta in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("forge_dir", type=Path, help="a COPY of the Forge tree (its shipped configs are rewritten)")
    args = ap.parse_args(argv)
    for path in write_all(args.forge_dir):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
