#!/usr/bin/env bash
# The GPU checks of issues 2 and 7 as ONE prepared run, for a session lent a machine through the
# `device` tool (15 minutes of device time in all: do not iterate there).
#
# Here, once (the device image has torch, transformers, peft, accelerate, safetensors; not diffusers,
# nor open-clip-torch, whose CLIP BPE vocabulary the tokenizer reads):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 open-clip-torch==$(python3 -c \
#       "import importlib.metadata as m; print(m.version('open_clip_torch'))")
# Then: device run, carry [".whl"], timeout_s 540, command: bash tools/device_check.sh
# Results come back under $OUT: bench_gpu.md (paste into docs/BENCHMARKS.md, "On a GPU") and
# train_check.txt (issue 7: loss falls on a real-size SD1.5, the file loads back and binds).
set -u -o pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
python3 -m bench.engine_gpu --device cuda 2>"$OUT/bench_gpu.log" | tee "$OUT/bench_gpu.md"
python3 tools/gpu_train_check.py --out /tmp/gpucheck 2>"$OUT/train_check.log" | tee "$OUT/train_check.txt"
