"""The Flux.1 case of the engine bench: the model, its LoRA files and diffusers' side of it.

Model: diffusers' FluxTransformer2DModel built from config (random init straight into the weight
dtype, nothing downloaded) with Flux.1-dev's block structure: 19 double blocks + 38 single blocks,
head width 128, guidance embedder. `width_div` divides the number of heads (24) and the two
embedding widths (4096, 768), so width_div 8 is hidden 384 / MLP 1536 with every block kept.

LoRA files, rank 16 by default (the names are bench.engine's PLAN, so its SCENARIOS run unchanged):
  L1, L5: kohya layout (`lora_unet_double_blocks_N_img_attn_qkv`, `..._single_blocks_N_linear1`:
          q/k/v and the MLP in one fused tensor; what people download), attention + MLP +
          modulation of every block, alpha = rank/2
  L2:     PEFT layout as diffusers saves it (`transformer.transformer_blocks.N.attn.to_q.lora_A`),
          the same modules, no alpha (scale 1)
  L3:     kohya, the double blocks only         L4: PEFT, attention only
The kohya shapes come from the model's own modules (a fused tensor's rows = its parts' rows), so
they follow any width.
"""
from __future__ import annotations

import contextlib
import os

import torch

# Flux.1-dev's transformer (black-forest-labs/FLUX.1-dev transformer/config.json)
FULL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56))
FULL_HIDDEN = 24 * 128
# --quick: 2 double + 2 single blocks of width 32 (2 heads of 16)
TINY = dict(FULL, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))

# diffusers module suffixes per block kind and part ("attn", "mlp", "mod" = modulation)
DOUBLE = {"attn": ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                   "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"],
          "mlp": ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"],
          "mod": ["norm1.linear", "norm1_context.linear"]}
SINGLE = {"attn": ["attn.to_q", "attn.to_k", "attn.to_v"], "mlp": ["proj_mlp", "proj_out"], "mod": ["norm.linear"]}
# kohya (BFL) module -> the diffusers modules whose rows it holds, in order; part
KOHYA_DOUBLE = [("img_attn_qkv", ["attn.to_q", "attn.to_k", "attn.to_v"], "attn"),
                ("img_attn_proj", ["attn.to_out.0"], "attn"),
                ("img_mlp_0", ["ff.net.0.proj"], "mlp"), ("img_mlp_2", ["ff.net.2"], "mlp"),
                ("img_mod_lin", ["norm1.linear"], "mod"),
                ("txt_attn_qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], "attn"),
                ("txt_attn_proj", ["attn.to_add_out"], "attn"),
                ("txt_mlp_0", ["ff_context.net.0.proj"], "mlp"), ("txt_mlp_2", ["ff_context.net.2"], "mlp"),
                ("txt_mod_lin", ["norm1_context.linear"], "mod")]
KOHYA_SINGLE = [("linear1", ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "attn"),
                ("linear2", ["proj_out"], "mlp"), ("modulation_lin", ["norm.linear"], "mod")]
ALL = ("attn", "mlp", "mod")
FLUX_PLAN = {  # name -> (layout, block kinds, parts)
    "L1": ("kohya", ("double", "single"), ALL),
    "L2": ("peft", ("double", "single"), ALL),
    "L3": ("kohya", ("double",), ALL),
    "L4": ("peft", ("double", "single"), ("attn",)),
    "L5": ("kohya", ("double", "single"), ALL),
}


def flux_config(quick: bool = False, width_div: int = 1, blocks: tuple[int, int] | None = None) -> dict:
    if quick:
        cfg = dict(TINY)
    else:
        if width_div < 1 or 24 % width_div:
            raise ValueError(f"width_div must divide Flux's 24 heads, not {width_div}")
        cfg = dict(FULL, num_attention_heads=24 // width_div, joint_attention_dim=4096 // width_div,
                   pooled_projection_dim=768 // width_div)
    if blocks:
        cfg.update(num_layers=blocks[0], num_single_layers=blocks[1])
    return cfg


def hidden(cfg: dict) -> int:
    return cfg["num_attention_heads"] * cfg["attention_head_dim"]


def build_flux(cfg: dict, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """Random init straight into `dtype` on `device` (a 12B model has no room for an fp32 copy)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


def _blocks(model, kinds):
    if "double" in kinds:
        for i in range(len(model.transformer_blocks)):
            yield "double", i, f"transformer_blocks.{i}"
    if "single" in kinds:
        for i in range(len(model.single_transformer_blocks)):
            yield "single", i, f"single_transformer_blocks.{i}"


def make_flux_lora(directory, model, name: str, rank: int, seed: int, dtype=torch.bfloat16) -> str:
    """Write LoRA `name` of FLUX_PLAN for `model`; |ΔW| about 5-10 % of |W0| at weight 1."""
    from safetensors.torch import save_file

    layout, kinds, parts = FLUX_PLAN[name]
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(seed)

    def factors(out_f, in_f, scale):
        a = torch.randn(rank, in_f, generator=g) / in_f ** 0.5
        b = torch.randn(out_f, rank, generator=g) * (scale / in_f ** 0.5)
        return a.to(dtype), b.to(dtype)

    tensors, metadata = {}, {}
    for kind, i, prefix in _blocks(model, kinds):
        if layout == "kohya":
            for suffix, targets, part in (KOHYA_DOUBLE if kind == "double" else KOHYA_SINGLE):
                if part not in parts:
                    continue
                layers = [modules[f"{prefix}.{t}"] for t in targets]
                key = f"lora_unet_{kind}_blocks_{i}_{suffix}"
                a, b = factors(sum(x.out_features for x in layers), layers[0].in_features, 0.15)
                tensors.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b,
                                f"{key}.alpha": torch.tensor(rank / 2)})
            metadata = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)}
        else:  # no alpha: scale 1, so B is half as large as kohya's (whose alpha/rank is 1/2)
            for part in parts:
                for t in (DOUBLE if kind == "double" else SINGLE)[part]:
                    layer = modules[f"{prefix}.{t}"]
                    a, b = factors(layer.out_features, layer.in_features, 0.075)
                    tensors.update({f"transformer.{prefix}.{t}.lora_A.weight": a,
                                    f"transformer.{prefix}.{t}.lora_B.weight": b})
    path = os.path.join(directory, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


@contextlib.contextmanager
def kohya_linear1_at_width(width: int):
    """diffusers 0.42.1 converts a kohya Flux LoRA's `single_blocks_N_linear1` by splitting its rows
    at the full model's fixed widths (3072, 3072, 3072, 12288), so at a narrow width it refuses the
    file. Here, at widths other than Flux's own, each linear1 `lora_up` is placed at those fixed
    offsets in zero rows before diffusers' converter runs and the parts it returns are cut back to
    the model's widths afterwards: diffusers still does all of the conversion (alpha scaling, key
    mapping, the split itself); only the row offsets are the model's. Costs a few zero-filled
    tensors per file on the diffusers side. At Flux's real width this is a no-op."""
    if width == FULL_HIDDEN:
        yield
        return
    from diffusers.loaders import lora_pipeline

    real = lora_pipeline._convert_kohya_flux_lora_to_diffusers
    full = (FULL_HIDDEN,) * 3 + (4 * FULL_HIDDEN,)
    own = (width,) * 3 + (4 * width,)
    parts = {"attn.to_q": width, "attn.to_k": width, "attn.to_v": width, "proj_mlp": 4 * width}

    def convert(state_dict):
        for key in [k for k in state_dict if k.endswith("_linear1.lora_up.weight")]:
            up = state_dict[key]
            padded = up.new_zeros(sum(full), up.shape[1])
            src = dst = 0
            for n, f in zip(own, full):
                padded[dst:dst + n] = up[src:src + n]
                src, dst = src + n, dst + f
            state_dict[key] = padded
        out = real(state_dict)
        for key in list(out):
            if ".single_transformer_blocks." in key and key.endswith(".lora_B.weight"):
                rows = next((n for p, n in parts.items() if f".{p}.lora_B" in key), None)
                if rows is not None:
                    out[key] = out[key][:rows].contiguous()
        return out

    lora_pipeline._convert_kohya_flux_lora_to_diffusers = convert
    try:
        yield
    finally:
        lora_pipeline._convert_kohya_flux_lora_to_diffusers = real


def flux_host(transformer):
    """What FluxPipeline brings to LoRA loading (FluxLoraLoaderMixin), with the transformer only:
    these LoRAs carry no text-encoder keys."""
    from diffusers.loaders import FluxLoraLoaderMixin

    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim

    class Host(FluxLoraLoaderMixin):
        hf_device_map = None

        def __init__(self):
            self.transformer, self.text_encoder = transformer, None
            self.file_reads = 0

        @property
        def components(self):
            return {"transformer": self.transformer, "text_encoder": None}

        def load_lora_weights(self, *args, **kwargs):
            self.file_reads += 1  # each call reads its file (a path, never a state dict, here)
            with kohya_linear1_at_width(width):
                return super().load_lora_weights(*args, **kwargs)

    return Host()
