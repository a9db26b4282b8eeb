"""The algorithm registry (`formats.algorithms`): torch-free, one owner per suffix, and the
rank / shape-hint definitions `load_lora`, `info` and the library's header summaries share."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lora_core.formats import algorithms
from lora_core.library.inspect_header import detect_algorithm

ROOT = Path(__file__).resolve().parents[1]


def test_registry_imports_without_torch():
    code = ("import sys\nfrom lora_core.formats import algorithms as a\n"
            "assert a.detect({'lora_up.weight': (8, 4), 'lora_down.weight': (4, 8)}).name == 'lora'\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CLEAN"


def test_every_algorithm_owns_its_suffixes():
    names = [a.name for a in algorithms.REGISTRY]
    assert len(set(names)) == len(names) and set(algorithms.BY_NAME) == set(names)
    for a in algorithms.REGISTRY:
        assert a.markers and a.markers <= a.claims, a
        assert "alpha" not in a.markers and "weight" not in a.markers
    # BOFT and OFT share `oft_blocks`: BOFT (4-D) is asked first
    assert names.index("boft") < names.index("oft")
    assert algorithms.detect({"oft_blocks": (2, 3, 4, 4)}).name == "boft"
    assert algorithms.detect({"oft_blocks": (3, 4, 4)}).name == "oft"
    assert algorithms.marked_by("oft_blocks", [2, 3, 4, 4]).name == "boft"
    assert algorithms.marked_by("oft_blocks", None).name == "oft"   # a pickle's key list has no shapes
    assert algorithms.marked_by("alpha") is None and algorithms.marked_by("weight", [8, 8]) is None


def _glora(a1, a2, b1, b2):
    return {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2}


@pytest.mark.parametrize("shapes, base, rank, hint, old", [
    # current LyCORIS layout: a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in)
    (_glora((10, 3), (3, 10), (12, 3), (3, 10)), (12, 10), 3, (12, 10), False),
    (_glora((10, 3), (3, 10), (10, 3), (3, 10)), (10, 10), 3, (10, 10), False),      # square layer
    (_glora((16, 4, 1, 1), (4, 16, 1, 1), (8, 4, 1, 1), (4, 16, 3, 3)), (8, 16, 3, 3), 4, (8, 144), False),
    # LyCORIS < 2: a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r)
    (_glora((3, 10), (10, 3), (3, 10), (12, 3)), (12, 10), 3, None, True),
    (_glora((3, 10), (10, 3), (3, 10), (10, 3)), (10, 10), 3, None, True),           # square: fits both readings
])
def test_glora_rank_has_one_definition(shapes, base, rank, hint, old):
    g = algorithms.BY_NAME["glora"]
    assert algorithms.detect(shapes) is g
    assert g.old_layout(shapes) is old and g.old_layout(shapes, base) is old
    assert g.rank(shapes) == rank and g.shape_hint(shapes) == hint


def test_header_and_loader_split_keys_alike():
    # spellings the header table of old did not know (old diffusers text encoder layers)
    module = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer"
    header = {f"{module}.down.weight": {"shape": [4, 768]}, f"{module}.up.weight": {"shape": [768, 4]}}
    assert detect_algorithm(header) == ("lora", {"lora": 1})
    oft_diag = {"lora_unet_a.oft_diag": {"shape": [2, 4, 4]}, "lora_unet_a.alpha": {"shape": []}}
    assert detect_algorithm(oft_diag) == ("oft", {"oft": 1})
