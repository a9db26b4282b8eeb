"""Tiny Flux.1 and SD3 engines shaped the way Forge (lllyasviel/stable-diffusion-webui-forge)
holds them, for tests; the DiT counterparts of `tiny_forge.TinyForgeSD1` (independently written).
`TinyForgeSD3` is the same with Forge's SD3 engine (sd35.py): `is_sd3`, encoders clip_l, clip_g,
t5xxl, the MMDiT under its checkpoint names.

What Forge does and this imitates (backend/diffusion_engine/flux.py, base.py, backend/nn/flux.py,
clip.py, t5.py, huggingface_guess/model_list.py):
* `shared.sd_model` is a `Flux(ForgeDiffusionEngine)`: not a torch module; `is_sd1`/`is_sd2`/
  `is_sdxl`/`is_sd3` all False (no `is_flux` exists), `is_webui_legacy_model()` False,
  `use_distilled_cfg_scale` True for dev; `model_config` is huggingface_guess's `Flux` /
  `FluxSchnell` instance (`huggingface_repo` "black-forest-labs/FLUX.1-dev" / "-schnell"), whose
  `unet_config` holds the detected config minus `image_model` (guess() deletes it).
* `forge_objects.unet.model.diffusion_model` is `IntegratedFluxTransformer2DModel`, whose parameter
  names are the BFL checkpoint's (`img_in`, `double_blocks.N.img_attn.qkv`,
  `double_blocks.N.img_attn.norm.query_norm.scale`, `single_blocks.N.linear1`, `final_layer...`).
* `forge_objects.clip.cond_stage_model` holds `clip_l` (`IntegratedCLIP`: `.transformer` the HF
  CLIPTextModel, `.logit_scale`) and `t5xxl` (`IntegratedT5`: `.transformer` with `encoder.block...`
  and `shared`, `.logit_scale`).
* Linear layers are Forge's ops (here `tiny_forge.ForgeLinear`, not an `nn.Linear`).

The modules are built from a Flux single-file state dict (`model.diffusion_model.*`,
`text_encoders.clip_l.transformer.*`, `text_encoders.t5xxl.transformer.*`; what Forge's loader
splits into the huggingface components), so every parameter carries the checkpoint's value.
`checkpoint_weights(engine)` reads them back under those names.
"""
from __future__ import annotations

import torch
from torch import nn

import tiny_forge

UNET_CKPT_PREFIX = "model.diffusion_model."
TEXT_CKPT_PREFIX = "text_encoders."


class FluxModelConfig:
    """huggingface_guess.model_list.Flux as Forge keeps it in `engine.model_config`: `unet_config`
    is the detected transformer config WITHOUT "image_model" (huggingface_guess.guess deletes it;
    what the real Forge dfdcbab holds, seen with tools/forge_flux_check.sh); only the class and its
    `huggingface_repo` say Flux."""

    huggingface_repo = "black-forest-labs/FLUX.1-dev"

    def __init__(self, guidance_embed: bool = True):
        self.unet_config = {"in_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
                            "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
                            "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
                            "guidance_embed": guidance_embed}


class IntegratedFluxTransformer2DModel(nn.Module):
    pass


class IntegratedCLIP(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.logit_scale = nn.Parameter(torch.tensor(4.6055), requires_grad=False)


class IntegratedT5(IntegratedCLIP):
    pass


def _tree(state: dict, root: nn.Module) -> nn.Module:
    """Builds under `root` the modules whose parameters `state` names: a `weight` of 2 dims
    (with its `bias`, if any) is a Forge linear layer, anything else a plain Parameter of its
    module (norm scales, embeddings)."""
    linears = {k[: -len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.dim() == 2
               and not k.endswith(("embedding.weight", "embed_tokens.weight", "shared.weight",
                                   "relative_attention_bias.weight"))}
    for name, value in state.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        owner = ".".join(path)
        with torch.no_grad():
            if owner in linears and leaf in ("weight", "bias"):
                if not isinstance(module, tiny_forge.ForgeLinear):
                    # swap the placeholder for the layer (it has no children yet)
                    parent = root.get_submodule(".".join(path[:-1])) if len(path) > 1 else root
                    weight = state[f"{owner}.weight"]
                    layer = tiny_forge.ForgeLinear(weight.shape[1], weight.shape[0])
                    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
                    bias = state.get(f"{owner}.bias")
                    layer.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
                    parent.add_module(path[-1], layer)
                continue
            module.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=False))
    return root


class TinyForgeFlux:
    """Like backend.diffusion_engine.flux.Flux: not a torch module."""

    encoders = (("clip_l", IntegratedCLIP), ("t5xxl", IntegratedT5))

    def __init__(self, state_dict: dict, schnell: bool = False):
        unet_state = {k[len(UNET_CKPT_PREFIX):]: v for k, v in state_dict.items() if k.startswith(UNET_CKPT_PREFIX)}
        unet = tiny_forge.KModel(_tree(unet_state, IntegratedFluxTransformer2DModel()))
        encoders = {}
        for name, wrapper in self.encoders:
            prefix = f"{TEXT_CKPT_PREFIX}{name}.transformer."
            part = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            encoders[name] = wrapper(_tree(part, nn.Module()))
        clip = tiny_forge.CLIP(model_dict=encoders)
        self.forge_objects = tiny_forge.ForgeObjects(tiny_forge.UnetPatcher(unet), clip, None, None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.model_config = self._config(schnell)
        self.is_inpaint = False
        # ForgeDiffusionEngine.fix_for_webui_backward_compatibility
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.use_distilled_cfg_scale = not schnell
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False

    @staticmethod
    def _config(schnell):
        config = FluxModelConfig(guidance_embed=not schnell)
        if schnell:
            config.huggingface_repo = "black-forest-labs/FLUX.1-schnell"
        return config

    def is_webui_legacy_model(self):
        return self.is_sd1 or self.is_sd2 or self.is_sdxl or self.is_sd3


class SD3ModelConfig:
    """huggingface_guess.model_list.SD3 (its detected config names no image_model)."""

    huggingface_repo = "stabilityai/stable-diffusion-3-medium-diffusers"

    def __init__(self):
        self.unet_config = {"in_channels": 16, "pos_embed_scaling_factor": None}


class TinyForgeSD3(TinyForgeFlux):
    """Like backend.diffusion_engine.sd35.StableDiffusion3: the MMDiT (`joint_blocks.N...`, the
    checkpoint's names), CLIP-L, CLIP-G and T5; Forge sets `is_sd3`."""

    encoders = (("clip_l", IntegratedCLIP), ("clip_g", IntegratedCLIP), ("t5xxl", IntegratedT5))

    def __init__(self, state_dict: dict):
        super().__init__(state_dict)
        self.use_distilled_cfg_scale = False
        self.is_sd3 = True

    @staticmethod
    def _config(schnell):
        return SD3ModelConfig()


def builder(state_dict):
    """sd_models.model_builders["flux"] in Forge mode: a new engine per (re)load."""
    return TinyForgeFlux(state_dict)


def builder_sd3(state_dict):
    """sd_models.model_builders["sd3"] in Forge mode."""
    return TinyForgeSD3(state_dict)


def checkpoint_weights(engine, objects=None) -> dict:
    """The weights the engine's modules hold now (clones), under the checkpoint's names."""
    objects = objects or engine.forge_objects_original
    out = {}
    for name, p in objects.unet.model.named_parameters():
        out["model." + name] = p.detach().clone()
    for name, p in objects.clip.cond_stage_model.named_parameters():
        if ".transformer." in f".{name}":
            out[TEXT_CKPT_PREFIX + name] = p.detach().clone()
    return out
