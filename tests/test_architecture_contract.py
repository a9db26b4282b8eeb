"""The layering that docs/ARCHITECTURE.md describes, checked by import-linter (`.importlinter`):
layers tags -> formats -> library -> targets -> patcher -> engine -> hosts, no torch on the
catalog/UI path, no import cycles. A new import that breaks it fails here, with import-linter's
explanation of which import chain is at fault."""
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test requirement (requirements-test.txt)"
    result = subprocess.run([exe, str(REPO / ".importlinter")], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
