"""Engine: requests -> cached LoraFiles -> patcher, with bad input reported instead of raised."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from engine_makers import base_models, make_lora  # noqa: E402
from patcher_fakes import FakeBinding, FullAdapter, make_lora as make_fake  # noqa: E402

from lora_core.engine import Engine  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.patcher import LoraCache  # noqa: E402
from lora_core.targets import Binding  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    garbage = d / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return {
        "a": make_lora(d, "a", seed=1),
        "b": make_lora(d, "b", seed=2, with_te=False),
        "xl": make_lora(d, "xl", seed=3, kohya=True, metadata={"ss_base_model_version": "sdxl_base_v1-0"}),
        "garbage": str(garbage),
        "missing": str(d / "nope.safetensors"),
    }


def _snapshot(*models):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


def _same(models, snaps):
    return all(torch.equal(m.state_dict()[k], s[k]) for m, s in zip(models, snaps) for k in s)


def test_bad_files_are_reported_and_the_rest_applied(files):
    unet, te = base_models()
    engine = Engine(Binding.from_diffusers(unet, [te]))
    report = engine.apply([ApplyRequest(files["missing"], 1, 1), ApplyRequest(files["a"], 1, 1),
                           ApplyRequest(files["garbage"], 1, 1)])
    names = [r.name for r in report.loras]
    assert names == ["nope", "a", "garbage"]
    assert report.loras[0].refused and report.loras[2].refused and report.loras[1].applied
    assert any("nope.safetensors" in w for w in report.warnings)
    assert any("garbage" in w for w in report.warnings)
    assert report.slots_recomputed > 0


def test_other_family_is_refused_naming_both(files):
    unet, te = base_models()
    snaps = _snapshot(unet, te)
    engine = Engine(Binding.from_diffusers(unet, [te]))
    assert engine.family == "sd1"
    report = engine.apply([ApplyRequest(files["xl"], 1, 1)])
    assert report.loras[0].refused
    msg = " ".join(report.warnings)
    assert "xl" in msg and "sdxl" in msg and "sd1" in msg
    assert report.slots_recomputed == 0
    assert _same([unet, te], snaps)


def test_cache_serves_repeated_paths_and_same_stack_is_free(files):
    unet, te = base_models()
    snaps = _snapshot(unet, te)
    engine = Engine(Binding.from_diffusers(unet, [te]), cache_size=4)
    first = engine.apply([ApplyRequest(files["a"], 1.0, 0.5), ApplyRequest(files["b"], 1.0, 1.0)])
    again = engine.apply([ApplyRequest(files["a"], 1.0, 0.5), ApplyRequest(files["b"], 1.0, 1.0)])
    assert again.slots_recomputed == 0
    assert [r.matched for r in again.loras] == [r.matched for r in first.loras]
    reweight = engine.apply([ApplyRequest(files["a"], 1.0, 0.5), ApplyRequest(files["b"], 1.0, 0.25)])
    b_unet_modules = first.loras[1].matched  # b has no text-encoder part
    assert reweight.slots_recomputed == b_unet_modules
    assert engine.cache.misses == 2 and engine.cache.hits >= 4
    engine.restore()
    assert _same([unet, te], snaps)


def test_lora_whose_math_fails_is_dropped_and_the_rest_applied(tmp_path):
    model = FakeBinding(seed=3)
    good = make_fake(model, "good", seed=1, keys=["te1:q", "unet:mid_ff"])
    bad = make_fake(model, "bad", seed=2, keys=["unet:down_attn_to_q", "unet:up_fp32"])
    bad.adapters["unet:up_fp32"] = FullAdapter("unet:up_fp32", torch.zeros(8, 8), fail=True)
    paths = {}
    for lora in (good, bad):
        p = tmp_path / f"{lora.name}.safetensors"
        p.write_bytes(b"x")
        paths[lora.name] = str(p)
    by_path = {paths["good"]: good, paths["bad"]: bad}
    engine = Engine(model, cache=LoraCache(loader=lambda p: by_path[p]))
    w0 = model.snapshot()
    report = engine.apply([ApplyRequest(paths["bad"], 1, 1), ApplyRequest(paths["good"], 1, 1)])
    assert report.loras[0].refused and "corrupt tensor" in report.loras[0].refused
    assert report.loras[1].applied
    assert any("bad" in w and "unet:up_fp32" in w for w in report.warnings)
    touched = {k for k in w0 if not torch.equal(model.tensors[k], w0[k])}
    assert touched == {"te.q.weight", "mid.ff.weight"}
    assert [a.lora for a in engine.patcher.stack] == [good]


class _Library:
    """Follows Library.find's contract: an Entry with .path, or NotFound."""

    def __init__(self, paths):
        self.paths = paths

    def find(self, name):
        from lora_core.library import NotFound

        if name not in self.paths:
            raise NotFound(name)
        return type("Entry", (), {"path": self.paths[name]})()


def test_activate_parses_tags_and_reports_unknown_names(files):
    unet, te = base_models()
    engine = Engine(Binding.from_diffusers(unet, [te]))
    lib = _Library({"a": files["a"]})
    clean, report = engine.activate("a cat <lora:a:0.8:0.5>, <lora:unknown:1> sitting", lib)
    assert "<lora" not in clean and "cat" in clean and "sitting" in clean
    assert [r.name for r in report.loras] == ["a"]
    assert [(x.te, x.unet) for x in engine.patcher.stack] == [(0.8, 0.5)]
    assert any("unknown" in w for w in report.warnings)
    # a prompt with no tags takes every LoRA out again
    snaps_after = engine.activate("plain prompt", lib)[1]
    assert snaps_after.loras == [] and engine.patcher.backup_bytes == 0


def test_openclip_fused_in_proj_matches_separate_qkv(files):
    """SD2/SDXL-bigG checkpoints store q/k/v as one in_proj tensor: patching its row slices must
    give exactly the weights of the separately stored HF q/k/v, and backup/restore it once."""
    sys.path.insert(0, str(Path(__file__).parent / "targets"))
    from models import clip_to_openclip

    _, te_hf = base_models()
    _, te_src = base_models()
    state = {("text_model." + k if not k.startswith("text_model.") else k): v.clone()
             for k, v in te_src.state_dict().items()}
    oc = clip_to_openclip(state, "cond_stage_model.model.")
    oc_original = {k: v.clone() for k, v in oc.items()}
    hf_report = Engine(Binding.from_diffusers(None, [te_hf])).apply([ApplyRequest(files["a"], 0.7, 1.0)])
    oc_engine = Engine(Binding.from_ldm(oc))
    oc_report = oc_engine.apply([ApplyRequest(files["a"], 0.7, 1.0)])
    assert hf_report.loras[0].matched == oc_report.loras[0].matched == 6
    assert hf_report.backed_up_tensors == 6 and oc_report.backed_up_tensors == 4  # q/k/v share in_proj
    attn = dict(te_hf.named_modules())
    prefix = "encoder.layers.0.self_attn." if "encoder.layers.0.self_attn" in attn else "text_model.encoder.layers.0.self_attn."
    qkv = torch.cat([attn[prefix + p].weight.detach() for p in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(oc["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], qkv)
    assert torch.equal(oc["cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight"],
                       attn[prefix + "out_proj"].weight.detach())
    oc_engine.restore()
    assert all(torch.equal(oc[k], oc_original[k]) for k in oc)
