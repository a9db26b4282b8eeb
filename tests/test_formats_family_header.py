"""One family detector: `load_lora` (formats) and the library's header-only index must agree,
since the library now calls `formats.family.family_from_header`."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_core.formats import load_lora
from lora_core.formats.family import family_from_header
from lora_core.formats.header import read_header
from lora_core.library.inspect_header import family_from_header_or_names as library_family


def lora(module, out_dim, in_dim, rank=4, algo="lora"):
    if algo == "loha":
        return {f"{module}.hada_w1_a": torch.zeros(out_dim, rank), f"{module}.hada_w1_b": torch.zeros(rank, in_dim),
                f"{module}.hada_w2_a": torch.zeros(out_dim, rank), f"{module}.hada_w2_b": torch.zeros(rank, in_dim),
                f"{module}.alpha": torch.tensor(float(rank))}
    return {f"{module}.lora_down.weight": torch.zeros(rank, in_dim),
            f"{module}.lora_up.weight": torch.zeros(out_dim, rank), f"{module}.alpha": torch.tensor(float(rank))}


K = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
CASES = {
    "sd1": ({**lora(K, 640, 768), **lora(TE, 768, 768)}, {}),
    "sd2": ({**lora(K, 640, 1024), **lora(TE, 1024, 1024)}, {}),
    "sdxl": ({**lora(K, 640, 2048), **lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280)}, {}),
    "sdxl-loha": ({**lora(K, 640, 2048, algo="loha")}, {}),
    "sdxl-names": ({**lora("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q", 640, 640)}, {}),
    "flux": ({**lora("lora_unet_double_blocks_0_img_attn_qkv", 9216, 3072)}, {}),
    "meta-sd2": ({**lora("lora_unet_mid_block_resnets_0_conv1", 1280, 1280)}, {"ss_v2": "True"}),
    "peft-sd1": ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": torch.zeros(4, 768),
                  "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight": torch.zeros(640, 4)},
                 {}),
}
EXPECTED = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "sdxl-loha": "sdxl", "sdxl-names": "sdxl", "flux": "flux",
            "meta-sd2": "sd2", "peft-sd1": "sd1"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_and_library_agree(tmp_path, case):
    tensors, metadata = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    header, meta, _offset = read_header(str(path))
    from_header = family_from_header(header, meta)
    assert from_header == EXPECTED[case]
    assert library_family(header, meta) == from_header
    assert load_lora(path).family == from_header
