"""The finiteness check on loaded tensors: small tensors are tested through one sum each and one
test of all sums; the refusal must still name the right tensor, and no finite file is refused."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_core.formats import LoraFormatError, load_lora


def many_modules(n=60, dtype=torch.float16, rank=4, width=32):
    g = torch.Generator().manual_seed(0)
    t = {}
    for i in range(n):
        m = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_{i}_attn1_to_q"
        t[f"{m}.lora_down.weight"] = torch.randn(rank, width, generator=g).to(dtype)
        t[f"{m}.lora_up.weight"] = torch.randn(width, rank, generator=g).to(dtype)
        t[f"{m}.alpha"] = torch.tensor(float(rank))
    return t


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_bad_value_among_many_small_tensors_is_named(tmp_path, dtype, bad):
    t = many_modules(dtype=dtype)
    victim = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_37_attn1_to_q.lora_up.weight"
    t[victim][5, 2] = bad
    path = tmp_path / "bad.safetensors"
    save_file(t, str(path))
    with pytest.raises(LoraFormatError) as info:
        load_lora(path)
    msg = str(info.value)
    assert str(path) in msg and victim in msg and "NaN or Inf" in msg


def test_bad_alpha_scalar_is_named(tmp_path):
    t = many_modules()
    victim = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_3_attn1_to_q.alpha"
    t[victim] = torch.tensor(float("inf"))
    save_file(t, str(tmp_path / "a.safetensors"))
    with pytest.raises(LoraFormatError, match="transformer_blocks_3_attn1_to_q.alpha"):
        load_lora(tmp_path / "a.safetensors")


def test_large_tensor_with_nan_is_named(tmp_path):
    t = many_modules(n=2)
    victim = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q.lora_down.weight"
    t[victim] = torch.zeros(4, 70000, dtype=torch.float16)  # above the small-tensor limit
    t[victim][3, 69999] = float("nan")
    t[victim.replace("lora_down", "lora_up")] = torch.zeros(32, 4, dtype=torch.float16)
    save_file(t, str(tmp_path / "big.safetensors"))
    with pytest.raises(LoraFormatError, match="transformer_blocks_1_attn1_to_q.lora_down.weight"):
        load_lora(tmp_path / "big.safetensors")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_extreme_finite_values_are_accepted(tmp_path, dtype):
    """Sums of the largest finite values must not overflow into a false refusal."""
    t = many_modules(n=3, dtype=dtype)
    big = torch.finfo(dtype).max
    for k in list(t):
        if k.endswith("weight"):
            t[k] = torch.full_like(t[k], big)
    t["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = \
        torch.full((32, 2048), big, dtype=dtype)  # 65536 elements: the largest "small" tensor
    t["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"] = \
        torch.full((2048, 32), -big, dtype=dtype)
    save_file(t, str(tmp_path / "big.safetensors"))
    lora = load_lora(tmp_path / "big.safetensors")
    assert len(lora.adapters) == 3
