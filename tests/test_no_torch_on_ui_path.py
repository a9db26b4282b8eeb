"""The catalog/UI path must not import torch: fast start, and the A1111 tab builds under gradio 3.41.2
in an environment without torch."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TORCH_FREE = [
    "lora_core.cli",
    "lora_core.tags",
    "lora_core.library",
    "lora_core.ui",
    "lora_core.commands.list_loras",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_without_torch(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "import lora_core.cli as c; c.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH' if bad else 'CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("CLEAN"), f"{module} pulled in torch"
