#!/usr/bin/env bash
# Checks that lora_core's AUTOMATIC1111 UI (LoRA tab, settings, cards page, routes) builds under
# gradio 3.41.2, the version A1111 1.x ships, in a venv that has no torch. Creating the venv takes
# 20 s to 3 min (pip cache, index speed); the check itself ~10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-g3
REQS=.ci/gradio3-requirements.txt
# Reuse the venv only if it was made from the same pins and still works.
if ! cmp -s "$REQS" "$VENV/lora_core-requirements.txt" 2>/dev/null \
   || ! "$VENV/bin/python" -c "import gradio, sys; sys.exit(gradio.__version__ != '3.41.2')" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"   # no system site-packages: torch must not be importable there
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
  cp "$REQS" "$VENV/lora_core-requirements.txt"
fi
GRADIO_ANALYTICS_ENABLED=False "$VENV/bin/python" .ci/gradio3_check.py
