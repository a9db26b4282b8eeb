"""A tiny model shaped the way Forge (lllyasviel/stable-diffusion-webui-forge) holds it, for tests.

What Forge does and this imitates (independently written; see /work/shared/rigs/forge/README.md):
* `shared.sd_model` is a diffusion *engine* object, not a torch module (no `named_parameters`,
  `cond_stage_model` is None). The torch modules are in `engine.forge_objects`:
  `.unet` is a patcher whose `.model` (Forge's KModel) holds `diffusion_model` (LDM names), and
  `.clip.cond_stage_model` (JointTextEncoder) holds `clip_l.transformer.text_model.*` (HF CLIP
  names); `.clip.patcher` is the text encoder's patcher. `forge_objects_original` and
  `forge_objects_after_applying_lora` are `ForgeObjects` too; `shallow_copy()` shares the patchers.
* Layers are Forge's own ops: `ForgeLinear` / `ForgeConv2d` are plain `nn.Module`s (not
  `nn.Linear` / `nn.Conv2d` subclasses) that read `self.weight` at each call.
* Forge's own LoRA: a patcher `clone()` gets `add_patches(...)`; the merge happens when the sampler
  loads that patcher (`load_models_gpu`, which skips patchers already loaded and unloads other
  clones of the same model): `model.lora_loader.refresh(lora_patches, offload_device)` first puts
  every backed-up Parameter back, then replaces each patched weight by a *new* Parameter holding
  the merged weight and keeps the old Parameter object in `backup`. A refresh with the same set of
  patches as last time does nothing.
* `forge_builtin_lora(engine, ...)` does what `sd_forge_lora`'s `load_networks` does with a LoRA.

Simplification: a patch here is the full ΔW (Forge keeps LoRA up/down factors and merges them).

The parameter values come from `tiny_ldm` checkpoints (LDM names), so the same state dicts and LoRA
files serve both webuis; `ldm_weights(engine)` reads the engine back under LDM names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tiny_ldm

UNET_LDM_PREFIX = "model.diffusion_model."
UNET_FORGE_PREFIX = "diffusion_model."
TE_LDM_PREFIX = "cond_stage_model.transformer."
TE_FORGE_PREFIX = "clip_l.transformer."


# ---------------------------------------------------------------- Forge's ops
class ForgeLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class ForgeConv2d(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_channels), requires_grad=False)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias)


def _forge_ops(module: nn.Module) -> nn.Module:
    """Replaces every nn.Linear / nn.Conv2d in `module` by the Forge op of the same shape."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, ForgeLinear(child.in_features, child.out_features))
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, ForgeConv2d(child.in_channels, child.out_channels))
        else:
            _forge_ops(child)
    return module


class KModel(nn.Module):
    """Forge's UNet wrapper: parameters named `diffusion_model.<LDM name>`."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model


class IntegratedCLIP(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer


class JointTextEncoder(nn.ModuleDict):
    pass


# ---------------------------------------------------------------- Forge's patchers
def _get_attr_with_parent(obj, key):
    *path, last = key.split(".")
    for name in path:
        obj = getattr(obj, name)
    return obj, last, getattr(obj, last)


def _set_attr(obj, key, value):
    parent, last, _ = _get_attr_with_parent(obj, key)
    setattr(parent, last, value)


class LoraLoader:
    """Forge's merge-by-replacing-Parameters (backend/patcher/lora.py)."""

    def __init__(self, model):
        self.model = model
        self.backup = {}          # key -> the Parameter object the merge replaced
        self.loaded_hash = str([])
        self.refresh_count = 0

    @torch.no_grad()
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):
        wanted = str(list(lora_patches.keys()))
        if wanted == self.loaded_hash and not force_refresh:
            return
        self.refresh_count += 1
        merged = {}
        for _identifier, patches in lora_patches.items():
            for key, patch_list in patches.items():
                merged[key] = merged.get(key, []) + patch_list
        for key, old in self.backup.items():  # restore: the very Parameter objects
            _set_attr(self.model, key, old if isinstance(old, nn.Parameter) else nn.Parameter(old, requires_grad=False))
        self.backup = {}
        for key, patch_list in merged.items():
            _parent, _name, weight = _get_attr_with_parent(self.model, key)
            assert isinstance(weight, nn.Parameter), key
            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device)  # same object on the same device
            new = weight.detach().to(torch.float32).clone()
            for strength_patch, delta, strength_model in patch_list:
                if strength_model != 1.0:
                    new *= strength_model
                new += strength_patch * delta.to(new)
            _set_attr(self.model, key, nn.Parameter(new.to(weight.dtype), requires_grad=False))
        self.loaded_hash = wanted


class ModelPatcher:
    def __init__(self, model, load_device=torch.device("cpu"), offload_device=torch.device("cpu")):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.lora_patches = {}
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader

    def clone(self):
        n = type(self)(self.model, self.load_device, self.offload_device)
        n.lora_patches = dict(self.lora_patches)
        return n

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        """patches: {parameter name in self.model: ΔW}. Returns the keys that exist."""
        names = {k for k, _ in self.model.named_parameters()}
        these = {k: [(strength_patch, v, strength_model)] for k, v in patches.items() if k in names}
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = these
        return set(these)

    def refresh_loras(self):
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)


class UnetPatcher(ModelPatcher):
    pass


class CLIP:
    def __init__(self, model_dict=None, no_init=False):
        if no_init:
            return
        self.cond_stage_model = JointTextEncoder(model_dict or {})
        self.patcher = ModelPatcher(self.cond_stage_model)

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        return n

    def add_patches(self, *args, **kwargs):
        return self.patcher.add_patches(*args, **kwargs)


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


# ---------------------------------------------------------------- memory management
current_loaded_models = []  # patchers "on the GPU", most recent first


def load_models_gpu(patchers):
    """Forge loads a patcher unless that very patcher is loaded; loading unloads the other clones
    of its model and runs `refresh_loras()` (where Forge merges its LoRA patches)."""
    for patcher in patchers:
        if any(p is patcher for p in current_loaded_models):
            continue
        current_loaded_models[:] = [p for p in current_loaded_models if p.model is not patcher.model]
        patcher.refresh_loras()
        current_loaded_models.insert(0, patcher)


# ---------------------------------------------------------------- the engine
class TinyForgeSD1:
    """Like backend.diffusion_engine.sd15.StableDiffusion: not a torch module."""

    def __init__(self, state_dict=None):
        ldm = tiny_ldm.TinySD1()
        unet = KModel(_forge_ops(ldm.model.diffusion_model))
        text = _forge_ops(ldm.cond_stage_model.transformer)
        clip = CLIP(model_dict={"clip_l": IntegratedCLIP(text)})
        self.forge_objects = ForgeObjects(UnetPatcher(unet), clip, None, None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        # what ForgeDiffusionEngine sets for the webui's sake
        self.first_stage_model = None
        self.cond_stage_model = None
        self.tiling_enabled = False
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_sd3 = True, False, False, False
        if state_dict is not None:
            load_ldm_state_dict(self, state_dict)


def forge_name(ldm_name: str) -> tuple[str, str] | None:
    """LDM checkpoint name -> (which module, name inside it) in Forge's layout."""
    if ldm_name.startswith(UNET_LDM_PREFIX):
        return "unet", UNET_FORGE_PREFIX + ldm_name[len(UNET_LDM_PREFIX):]
    if ldm_name.startswith(TE_LDM_PREFIX):
        return "clip", TE_FORGE_PREFIX + ldm_name[len(TE_LDM_PREFIX):]
    return None


def _modules(engine, objects=None):
    objects = objects or engine.forge_objects_original
    return {"unet": objects.unet.model, "clip": objects.clip.cond_stage_model}


@torch.no_grad()
def load_ldm_state_dict(engine, state_dict):
    modules = _modules(engine)
    for ldm_name, value in state_dict.items():
        where = forge_name(ldm_name)
        if where is None:
            continue  # the VAE: not modelled
        _parent, _name, param = _get_attr_with_parent(modules[where[0]], where[1])
        param.copy_(value)


def ldm_weights(engine, objects=None) -> dict:
    """The weights the engine's modules hold now (clones), under LDM names."""
    out = {}
    for ldm_name in tiny_ldm.TinySD1().state_dict():
        where = forge_name(ldm_name)
        if where is not None:
            out[ldm_name] = _get_attr_with_parent(_modules(engine, objects)[where[0]], where[1])[2].detach().clone()
    return out


def builder(state_dict):
    """sd_models.model_builders["sd1"] in Forge mode: a new engine per (re)load."""
    return TinyForgeSD1(state_dict)


@torch.no_grad()
def sample(sd_model) -> torch.Tensor:
    """What sampling does with the model: loads the patchers of `forge_objects` (Forge merges its
    LoRA there) and runs every layer on a fixed input, reading the weights at call time. Returns
    the 'image' (all outputs, flattened)."""
    objects = sd_model.forge_objects
    load_models_gpu([objects.clip.patcher])
    load_models_gpu([objects.unet])
    gen = torch.Generator().manual_seed(0)
    outputs = []
    for root in (objects.clip.cond_stage_model, objects.unet.model):
        for _name, layer in root.named_modules():
            if isinstance(layer, ForgeLinear):
                x = torch.randn(1, layer.weight.shape[1], generator=gen)
            elif isinstance(layer, ForgeConv2d):
                x = torch.randn(1, layer.weight.shape[1], 2, 2, generator=gen)
            else:
                continue
            outputs.append(layer(x).flatten())
    return torch.cat(outputs)


def forge_builtin_lora(engine, deltas: dict | None, strength: float = 1.0, filename: str = "forge_lora.safetensors"):
    """What Forge's `sd_forge_lora` does at activate for `<lora:filename:strength>` (deltas: LDM
    name -> ΔW) or, with deltas None, for a prompt without LoRA: clone the original patchers, add
    the patches, make them `forge_objects_after_applying_lora`. Merged at the next sampling."""
    targets = [] if deltas is None else [[filename, strength, strength, False]]
    wanted = str(targets)
    if engine.current_lora_hash == wanted:
        return
    engine.current_lora_hash = wanted
    objects = engine.forge_objects_original.shallow_copy()
    if deltas is not None:
        unet, clip = objects.unet.clone(), objects.clip.clone()
        split = {"unet": {}, "clip": {}}
        for ldm_name, delta in deltas.items():
            where = forge_name(ldm_name)
            if where is not None:
                split[where[0]][where[1]] = delta
        unet.add_patches(filename=filename, patches=split["unet"], strength_patch=strength)
        clip.add_patches(filename=filename, patches=split["clip"], strength_patch=strength)
        objects.unet, objects.clip = unet, clip
    engine.forge_objects = objects
    engine.forge_objects_after_applying_lora = objects.shallow_copy()
