"""Tiny Flux.1 / SD3 transformers built from config (diffusers), PEFT LoRAs on them, and the
reference ΔW of each adapted layer from PEFT itself. For formats' Flux/SD3 layout tests and for
other areas' tests (put this folder on sys.path, `from dit_makers import tiny_flux, peft_lora`).

Widths are tiny (model width 16): family detection by width is tested separately with the real
widths. No downloads; each model builds in well under a second.
"""
from __future__ import annotations

import torch

FLUX_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
                "norm1_context.linear", "proj_mlp", "proj_out", "norm.linear"]
SD3_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


def tiny_flux(seed: int = 0):
    """FluxTransformer2DModel: 1 double block, 1 single block, width 16 (2 heads × 8)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=8, axes_dims_rope=[2, 2, 4]).eval()


def tiny_sd3(seed: int = 0):
    """SD3Transformer2DModel: 2 joint blocks (block 0 with SD3.5-medium's second attention `attn2`,
    block 1 the last, context-pre-only), width 16."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16,
                                 dual_attention_layers=(0,)).eval()


def peft_lora(model, targets, rank: int = 4, alpha: float = 8, seed: int = 1, **config):
    """Add a PEFT LoRA with random (non-zero) A and B to `model`; return (LoraConfig, PEFT state
    dict as `get_peft_model_state_dict` gives it, {module path: reference ΔW from PEFT})."""
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **config)
    model.add_adapter(cfg)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    reference = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            with torch.no_grad():
                reference[name] = module.get_delta_weight("default").detach().float().clone()
    return cfg, state, reference


def base_weights(model) -> dict[str, torch.Tensor]:
    """{module path: W0} of every Linear (PEFT-wrapped layers answer with their base layer)."""
    out = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        layer = base if isinstance(base, torch.nn.Linear) else module
        if isinstance(layer, torch.nn.Linear) and ".base_layer" not in name and ".lora_" not in name:
            out[name] = layer.weight.detach().clone()
    return out


def flat(module_path: str) -> str:
    """Canonical flat name of a module path (ARCHITECTURE.md, canonical module keys)."""
    return module_path.replace(".", "_")
