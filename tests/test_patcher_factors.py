"""Low-rank factors stay as the file stored them: a write widens them and folds multiplier·scale
into its own copy, so reweighting never changes a cached LoRA (fp32 files included, where the
widening is a no-op and an in-place scale would corrupt the plan)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import FakeBinding, make_lora, oracle, ulp_distance  # noqa: E402

from lora_core.patcher import ActiveLora, Patcher  # noqa: E402


@pytest.mark.parametrize("factor_dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_reweighting_leaves_the_factors_untouched(factor_dtype):
    model = FakeBinding(seed=1)
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=2)
    for adapter in lora.adapters.values():
        adapter.up, adapter.down = adapter.up.to(factor_dtype), adapter.down.to(factor_dtype)
        adapter.tensors = {"lora_up.weight": adapter.up, "lora_down.weight": adapter.down}
    before = {k: (a.up.clone(), a.down.clone()) for k, a in lora.adapters.items()}
    p = Patcher(model)
    for te, unet in ((0.7, 1.3), (2.0, -0.5), (0.7, 1.3)):
        stack = [ActiveLora(lora, te=te, unet=unet)]
        p.apply(stack)
        want = oracle(model, w0, stack)
        for k, v in model.tensors.items():
            assert ulp_distance(v.detach(), want[k]) <= (1.0 if v.dtype == torch.float16 else 64.0), (k, te, unet)
    for k, a in lora.adapters.items():
        assert torch.equal(a.up, before[k][0]) and torch.equal(a.down, before[k][1]), k
    p.restore()
    for k, v in model.tensors.items():
        assert torch.equal(v.detach(), w0[k]), k
