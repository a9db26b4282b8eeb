"""Property tests: whatever tensors or bytes a file holds, load_lora returns or raises
LoraFormatError, and Adapter.delta returns a ΔW of the base's shape or raises ValueError."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lora_core.formats import LoraFormatError, load_lora

SUFFIXES = ["lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale", "dora_scale",
            "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
            "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
            "weight", "on_input", "oft_blocks", "rescale", "a1.weight", "a2.weight", "b1.weight",
            "b2.weight", "diff", "diff_b", "w_norm", "b_norm", "lora_A.weight", "lora_B.weight"]
MODULES = ["lora_unet_a_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1", "unet.b.to_q"]

shapes = st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=4)
entries = st.dictionaries(st.tuples(st.sampled_from(MODULES), st.sampled_from(SUFFIXES)), shapes, max_size=7)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=entries, base_shape=st.sampled_from([(6, 6), (4, 6), (6, 4, 3, 3), (6,), (36, 6)]))
def test_random_tensor_files(tmp_path, entries, base_shape):
    g = torch.Generator().manual_seed(0)
    tensors = {f"{m}.{s}": torch.randn(shape, generator=g) * 0.3 for (m, s), shape in entries.items()}
    path = tmp_path / "fuzz.safetensors"
    save_file(tensors, str(path))
    try:
        lora = load_lora(path)
    except LoraFormatError as e:
        assert e.problem
        return
    for key, adapter in lora.adapters.items():
        base = torch.randn(base_shape)
        try:
            d = adapter.delta(base)
        except ValueError as e:
            assert key in str(e)
            continue
        assert d.shape == base.shape and d.dtype == torch.float32
        adapter.delta_bias(torch.zeros(base_shape[0]))
        lr = adapter.low_rank()
        if lr is not None:
            assert lr[0].shape[1] == lr[1].shape[0]


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    p = tmp_path_factory.mktemp("fz") / "v.safetensors"
    save_file({"lora_unet_a.lora_up.weight": torch.randn(8, 2), "lora_unet_a.lora_down.weight": torch.randn(2, 8),
               "lora_unet_a.alpha": torch.tensor(1.0)}, str(p), metadata={"k": "v"})
    return p.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=400)))
def test_corrupted_bytes(tmp_path, valid_bytes, edits, cut):
    data = bytearray(valid_bytes)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: min(cut, len(data))]
    path = tmp_path / "c.safetensors"
    path.write_bytes(bytes(data))
    try:
        lora = load_lora(path)
    except LoraFormatError:
        return
    for adapter in lora.adapters.values():
        try:
            adapter.delta(torch.randn(8, 8))
        except ValueError:
            pass
