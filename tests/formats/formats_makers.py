"""Valid example LoRA files made by real producers (diffusers + PEFT, LyCORIS) on tiny models.

For other areas' tests too: put this folder on sys.path and import from `formats_makers`:

    sys.path.insert(0, str(Path(__file__).parent / "formats"))
    from formats_makers import make_sd1_lora_files
    made = make_sd1_lora_files(tmp_path)          # made.kohya, made.diffusers: paths
    made.unet, made.text_encoder                  # the tiny base models (weights unpatched)
    made.reference_deltas                         # ModuleKey -> ΔW from PEFT's own merge

Everything is built in code (no downloads); a call takes about a second on 2 CPU cores.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from safetensors.torch import save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2", "conv1", "conv2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def tiny_unet(cross_attention_dim: int = 768, seed: int = 0, sdxl: bool = False):
    """A UNet2DConditionModel with the SD1 block layout (or SDXL-like: no attention in the first
    level, 2 transformer blocks, text-time embedding) and very few channels."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if sdxl:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(8, 16), norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
            cross_attention_dim=cross_attention_dim, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=4 * 6 + 32,
        )
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(8, 16), norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4, cross_attention_dim=cross_attention_dim,
        )
    return unet.eval()


def tiny_text_encoder(hidden: int = 768, seed: int = 0):
    """A one-layer CLIPTextModel of the given width (768: SD1/CLIP-L, 1024: SD2, 1280: bigG)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=100, max_position_embeddings=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(cfg).eval()


def add_peft_lora(model: nn.Module, targets, rank: int = 4, alpha: float = 8.0, use_dora: bool = False,
                  seed: int = 0, alpha_pattern: dict | None = None):
    """Attach a PEFT LoRA adapter ("default") with random (non-zero) A and B."""
    from peft import LoraConfig

    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                     use_dora=use_dora, alpha_pattern=alpha_pattern or {})
    torch.manual_seed(seed)
    if hasattr(model, "add_adapter") and not _is_transformers(model):
        model.add_adapter(cfg)  # diffusers models
    else:
        # transformers' add_adapter insists on a newer PEFT; this is what it does underneath
        from peft import inject_adapter_in_model

        inject_adapter_in_model(cfg, model, adapter_name="default")
        model.peft_config = {"default": cfg}
    # init_lora_weights=False gives random B too; make magnitudes differ from ‖W0‖ for DoRA
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.3 * torch.rand_like(p))
    return cfg


def _is_transformers(model) -> bool:
    return type(model).__module__.startswith("transformers")


def peft_reference_deltas(model: nn.Module, component: str) -> dict[str, torch.Tensor]:
    """ΔW = merged − original for every LoRA layer, from PEFT's own merge, on a deep copy."""
    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(model)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            w0 = base.weight.detach().clone()
            module.merge(safe_merge=True)
            out[canonical_key(component, name)] = (base.weight.detach() - w0).float()
    return out


def canonical_key(component: str, module_name: str) -> str:
    """ModuleKey of a module of a diffusers UNet / transformers CLIP text model (contract namespace:
    text encoder names start with `text_model_`, which transformers >= 5 no longer has)."""
    flat = module_name.replace(".", "_")
    if component != "unet" and not flat.startswith("text_model_"):
        flat = "text_model_" + flat
    return f"{component}:{flat}"


def base_weights(model: nn.Module, component: str) -> dict[str, torch.Tensor]:
    """Original weight of every adapted layer, keyed like the references."""
    from peft.tuners.lora import LoraLayer

    return {canonical_key(component, name): m.get_base_layer().weight.detach().clone()
            for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@dataclass
class MadeLora:
    diffusers: str                 # diffusers save_lora_weights file (PEFT keys + adapter metadata)
    kohya: str                     # the same LoRA as a kohya file (lora_unet_/lora_te1_, alpha keys)
    unet: nn.Module
    text_encoder: nn.Module
    reference_deltas: dict = field(default_factory=dict)   # ModuleKey -> fp32 ΔW (PEFT merge)
    base: dict = field(default_factory=dict)               # ModuleKey -> W0
    alpha: float = 8.0
    rank: int = 4


def _save_diffusers(directory: str, unet_sd, te_sd, unet_meta, te_meta, weight_name, te2_sd=None, te2_meta=None):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    if te2_sd is None:
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            directory, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
            unet_lora_adapter_metadata=unet_meta, text_encoder_lora_adapter_metadata=te_meta,
            weight_name=weight_name,
        )
    else:
        StableDiffusionXLLoraLoaderMixin.save_lora_weights(
            directory, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
            text_encoder_2_lora_layers=te2_sd, unet_lora_adapter_metadata=unet_meta,
            text_encoder_lora_adapter_metadata=te_meta, text_encoder_2_lora_adapter_metadata=te2_meta,
            weight_name=weight_name,
        )
    return os.path.join(directory, weight_name)


def to_kohya(diffusers_state: dict, alpha: float, path: str, metadata: dict | None = None) -> str:
    """diffusers' convert_state_dict_to_kohya, then the alpha keys set to the real lora_alpha:
    the converter always writes alpha = rank (it never sees lora_alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya(dict(diffusers_state))
    for k in list(kohya):
        if k.endswith(".alpha"):
            kohya[k] = torch.tensor(float(alpha))
    save_file({k: v.contiguous() for k, v in kohya.items()}, path, metadata=metadata or {})
    return path


def make_sd1_lora_files(directory, rank: int = 4, alpha: float = 8.0, seed: int = 0, use_dora: bool = False,
                        family: str = "sd1") -> MadeLora:
    """A diffusers file and a kohya file of one PEFT LoRA on a tiny SD1 (or SD2: family="sd2",
    SDXL: family="sdxl") UNet + text encoder(s)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    context, hidden = {"sd1": (768, 768), "sd2": (1024, 1024), "sdxl": (2048, 768)}[family]
    unet = tiny_unet(context, seed=seed, sdxl=family == "sdxl")
    te = tiny_text_encoder(hidden, seed=seed + 1)
    te2 = tiny_text_encoder(1280, seed=seed + 2) if family == "sdxl" else None
    ucfg = add_peft_lora(unet, UNET_TARGETS, rank, alpha, use_dora, seed + 3)
    tcfg = add_peft_lora(te, TE_TARGETS, rank, alpha, use_dora, seed + 4)
    t2cfg = add_peft_lora(te2, TE_TARGETS, rank, alpha, use_dora, seed + 5) if te2 is not None else None

    refs, base = {}, {}
    for model, comp in ((unet, "unet"), (te, "te1"), (te2, "te2")):
        if model is not None:
            refs.update(peft_reference_deltas(model, comp))
            base.update(base_weights(model, comp))

    path = _save_diffusers(
        directory, get_peft_model_state_dict(unet), get_peft_model_state_dict(te),
        ucfg.to_dict(), tcfg.to_dict(), f"{family}_diffusers.safetensors",
        te2_sd=get_peft_model_state_dict(te2) if te2 is not None else None,
        te2_meta=t2cfg.to_dict() if t2cfg is not None else None,
    )
    kohya = to_kohya(load_file(path), alpha, os.path.join(directory, f"{family}_kohya.safetensors"))
    made = MadeLora(diffusers=path, kohya=kohya, unet=unet, text_encoder=te, reference_deltas=refs,
                    base=base, alpha=alpha, rank=rank)
    made.text_encoder_2 = te2
    return made


def rename_keys(src: str, dst: str, rename, metadata: dict | None = None) -> str:
    """Copy a safetensors file with every key passed through `rename` (None drops the key)."""
    from safetensors import safe_open

    out = {}
    with safe_open(src, framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            nk = rename(k)
            if nk is not None:
                out[nk] = f.get_tensor(k).contiguous()
    save_file(out, dst, metadata=metadata if metadata is not None else meta)
    return dst
