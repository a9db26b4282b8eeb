"""Algorithm forms no installed producer writes: kohya's OFT, pre-4.0 LyCORIS `oft_diag`, the old
GLoRA layout, LoKr with two full factors. Oracles are written from those tools' published math
(kohya sd-scripts networks/oft.py forward, A1111 network_oft.py / network_glora.py), independently
of formats' code."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_core.formats import load_lora


def _kohya_oft_reference(w0, blocks, alpha):
    """kohya OFT: y = (W0 x) @ R, R = blockdiag((I+Q)(I−Q)⁻¹), ‖Q‖ clamped to alpha·out_dim."""
    out_dim = w0.shape[0]
    q = blocks - blocks.transpose(1, 2)
    norm_q = torch.norm(q.flatten())
    new_norm = torch.clamp(norm_q, max=alpha * out_dim)
    q = q * ((new_norm + 1e-8) / (norm_q + 1e-8))
    eye = torch.eye(blocks.shape[1]).unsqueeze(0).repeat(blocks.shape[0], 1, 1)
    r = torch.block_diag(*torch.matmul(eye + q, (eye - q).inverse()))
    x = torch.eye(w0.shape[1])
    y = (x @ w0.T) @ r  # rows: outputs for basis inputs
    return y.T - w0


@pytest.mark.parametrize("alpha", [1e-3, 10.0])
def test_kohya_oft(tmp_path, alpha):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(12, 10, generator=g)
    blocks = torch.randn(3, 4, 4, generator=g) * 0.3
    save_file({"lora_unet_a_attn1_to_q.oft_blocks": blocks, "lora_unet_a_attn1_to_q.alpha": torch.tensor(alpha)},
              str(tmp_path / "oft.safetensors"))
    a = load_lora(tmp_path / "oft.safetensors").adapters["unet:a_attn1_to_q"]
    assert a.kind == "oft"
    assert torch.allclose(a.delta(w0), _kohya_oft_reference(w0, blocks, alpha), atol=1e-5)


def _pre4_lycoris_oft_diag(out_dim, block_size, g, rescaled=False):
    """What LyCORIS before 4.0 wrote for diag-OFT: its state dict held `oft_diag` = R, the rotation
    already built from the trained generators (Cayley of Q = B − Bᵀ, rows optionally rescaled),
    shape (block_num, block_size, block_size), next to an `alpha` its loaders ignore."""
    block_num = out_dim // block_size
    trained = torch.randn(block_num, block_size, block_size, generator=g) * 0.4
    q = trained - trained.transpose(1, 2)
    eye = torch.eye(block_size).expand(block_num, -1, -1)
    r = torch.linalg.solve((eye - q).transpose(1, 2), (eye + q).transpose(1, 2)).transpose(1, 2)  # (I+Q)(I−Q)⁻¹
    if rescaled:
        r = (torch.rand(block_num, block_size, 1, generator=g) + 0.5) * r
    return r


def _a1111_is_r_merge(w0, r, multiplier):
    """A1111 network_oft.py with is_R (old `oft_diag`): block_size = R.shape[1], the output rows
    cut into out/block_size blocks, row m of block k becomes Σ_n R[k,n,m]·W0[k·b+n]: W' = Rᵀ·W0
    blockwise, R as stored (no Cayley, no constraint); merged = W0 + multiplier·(W' − W0)."""
    rotated = (torch.block_diag(*r).T @ w0.reshape(w0.shape[0], -1)).reshape(w0.shape)
    return w0 + multiplier * (rotated - w0)


@pytest.mark.parametrize("shape,block,rescaled", [((8, 5), 4, False), ((8, 5, 3, 3), 4, False),
                                                  ((12, 6), 3, True)])
def test_pre4_lycoris_oft_diag_is_the_rotation_itself(tmp_path, shape, block, rescaled):
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(*shape, generator=g)
    r = _pre4_lycoris_oft_diag(shape[0], block, g, rescaled)
    save_file({"lora_unet_b_conv1.oft_diag": r, "lora_unet_b_conv1.alpha": torch.tensor(4.0)},
              str(tmp_path / "diag.safetensors"))
    a = load_lora(tmp_path / "diag.safetensors").adapters["unet:b_conv1"]
    assert a.kind == "oft"
    for m in (1.0, 0.6, -0.5):
        merged = w0 + m * a.delta(w0)
        assert torch.allclose(merged, _a1111_is_r_merge(w0, r, m), atol=1e-5), m
    # the fixture tells the two readings apart: R taken for generators (a Cayley transform of R
    # itself, the old mistake) gives another weight
    as_generators = _kohya_oft_reference(w0.reshape(shape[0], -1), r, alpha=1e9).reshape(shape)
    assert not torch.allclose(a.delta(w0), as_generators, atol=1e-2)


@pytest.mark.parametrize("out_dim", [12, 10])
def test_old_glora_layout(tmp_path, out_dim):
    """A1111 network_glora.py: ΔW = b2@b1 + (W0@a2)@a1 (w1a = a1, w2a = a2, ...), scale alpha/r. On a
    square layer the factor shapes alone also read as the current layout of rank in_dim: the rank
    reported and the one the scale uses are both r."""
    g = torch.Generator().manual_seed(2)
    in_dim, r = 10, 3
    w0 = torch.randn(out_dim, in_dim, generator=g)
    a1, a2 = torch.randn(r, in_dim, generator=g), torch.randn(in_dim, r, generator=g)
    b1, b2 = torch.randn(r, in_dim, generator=g), torch.randn(out_dim, r, generator=g)
    m = "lora_unet_c_proj_in"
    save_file({f"{m}.a1.weight": a1, f"{m}.a2.weight": a2, f"{m}.b1.weight": b1, f"{m}.b2.weight": b2,
               f"{m}.alpha": torch.tensor(1.5)}, str(tmp_path / "glora.safetensors"))
    a = load_lora(tmp_path / "glora.safetensors").adapters["unet:c_proj_in"]
    expected = (b2 @ b1 + (w0 @ a2) @ a1) * (1.5 / r)
    assert torch.allclose(a.delta(w0), expected, atol=1e-5)
    assert a.rank == r and a.kind == "glora"


def test_lokr_two_full_factors_ignore_alpha(tmp_path):
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(2, 3, generator=g), torch.randn(4, 5, generator=g)
    save_file({"lora_unet_d.lokr_w1": w1, "lora_unet_d.lokr_w2": w2, "lora_unet_d.alpha": torch.tensor(100.0)},
              str(tmp_path / "lokr.safetensors"))
    a = load_lora(tmp_path / "lokr.safetensors").adapters["unet:d"]
    assert torch.allclose(a.delta(torch.zeros(8, 15)), torch.kron(w1, w2))


def test_ia3_and_oft_use_base_on_its_device_and_dtype(tmp_path):
    g = torch.Generator().manual_seed(4)
    save_file({"lora_unet_e.weight": torch.randn(6, generator=g).half(), "lora_unet_e.on_input": torch.tensor(0)},
              str(tmp_path / "ia3.safetensors"))
    a = load_lora(tmp_path / "ia3.safetensors").adapters["unet:e"]
    w0 = torch.randn(6, 4, generator=g).to(torch.bfloat16)
    d = a.delta(w0)
    assert d.dtype == torch.float32 and d.shape == w0.shape
    expected = w0.float() * a.tensors["weight"].float()[:, None]
    assert torch.allclose(d, expected)


def test_delta_shape_mismatch_is_a_clear_error(tmp_path):
    save_file({"lora_unet_f.lora_up.weight": torch.randn(8, 2), "lora_unet_f.lora_down.weight": torch.randn(2, 8)},
              str(tmp_path / "f.safetensors"))
    a = load_lora(tmp_path / "f.safetensors").adapters["unet:f"]
    with pytest.raises(ValueError, match="unet:f"):
        a.delta(torch.zeros(4, 4))
    # a Linear LoRA on a 1×1 conv weight (SD1 proj_in) is fine: same number of elements
    assert a.delta(torch.zeros(8, 8, 1, 1)).shape == (8, 8, 1, 1)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_delta_lives_on_the_base_device(tmp_path, device):
    g = torch.Generator().manual_seed(5)
    t = {"lora_unet_a.lora_up.weight": torch.randn(8, 2, generator=g).half(),
         "lora_unet_a.lora_down.weight": torch.randn(2, 8, generator=g).half(),
         "lora_unet_a.dora_scale": torch.rand(8, 1, generator=g) + 0.5,
         "lora_unet_o.oft_blocks": torch.randn(2, 4, 4, generator=g) * 0.1}
    save_file(t, str(tmp_path / "dev.safetensors"))
    lora = load_lora(tmp_path / "dev.safetensors")
    base = torch.randn(8, 8, generator=g).to(device=device, dtype=torch.float16)
    for adapter in lora.adapters.values():
        d = adapter.delta(base)
        assert d.device.type == device and d.dtype == torch.float32
        cpu = adapter.delta(base.cpu())
        assert torch.allclose(d.cpu(), cpu, atol=1e-3)
    # the file's tensors are untouched (still on CPU, still fp16)
    assert lora.adapters["unet:a"].tensors["lora_up.weight"].dtype == torch.float16
