"""Which LoRA families a model takes: the same family, "unknown", and a generic DiT LoRA
("transformer": no width or metadata names its family) on Flux/SD3, where keys and shapes decide."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from dit_models import lora_file, low_rank, tiny_flux, tiny_sd3, FLUX  # noqa: E402

from lora_core.patcher import ActiveLora, Patcher  # noqa: E402
from lora_core.targets import Binding  # noqa: E402

H = FLUX["num_attention_heads"] * FLUX["attention_head_dim"]


def _dw(lora, key):
    t = lora.adapters[key].tensors
    return t["lora_up.weight"] @ t["lora_down.weight"]


def test_generic_transformer_lora_applies_to_flux_by_its_keys():
    model = tiny_flux()
    g = torch.Generator().manual_seed(2)
    key = "unet:transformer_blocks_0_attn_to_q"
    lora = lora_file({key: low_rank(H, H, 2, g),
                      "unet:transformer_blocks_0_attn1_to_q": low_rank(H, H, 2, g)}, "transformer")  # a PixArt-style key
    w0 = model.transformer_blocks[0].attn.to_q.weight.detach().clone()
    report = Patcher(Binding.from_diffusers(model)).apply([ActiveLora(lora, 1.0, 0.5)])
    lr = report.loras[0]
    assert (lr.matched, lr.unmatched) == (1, 1) and lr.refused is None
    torch.testing.assert_close(model.transformer_blocks[0].attn.to_q.weight.detach(), w0 + 0.5 * _dw(lora, key),
                               rtol=0, atol=1e-6)


def test_generic_transformer_lora_of_the_wrong_width_writes_nothing_on_sd3():
    model = tiny_sd3()
    width = model.transformer_blocks[0].attn.to_q.weight.shape[0]
    g = torch.Generator().manual_seed(3)
    lora = lora_file({"unet:transformer_blocks_0_attn_to_q": low_rank(width + 8, width + 8, 2, g)}, "transformer")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = Patcher(Binding.from_diffusers(model)).apply([ActiveLora(lora, 1.0, 1.0)])
    assert report.loras[0].matched == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_other_families_are_still_refused_naming_both():
    model = tiny_flux()
    g = torch.Generator().manual_seed(4)
    lora = lora_file({"unet:transformer_blocks_0_attn_to_q": low_rank(H, H, 2, g)}, "sdxl")
    before = model.transformer_blocks[0].attn.to_q.weight.detach().clone()
    report = Patcher(Binding.from_diffusers(model)).apply([ActiveLora(lora, 1.0, 1.0)])
    assert "sdxl" in report.loras[0].refused and "flux" in report.loras[0].refused
    assert torch.equal(model.transformer_blocks[0].attn.to_q.weight.detach(), before)
