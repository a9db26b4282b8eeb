#!/usr/bin/env bash
# The GPU checks of issues 2, 7 and 16 as ONE prepared run, for a session lent a machine through the
# `device` tool (15 minutes of device time in all: do not iterate there).
#
# Here, once (the device image has torch, transformers, peft, accelerate, safetensors; not diffusers,
# nor open-clip-torch, whose CLIP BPE vocabulary the tokenizer reads):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 open-clip-torch==$(python3 -c \
#       "import importlib.metadata as m; print(m.version('open_clip_torch'))")
# Then: device run, carry [".whl"], timeout_s 540, command: bash tools/device_check.sh
# Results come back under $OUT: bench_gpu.md (paste into docs/BENCHMARKS.md, "On a GPU"),
# train_check.txt (issue 7: loss falls on a real-size SD1.5, the file loads back and binds) and
# bench_flux_gpu.md (issue 16: the full-size Flux.1 transformer, 12B bf16; paste into the section
# "Flux.1-structured transformer, full size on a GPU"); each step's stderr in a .log beside it.
#
# Time: the whole script stays under BUDGET_S seconds (default 530, for timeout_s 540). The Flux
# case runs last and only with the time left: it needs about FLUX_MIN_S = 300 s (estimated, never run
# on a GPU yet: build 12B params, write a 24 GB checkpoint, one warm-up apply and one timed round of
# three sides, the W0-from-checkpoint side reading 23 GB back per scenario, the merge check). If too
# little is left it is skipped with a note in bench_flux_gpu.md. The SD1.5 bench and the training
# check have not been timed on a GPU either, so with 15 minutes of device time in all, prefer one call
# with the steps that matter now, e.g. `DEVICE_CHECKS="sd15 flux" bash tools/device_check.sh`, or
# `DEVICE_CHECKS=flux` alone. DEVICE_CHECKS picks the steps (default "sd15 app train flux"; app: the
# standalone app's --device cuda on the demo model, app_check.txt, ~1 min).
set -u -o pipefail
OUT=${OUT:-/tmp/device_out}
BUDGET_S=${BUDGET_S:-530}
FLUX_MIN_S=${FLUX_MIN_S:-300}
CHECKS=" ${DEVICE_CHECKS:-sd15 app train flux} "
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
if [[ $CHECKS == *" sd15 "* ]]; then
  python3 -m bench.engine_gpu --device cuda 2>"$OUT/bench_gpu.log" | tee "$OUT/bench_gpu.md"
fi
if [[ $CHECKS == *" train "* ]]; then
  python3 tools/gpu_train_check.py --out /tmp/gpucheck 2>"$OUT/train_check.log" | tee "$OUT/train_check.txt"
fi
if [[ $CHECKS == *" app "* ]]; then
  # the standalone app on the GPU (--device cuda): the demo model with a demo LoRA, then without it;
  # each picture against the CPU's (same seeds: the CPU generator on both), and the timings
  python3 tools/device_app_check.py --out "$OUT" 2>"$OUT/app_check.log" | tee "$OUT/app_check.txt"
fi
if [[ $CHECKS == *" flux "* ]]; then
  left=$((BUDGET_S - SECONDS))
  echo "flux: ${left} s left of ${BUDGET_S} after ${SECONDS} s" | tee -a "$OUT/gpu.txt"
  if (( left < FLUX_MIN_S )); then
    echo "Not run: ${left} s were left (it needs about ${FLUX_MIN_S} s); run DEVICE_CHECKS=flux bash tools/device_check.sh" \
      | tee "$OUT/bench_flux_gpu.md"
  else
    # one timed round: the full-size case (24 GB of weights, W0 read back from a 24 GB file) costs minutes
    timeout --signal=INT $((left - 5)) python3 -m bench.engine_flux --device cuda --repeat 1 --warmup 1 \
      2>"$OUT/bench_flux_gpu.log" | tee "$OUT/bench_flux_gpu.md"
  fi
fi
