"""RIG-ONLY shim (not part of lora_core): lets the real Forge run a tiny random Flux.1 on a CPU.

Installed by tools/forge_flux_check.sh as the extension `forge_flux_rig_shim` in a COPY of the Forge
tree; Forge imports every enabled extension's preload.py at start-up, before any model loads.

Why: huggingface_guess (repositories/huggingface_guess/huggingface_guess/detection.py,
`detect_unet_config`) recognises a Flux transformer by a key and then returns the 12B model's fixed
sizes (hidden 3072, 19 + 38 blocks, context_in_dim 4096, vec_in_dim 768); Forge builds the model from
that config, so a narrower checkpoint cannot load. This wraps `detect_unet_config` and, for Flux
only, replaces those sizes by the ones the checkpoint's tensors have. For the real 12B checkpoint
the values it reads are the hard-coded ones, so the result is unchanged. Nothing else in Forge is
touched (the component configs of the tiny CLIP-L / T5 / VAE are files in the copied tree, written by
make_tiny_flux.py).
"""
import logging

log = logging.getLogger("forge_flux_rig_shim")

FLUX_AXES_128 = [16, 56, 56]   # BFL's rotary axes; they need a head dim of 128


def _count(keys, prefix):
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in keys):
        n += 1
    return n


def sizes_from_tensors(state_dict, prefix):
    """The Flux config entries that follow from the tensors' shapes."""
    def shape(name):
        return state_dict[prefix + name].shape

    keys = [k for k in state_dict.keys() if k.startswith(prefix)]
    hidden = shape("img_in.weight")[0]
    head_dim = shape("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    if head_dim != 128:
        raise ValueError(f"forge_flux_rig_shim: head dim {head_dim}; Flux's rotary axes need 128")
    return {
        "in_channels": shape("img_in.weight")[1] // 4,          # 2x2 patches
        "vec_in_dim": shape("vector_in.in_layer.weight")[1],
        "context_in_dim": shape("txt_in.weight")[1],
        "hidden_size": hidden,
        "mlp_ratio": shape("double_blocks.0.img_mlp.0.weight")[0] / hidden,
        "num_heads": hidden // head_dim,
        "depth": _count(keys, prefix + "double_blocks."),
        "depth_single_blocks": _count(keys, prefix + "single_blocks."),
        "axes_dim": list(FLUX_AXES_128),
        "qkv_bias": prefix + "double_blocks.0.img_attn.qkv.bias" in state_dict,
    }


def install():
    import modules.paths  # noqa: F401  (puts repositories/huggingface_guess on sys.path)
    from huggingface_guess import detection

    original = detection.detect_unet_config
    if getattr(original, "_forge_flux_rig_shim", False):
        return

    def detect_unet_config(state_dict, key_prefix):
        config = original(state_dict, key_prefix)
        if isinstance(config, dict) and config.get("image_model") == "flux":
            sizes = sizes_from_tensors(state_dict, key_prefix)
            changed = {k: v for k, v in sizes.items() if config.get(k) != v}
            config.update(sizes)
            if changed:
                log.warning("forge_flux_rig_shim: Flux sizes from the checkpoint's tensors: %s", changed)
        return config

    detect_unet_config._forge_flux_rig_shim = True
    detection.detect_unet_config = detect_unet_config   # model_config_from_unet looks it up at call time


install()
