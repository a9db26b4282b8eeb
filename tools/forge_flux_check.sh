#!/usr/bin/env bash
# lora_core on Flux.1 in the REAL Forge (dfdcbab, the offline rig ../shared/rigs/forge), on the CPU:
# a tiny random Flux.1-dev checkpoint and tiny Flux LoRAs (kohya and diffusers/PEFT layouts).
#
#   bash tools/forge_flux_check.sh        # ~2 min; last line VERDICT: PASS ... / VERDICT: FAIL ...
#
# Needs the rig set up (prepare_tree.sh + setup.sh: /tmp/forge-run, /tmp/forge-venv). Never touches
# them: Forge runs from a COPY ($FLUX_DIR, default /tmp/forge-flux-run, made once by cp -a), in which
#   * tools/forge_flux/make_tiny_flux.py writes the checkpoint, the LoRAs and tiny configs for CLIP-L,
#     T5 and the VAE (backend/huggingface/black-forest-labs/FLUX.1-dev/*/config.json);
#   * the rig-only extension forge_flux_rig_shim (tools/forge_flux/rig_shim/preload.py) makes
#     huggingface_guess read the transformer's sizes from the checkpoint instead of the 12B ones.
# Everything else is Forge as shipped. Three server runs, one after the other, port $PORT (7868):
#   ours     this checkout as an extension, Forge's built-in sd_forge_lora disabled
#   both     both enabled (a user who installs us): lora_core must handle every tag, Forge's own
#            LoRA code must merge nothing, and the images must equal the `ours` run's bit for bit
#   builtin  Forge's own LoRA only (our extension removed): its images against ours, within 1/255
# Each run sends tools/forge_flux/requests_check.py's sequence (Euler, Simple schedule, CFG 1,
# distilled CFG 3.5, 64x64, 2 steps, seed 1): base, kohya LoRA, base, PEFT LoRA, base, a stack of
# both, the kohya one at 0.5, base, and (when the rig's SD1.5 test_lora is there) that SD1.5 LoRA,
# which lora_core must refuse on Flux. FAIL on: a traceback / "*** Error" in a log, a component whose
# keys Forge's loader reports Missing/Unexpected, a LoRA not listed, a tag that does not change the
# image, a base image that is not bit-identical to the first, a stack or weight change without effect,
# (ours run) a Lora cards page that does not show exactly the Flux LoRAs (the rig's screenshot tool).
# Only reads the checkout. Env: FLUX_DIR, FORGE_SRC (/tmp/forge-run), VENV (/tmp/forge-venv), RIGS
# (../shared/rigs beside the checkout), OUT (/tmp/forge-flux-check), PORT, MIN_AVAIL_GB (4: the tiny
# model's server holds ~1.2 GB), RUNS ("ours both builtin"), REBUILD=1 (fresh copy).
# Exit 0 PASS, 1 FAIL, 2 could not try.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RIGS=${RIGS:-$(cd "$ROOT/../shared/rigs" 2>/dev/null && pwd)}
FORGE_SRC=${FORGE_SRC:-/tmp/forge-run}; FLUX_DIR=${FLUX_DIR:-/tmp/forge-flux-run}; VENV=${VENV:-/tmp/forge-venv}
OUT=${OUT:-/tmp/forge-flux-check}; RUNS=${RUNS:-"ours both builtin"}
export FORGE_DIR=$FLUX_DIR VENV PORT=${PORT:-7868} PIDFILE=/tmp/forge-flux-check.pid MIN_AVAIL_GB=${MIN_AVAIL_GB:-4}
export MODEL=$FLUX_DIR/models/Stable-diffusion/tiny_flux1_dev.safetensors
export SD_WEBUI_LOG_LEVEL=${SD_WEBUI_LOG_LEVEL:-INFO}   # lora_core's "bound to ..." and per-request lines
PY=$VENV/bin/python
EXT=lora_core_flux; SHIM=forge_flux_rig_shim; BUILTIN=sd_forge_lora
U=http://127.0.0.1:$PORT
fails=(); notes=(); T0=$(date +%s)

[[ -x $PY && -d $FORGE_SRC/extensions-builtin/$BUILTIN && -f $RIGS/forge/start.sh ]] || {
  echo "VERDICT: FAIL - cannot try: no Forge rig (need $FORGE_SRC, $VENV, $RIGS/forge; see its README)"; exit 2; }
if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "VERDICT: FAIL - cannot try: a server from $PIDFILE is already running"; exit 2; fi
for other in /tmp/forge-try.pid /tmp/forge-server.pid /tmp/a1111-try.pid /tmp/a1111-server.pid; do
  if [[ -f $other ]] && kill -0 "$(cat "$other")" 2>/dev/null; then
    echo "VERDICT: FAIL - cannot try: another rig server is running ($other); one at a time"; exit 2; fi
done
rm -rf "$OUT"; mkdir -p "$OUT"
cleanup() { [[ -f $PIDFILE ]] && bash "$RIGS/forge/stop.sh" >/dev/null 2>&1; rm -rf "$FLUX_DIR/extensions/$EXT"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "=== 1. the Forge copy $FLUX_DIR (from $FORGE_SRC)"
if [[ ${REBUILD:-0} == 1 ]]; then rm -rf "$FLUX_DIR"; fi
if [[ ! -d $FLUX_DIR ]]; then
  cp -a "$FORGE_SRC" "$FLUX_DIR" || { echo "VERDICT: FAIL - cannot try: copy failed"; exit 2; }
  # the SD1.5 checkpoint (a link), a library database a try run left; the copy holds only Flux
  rm -f "$FLUX_DIR"/models/Stable-diffusion/*.safetensors; rm -rf "$FLUX_DIR/lora_core" "$FLUX_DIR"/extensions/*/
fi
mkdir -p "$FLUX_DIR/extensions/$SHIM"
cp "$ROOT/tools/forge_flux/rig_shim/preload.py" "$FLUX_DIR/extensions/$SHIM/preload.py"
( cd "$FLUX_DIR" && "$PY" "$ROOT/tools/forge_flux/make_tiny_flux.py" "$FLUX_DIR" ) || { echo "VERDICT: FAIL - cannot try: make_tiny_flux.py failed"; exit 2; }
echo "Forge $(cat "$FLUX_DIR/FORGE_COMMIT" 2>/dev/null || echo '?'); shim + tiny configs + checkpoint + LoRAs in place"

echo "=== 2. Forge's loader on the tiny Flux: what lora_core sees (family, bound tensors)"
t0=$(date +%s)
if ( cd "$FLUX_DIR" && "$PY" "$ROOT/tools/forge_flux/probe_family.py" "$FLUX_DIR" "$ROOT" "$MODEL" ) > "$OUT/probe.txt" 2>&1; then
  tail -1 "$OUT/probe.txt"
else
  tail -12 "$OUT/probe.txt"; fails+=("probe: lora_core does not report Flux for Forge's Flux engine (see $OUT/probe.txt)")
fi
grep -E "(Missing|Unexpected): \[" "$OUT/probe.txt" && fails+=("probe: Forge's loader reports missing/unexpected keys (checkpoint layout)")
echo "probe: $(( $(date +%s) - t0 ))s"

install_ext() {
  rm -rf "$FLUX_DIR/extensions/$EXT"; mkdir -p "$FLUX_DIR/extensions/$EXT"
  tar -C "$ROOT" --exclude=./.git --exclude=./shared --exclude=.venv --exclude=venv --exclude=node_modules \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache -cf - . | tar -C "$FLUX_DIR/extensions/$EXT" -xf -
  # as Forge's run_extension_installer (start.sh skips installers)
  ( cd "$FLUX_DIR" && PYTHONPATH="$FLUX_DIR" "$PY" "$FLUX_DIR/extensions/$EXT/install.py" ) > "$OUT/install.log" 2>&1 \
    || fails+=("install.py failed (see $OUT/install.log)")
}

errors_in() {  # error reports in a log: the larger of traceback / "*** Error" counts
  local tb st; tb=$(grep -c "Traceback (most recent call last)" "$1"); st=$(grep -c -E "^\*\*\* Error" "$1")
  echo $(( tb > st ? tb : st ))
}

run_server() {  # $1 label, $2 builtin on (1/0), $3 our extension in (1/0)
  local label=$1 builtin=$2 ext=$3 cfg=$OUT/$1-config.json
  export LOG=$OUT/$label.log
  echo "=== $label: built-in $BUILTIN $([[ $builtin == 1 ]] && echo enabled || echo disabled), lora_core $([[ $ext == 1 ]] && echo installed || echo absent)"
  if [[ $ext == 1 ]]; then install_ext; else rm -rf "$FLUX_DIR/extensions/$EXT"; fi
  "$PY" - "$FLUX_DIR/config.json" "$cfg" "$builtin" "$BUILTIN" "$(basename "$MODEL")" <<'PY'
import json, os, sys
src, dst, keep, builtin, ckpt = sys.argv[1:6]
cfg = json.load(open(src)) if os.path.exists(src) else {}
cfg.update(sd_model_checkpoint=ckpt, forge_preset="flux", forge_additional_modules=[])
cfg["disabled_extensions"] = [] if keep == "1" else [builtin]
json.dump(cfg, open(dst, "w"), indent=4)
PY
  local t0; t0=$(date +%s)
  if ! EXTRA_ARGS="--ui-settings-file $cfg" bash "$RIGS/forge/start.sh" > "$OUT/$label-start.txt" 2>&1; then
    if grep -q "not starting" "$OUT/$label-start.txt"; then echo "VERDICT: FAIL - cannot try: not enough free memory"; exit 2; fi
    fails+=("$label: Forge did not start (see $LOG)"); tail -20 "$LOG"; return
  fi
  local n_start; n_start=$(errors_in "$LOG")
  (( n_start > 0 )) && { fails+=("$label: $n_start error report(s) in the start-up log"); grep -n -A12 "Traceback\|^\*\*\* Error" "$LOG" | head -40; }
  if ! "$PY" "$ROOT/tools/forge_flux/requests_check.py" run "$U" "$OUT/$label" > "$OUT/$label.json" 2> "$OUT/$label.err"; then
    fails+=("$label: requests failed: $(tail -1 "$OUT/$label.err")"); tail -5 "$OUT/$label.err"
  else
    "$PY" - "$OUT/$label.json" "$label" > "$OUT/$label-checks.txt" <<'PY'
import json, sys
d, label = json.load(open(sys.argv[1])), sys.argv[2]
s = d["steps"]
for name in ("flux_kohya", "flux_peft"):
    if name not in d["loras_listed"]:
        print(f"{label}: {name} not in /sdapi/v1/loras")
for step in ("kohya_1", "peft_1", "stack", "kohya_05"):
    if s[step]["mean_abs_diff_vs_base_0"] == 0:
        print(f"{label}: {step} did not change the image")
for step in ("base_1", "base_2", "base_3"):
    if not s[step]["equal_base_0"]:
        print(f"{label}: {step} differs from base_0 (weights not restored)")
if label != "builtin" and "sd1_on_flux" in s and not s["sd1_on_flux"]["equal_base_0"]:
    print(f"{label}: an SD1.5 LoRA changed the Flux image (not refused)")
if d["stack_vs_kohya_1"] == 0:
    print(f"{label}: the stack gave the kohya LoRA's image")
if d["kohya_05_vs_kohya_1"] == 0:
    print(f"{label}: weight 0.5 gave the weight-1 image")
PY
    while IFS= read -r line; do [[ -n $line ]] && fails+=("$line"); done < "$OUT/$label-checks.txt"
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("listed:", d["loras_listed"]); [print(f"  {k:9s} {v}") for k, v in d["steps"].items()]; print("  stack vs kohya_1:", d["stack_vs_kohya_1"], " kohya 0.5 vs 1:", d["kohya_05_vs_kohya_1"])' "$OUT/$label.json"
  fi
  local n_all; n_all=$(errors_in "$LOG")
  (( n_all > n_start )) && { fails+=("$label: $((n_all - n_start)) error report(s) during the requests"); awk -v n="$(grep -n 'Startup time' "$LOG" | tail -1 | cut -d: -f1)" 'NR>n' "$LOG" | grep -A14 "Traceback\|^\*\*\* Error" | head -40; }
  grep -E "(Missing|Unexpected): \[" "$LOG" | head -3 | while IFS= read -r l; do echo "loader: $l"; done
  grep -q -E "(Missing|Unexpected): \[" "$LOG" && fails+=("$label: Forge's loader reports missing/unexpected keys (checkpoint layout)")
  local merges; merges=$(grep -c "^\[LORA\] Loaded" "$LOG")
  echo "Forge's own LoRA merges in this run: $merges"
  grep -E "lora_core: (bound to|.* in [0-9.]+ ms|.*(refus|skip|not ))" "$LOG" | sed 's/^/  log: /' | cut -c1-220 | head -14
  if [[ $ext == 1 ]] && ! grep -q "lora_core: bound to the loaded flux model (forge)" "$LOG"; then
    fails+=("$label: lora_core did not bind to the loaded model as Flux (forge)"); fi
  if [[ $label == both && $merges != 0 ]]; then fails+=("both: Forge's built-in merged $merges LoRA(s) although lora_core handles the tags"); fi
  if [[ $label == builtin && $merges == 0 ]]; then notes+=("builtin: Forge's own LoRA code merged nothing"); fi
  if [[ $label == ours ]]; then  # the Lora cards page of a Flux model: Flux LoRAs only (SD1.5 ones hidden)
    local shot cards
    shot=$("$PY" "$RIGS/forge/screenshot_lora_tab.py" --url "$U/" --out "$OUT" --name forge_flux_cards --tab-only --timeout 90 2>&1 | tail -1)
    cards=$("$PY" -c 'import json,sys; print(" ".join(sorted(json.loads(sys.argv[1]).get("lora_cards", []))))' "$shot" 2>/dev/null)
    echo "Lora cards page: [${cards}] (screenshot $OUT/forge_flux_cards.png)"
    if [[ -z $cards ]]; then fails+=("ours: the Lora cards page did not render ($shot)")
    elif [[ " $cards " != *" flux_kohya "* || " $cards " != *" flux_peft "* || " $cards " == *" test_lora"* ]]; then
      fails+=("ours: the Lora cards of a Flux model are [$cards], not the Flux LoRAs only"); fi
  fi
  local rss; rss=$(ps -o rss= -p "$(cat "$PIDFILE" 2>/dev/null)" 2>/dev/null | awk '{printf "%.1f", $1/1048576}')
  bash "$RIGS/forge/stop.sh" > /dev/null 2>&1
  echo "$label: $(( $(date +%s) - t0 ))s (start $(grep -o 'ready after [0-9]*s' "$OUT/$label-start.txt")), Forge RSS ${rss:-?} GB"
}

for r in $RUNS; do
  case $r in
    ours) run_server ours 0 1 ;;
    both) run_server both 1 1 ;;
    builtin) run_server builtin 1 0 ;;
  esac
done

echo "=== compare"
maxdiff() { "$PY" "$ROOT/tools/forge_flux/requests_check.py" compare "$OUT/$1" "$OUT/$2"; }
if [[ -d $OUT/ours && -d $OUT/both ]]; then
  d=$(maxdiff ours both); echo "both vs ours, largest pixel difference per step: $d"
  "$PY" -c 'import json,sys; sys.exit(0 if max(json.loads(sys.argv[1]).values()) == 0 else 1)' "$d" \
    || fails+=("both: images differ from the ours run ($d): not exactly one handler")
fi
if [[ -d $OUT/ours && -d $OUT/builtin ]]; then
  d=$(maxdiff ours builtin); echo "ours vs Forge's built-in, largest pixel difference per step: $d"
  # the SD1.5 LoRA step is ours to refuse; what Forge's built-in does with it is only reported
  builtin_max=$("$PY" -c 'import json,sys; print(max(v for k, v in json.loads(sys.argv[1]).items() if k != "sd1_on_flux"))' "$d")
  (( builtin_max <= 1 )) || fails+=("ours vs Forge's built-in: largest difference $builtin_max/255 ($d)")
  notes+=("ours vs Forge's built-in: max |diff| ${builtin_max}/255")
fi

echo "=== done in $(( $(date +%s) - T0 ))s; logs and images in $OUT"
if (( ${#fails[@]} == 0 )); then
  echo "VERDICT: PASS - lora_core on Flux.1 (tiny, random) in the real Forge $(cat "$FLUX_DIR/FORGE_COMMIT" 2>/dev/null | cut -c1-7): runs [$RUNS], no tracebacks, kohya + PEFT tags change the image, restore bit-exact, stack + weight change work, one handler with the built-in enabled$( (( ${#notes[@]} )) && printf '; %s' "${notes[@]}")"
  exit 0
fi
echo "VERDICT: FAIL - $(printf '%s; ' "${fails[@]}" | sed 's/; $//')$( (( ${#notes[@]} )) && printf '; notes: %s' "${notes[*]}")"
exit 1
