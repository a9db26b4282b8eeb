#!/usr/bin/env bash
# Same pictures and per-request cost: this checkout against the host's built-in Lora, in a real
# AUTOMATIC1111 or Forge from the offline rigs (../shared/rigs; set up first, see its README).
#
#   bash tools/host_compare.sh a1111|forge
#
# Three server runs, one after the other (one server at a time: each holds 6-9 GB), each sending
# the request sequence of tools/host_compare.py (64x64, Euler, 2 steps, seed 1):
#   builtin  the host's own Lora only (this extension disabled)
#   ours     this extension only (the built-in disabled)
#   both     both enabled, the state after a user installs us: lora_core must handle the tags
# then compares the images (within 1/255) and the extra seconds per request. Each run's start-up
# and request log must be free of tracebacks. Output: $OUT (default /tmp/host-compare/HOST).
# Env: RIGS (default ../shared/rigs beside the checkout), OUT, LORAS (default test_lora,test_lora2),
# VARIANTS (default "builtin ours both").
set -uo pipefail
HOST=${1:?usage: host_compare.sh a1111|forge}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RIGS=${RIGS:-$(cd "$ROOT/../shared/rigs" 2>/dev/null && pwd)}
OUT=${OUT:-/tmp/host-compare/$HOST}
LORAS=${LORAS:-test_lora,test_lora2}
EXT=lora_core_cmp
case $HOST in
  a1111) DIR=${A1111_DIR:-/tmp/a1111-run}; VENV=${VENV:-/tmp/a1111-venv}; BUILTIN=Lora; PORT=7865 ;;
  forge) DIR=${FORGE_DIR:-/tmp/forge-run}; VENV=${VENV:-/tmp/forge-venv}; BUILTIN=sd_forge_lora; PORT=7866 ;;
  *) echo "host must be a1111 or forge"; exit 2 ;;
esac
[[ -d $RIGS/$HOST && -x $VENV/bin/python ]] || { echo "no rig: set up $RIGS/$HOST first"; exit 2; }
PY=$VENV/bin/python
export SD_WEBUI_LOG_LEVEL=${SD_WEBUI_LOG_LEVEL:-INFO}  # shows lora_core's own time per request
export PORT PIDFILE=/tmp/host-compare-$HOST.pid LOG
rm -rf "$OUT"; mkdir -p "$OUT"
DEST=$DIR/extensions/$EXT
cleanup() { [[ -f $PIDFILE ]] && PIDFILE=$PIDFILE bash "$RIGS/$HOST/stop.sh" >/dev/null 2>&1; rm -rf "$DEST"; }
trap cleanup EXIT
rm -rf "$DEST"; mkdir -p "$DEST"
tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -C "$DEST" -xf -
( cd "$DIR" && PYTHONPATH="$DIR" "$PY" "$DEST/install.py" ) > "$OUT/install.log" 2>&1 || { echo "install.py failed"; cat "$OUT/install.log"; exit 1; }

fails=()
for variant in ${VARIANTS:-builtin ours both}; do
  case $variant in builtin) disabled=$EXT ;; ours) disabled=$BUILTIN ;; both) disabled= ;; esac
  cfg=$OUT/$variant-config.json
  "$PY" - "$DIR/config.json" "$cfg" "$disabled" <<'PY'
import json, os, sys
src, dst, disabled = sys.argv[1:4]
cfg = json.load(open(src)) if os.path.exists(src) else {}
cfg["disabled_extensions"] = [disabled] if disabled else []
json.dump(cfg, open(dst, "w"), indent=1)
PY
  LOG=$OUT/$variant-server.log
  echo "=== $HOST: $variant (disabled: ${disabled:-none})"
  if ! EXTRA_ARGS="--ui-settings-file $cfg" LOG=$LOG bash "$RIGS/$HOST/start.sh" > "$OUT/$variant-start.out" 2>&1; then
    fails+=("$variant: server did not start"); cat "$OUT/$variant-start.out"; continue
  fi
  start_errors=$(grep -c -E "Traceback \(most recent call last\)|^\*\*\* Error" "$LOG")
  "$PY" "$ROOT/tools/host_compare.py" run "http://127.0.0.1:$PORT" "$OUT/$variant" --loras "$LORAS" --label "$variant" --pid "$(cat "$PIDFILE")" $([[ $variant == ours ]] && echo --lbw) \
    || fails+=("$variant: requests failed")
  if [[ $variant == ours ]]; then  # the cards page and lora_core's tab inside the host
    "$PY" "$ROOT/tools/host_screenshot.py" "http://127.0.0.1:$PORT/" "$OUT/$HOST" || fails+=("ours: screenshots failed")
  fi
  all_errors=$(grep -c -E "Traceback \(most recent call last\)|^\*\*\* Error" "$LOG")
  echo "$variant: $start_errors error report(s) at start-up, $((all_errors - start_errors)) during the requests"
  (( all_errors > 0 )) && { fails+=("$variant: $all_errors error report(s) in $LOG"); grep -n -A8 -E "Traceback|^\*\*\* Error" "$LOG" | head -40; }
  grep -i "lora_core" "$LOG" | grep -v "^DEBUG" | tail -30
  "$PY" - "$VENV" "$PIDFILE" <<'PY' || true
import sys
pid = open(sys.argv[2]).read().strip()
try:
    import subprocess
    rss = subprocess.run(["ps", "-o", "rss=", "--ppid", pid, "-p", pid], capture_output=True, text=True).stdout.split()
    print("server RSS: %.1f GB" % (max(int(x) for x in rss) / 1024 / 1024))
except Exception as e:
    print("RSS unknown:", e)
PY
  PIDFILE=$PIDFILE bash "$RIGS/$HOST/stop.sh" > /dev/null 2>&1
  rm -f "$PIDFILE"
  sleep 3
done

for pair in "builtin ours" "builtin both"; do
  set -- $pair
  [[ -f $OUT/$1/times.json && -f $OUT/$2/times.json ]] || continue
  echo "=== images and extra seconds: $1 vs $2"
  "$PY" "$ROOT/tools/host_compare.py" compare "$OUT/$1" "$OUT/$2" --markdown "$OUT/$1-vs-$2.md" || fails+=("$1 vs $2: images differ")
done
if (( ${#fails[@]} )); then echo "RESULT: FAIL - ${fails[*]}"; exit 1; fi
echo "RESULT: PASS - same images within 1/255, no error reports ($OUT)"
