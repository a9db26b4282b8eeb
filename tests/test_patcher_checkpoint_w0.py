"""Exact restore without W0 copies: the original weights are read back from the safetensors
checkpoint the model was loaded from (patcher/checkpoint_w0.py).

The reference is the same Engine keeping copies: every state (apply, reweight, switch, stack,
restore) must be bit-identical between the two, while the file-backed one holds no backup bytes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from engine_makers import make_lora, tiny_ldm_checkpoint  # noqa: E402

from lora_core.engine import Engine  # noqa: E402
from lora_core.patcher.checkpoint_w0 import CheckpointW0, for_checkpoint  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.targets import Binding  # noqa: E402


def loaded_model(ckpt_path, dtype=None):
    """What a host holds after loading the checkpoint: one Parameter per tensor (optionally cast)."""
    from safetensors.torch import load_file

    out = {}
    for k, v in load_file(ckpt_path).items():
        if v.is_floating_point():
            v = v.to(dtype or v.dtype)
        out[k] = torch.nn.Parameter(v.clone(), requires_grad=False)
    return out


def bits(t):
    return t.detach().contiguous().view(torch.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w0")
    ckpt = d / "model.safetensors"
    save_file(tiny_ldm_checkpoint(torch.float16), os.fspath(ckpt))
    a = make_lora(d, "a", seed=11, kohya=True)
    b = make_lora(d, "b", seed=12, kohya=True)
    return ckpt, a, b


SEQUENCE = [
    [("a", 1.0, 1.0)],
    [("a", 1.0, 0.5)],                    # a new weight
    [("b", 0.7, 1.0)],                    # a switch
    [("a", 1.0, 1.0), ("b", 1.0, 0.7)],   # a stack of two
    [("a", 0.0, 0.4)],                    # text encoder back to W0, UNet reweighted
    [],                                   # restore through an empty stack
    [("b", 1.0, 1.0)],
]


@pytest.mark.parametrize("live_dtype", [None, torch.float32], ids=["as stored", "fp16 file loaded as fp32"])
def test_every_state_equals_the_copying_engine_and_no_backup_bytes_are_held(files, live_dtype):
    ckpt, a, b = files
    paths = {"a": a, "b": b}
    plain_model, file_model = loaded_model(ckpt, live_dtype), loaded_model(ckpt, live_dtype)
    pristine = {k: v.detach().clone() for k, v in plain_model.items()}
    plain = Engine(Binding.from_ldm(plain_model))
    backed = Engine(Binding.from_ldm(file_model), w0_source=for_checkpoint(ckpt))
    for stack in SEQUENCE:
        requests = [ApplyRequest(paths[n], te=te, unet=unet) for n, te, unet in stack]
        r1, r2 = plain.apply(requests), backed.apply(requests)
        assert [x.matched for x in r1.loras] == [x.matched for x in r2.loras]
        for name in plain_model:
            assert torch.equal(bits(plain_model[name]), bits(file_model[name])), name
        if stack:
            assert plain.patcher.backup_bytes > 0 and r1.slots_recomputed > 0
            assert backed.patcher.backup_bytes == 0
            assert backed.patcher.file_backed_tensors == r1.backed_up_tensors == r2.backed_up_tensors
    backed.apply([ApplyRequest(a, te=1.0, unet=1.0)])
    backed.restore()
    for name, tensor in file_model.items():
        assert torch.equal(bits(tensor), bits(pristine[name])), name
    assert backed.patcher.file_backed_tensors == 0


def test_a_tensor_the_host_changed_after_loading_keeps_a_copy(files):
    ckpt, a, _b = files
    model = loaded_model(ckpt)
    name = next(k for k in model if k.endswith("attn1.to_q.weight"))
    with torch.no_grad():
        model[name].add_(0.5)  # e.g. another extension edited it: the file is no longer its W0
    changed = model[name].detach().clone()
    engine = Engine(Binding.from_ldm(model), w0_source=for_checkpoint(ckpt))
    engine.apply([ApplyRequest(a, te=1.0, unet=1.0)])
    assert engine.patcher.backup_bytes == changed.numel() * changed.element_size()
    assert not torch.equal(model[name].detach(), changed)
    engine.restore()
    assert torch.equal(bits(model[name]), bits(changed))


def test_a_checkpoint_rewritten_in_place_is_noticed_not_used(tmp_path, files):
    _ckpt, a, _b = files
    ckpt = tmp_path / "copy.safetensors"
    save_file(tiny_ldm_checkpoint(torch.float16), os.fspath(ckpt))
    model = loaded_model(ckpt)
    engine = Engine(Binding.from_ldm(model), w0_source=for_checkpoint(ckpt))
    engine.apply([ApplyRequest(a, te=1.0, unet=1.0)])
    stat = os.stat(ckpt)
    with open(ckpt, "r+b") as f:  # same size, new content, new mtime
        f.seek(stat.st_size - 8)
        f.write(b"\x00" * 8)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(RuntimeError, match="changed on disk"):
        engine.restore()


def test_only_safetensors_files_are_sources(tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not opened")
    assert for_checkpoint(pickle) is None
    assert for_checkpoint(tmp_path / "missing.safetensors") is None
    assert for_checkpoint(None) is None


def test_names_with_the_a1111_hijack_level_find_the_file_key(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"cond_stage_model.transformer.text_model.x.weight": torch.ones(2)}, os.fspath(path))
    source = CheckpointW0(path)
    assert torch.equal(source("cond_stage_model.wrapped.transformer.text_model.x.weight"), torch.ones(2))
    assert source("cond_stage_model.transformer.text_model.y.weight") is None
