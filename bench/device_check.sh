#!/usr/bin/env bash
# One prepared device check for issue 11 on one lent GPU (an H100/H200): ends within 8 minutes
# (each step has its own `timeout`; the limits add up to 475 s) and writes everything under $OUT
# (default out/device_check): one log per step and summary.txt. At most 8 files, so a device
# tool that returns only a few files gets them all.
#
# Steps (GPU limits in seconds):
#   env      15  nvidia-smi, torch/CUDA/Triton versions, C++ compiler
#   compile  90  `generate --compile` (CUDA graphs) and `sample-sims --paired --compile` against
#                the same commands eager, on the demo model (64 seeds, 12 steps): max |diff| of
#                the uint8 images and the compile/sampling seconds each output records
#   ffhq64t 100  bench/gpu.py FFHQ-64 training images/s: fp32, TF32, bf16, bf16 + compile, and
#                (with a reference checkout) ours bf16 vs NVlabs/edm fp16 on the same weights
#   ffhq64s 170  bench/gpu.py FFHQ-64 sampling at batch 64: fp32 vs bf16 per SIMS mode (base,
#                full, interval, shared encoder, full as one paired call) and bf16 + compile;
#                then base / full / paired at batch 4
#   cifar10  70  bench/gpu.py CIFAR-10 training and sampling, no compile rows
#   tiny     30  bench/gpu.py loop/bare of the tiny digits model, fp32 and bf16
#
# Usage: bench/device_check.sh [--reference-dir PATH] [--cpu-smoke]
#   --reference-dir: a checkout of github.com/NVlabs/edm (else $EDM_REFERENCE_DIR, else ./.edm if
#                    it holds one; without one the reference rows are skipped and summary.txt
#                    says so). To carry it to a lent machine, put the checkout in .edm, list .edm
#                    in .git/info/exclude and name it in the device tool's carry.
#   --cpu-smoke:     dry run on the CPU with every size shrunk (gpu.py --cpu-smoke; 2 seeds and
#                    2 steps in the compile step, eager twice unless SMOKE_COMPILE=1, since a CPU
#                    compilation takes minutes). It checks that the script runs; its numbers
#                    mean nothing.
# Python: $PYTHON, else .venv/bin/python when it exists, else python3.
set -u
cd "$(dirname "$0")/.."
SMOKE=0
REF="${EDM_REFERENCE_DIR:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --reference-dir) REF="$2"; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-out/device_check}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "$REF" ] && [ -f .edm/training/networks.py ]; then REF=.edm; fi
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T0=$(date +%s)

# step NAME LIMIT_S CMD...: run CMD under `timeout`, log to $OUT/NAME.log, one summary line.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local how="ok"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && how="TIMED OUT (partial log kept)"
  [ $rc -ne 0 ] && [ "$how" = ok ] && how="FAILED"
  echo "$name: $how, rc $rc, $(( $(date +%s) - start )) s of ${limit} s" | tee -a "$SUMMARY"
}

if [ $SMOKE -eq 1 ]; then
  L_ENV=120; L_COMPILE=900; L_T=600; L_S=600; L_C=600; L_TINY=600
  GPU_ARGS=(--cpu-smoke); DEV=cpu; SEEDS=0-1; BATCH=2; STEPS=2
  COMPILE_FLAG=(); [ "${SMOKE_COMPILE:-0}" = 1 ] && COMPILE_FLAG=(--compile)
  echo "mode: --cpu-smoke (shrunk sizes on the CPU; numbers mean nothing)" | tee -a "$SUMMARY"
else
  L_ENV=15; L_COMPILE=90; L_T=100; L_S=170; L_C=70; L_TINY=30
  GPU_ARGS=(); DEV=cuda; SEEDS=0-63; BATCH=64; STEPS=12; COMPILE_FLAG=(--compile)
  echo "mode: GPU check" | tee -a "$SUMMARY"
fi
REF_ARGS=()
if [ -n "$REF" ]; then
  REF_ARGS=(--reference-dir "$REF"); echo "reference: NVlabs/edm at $REF" | tee -a "$SUMMARY"
else
  echo "reference: none (no --reference-dir, \$EDM_REFERENCE_DIR or .edm): reference rows skipped" | tee -a "$SUMMARY"
fi

step env "$L_ENV" bash -c "nvidia-smi || echo 'no nvidia-smi'; $PY -c 'import torch, importlib.util as u, shutil;
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available());
print(\"gpu\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None);
print(\"triton\", u.find_spec(\"triton\") is not None, \"c++\", shutil.which(\"g++\") or shutil.which(\"c++\"))'"

W=$(mktemp -d)   # npz outputs of the compile step, outside $OUT (only logs come back); removed at the end
# One Python process for the four runs (imports once); each run is the CLI verb itself.
step compile "$L_COMPILE" "$PY" - "$W" "$SEEDS" "$BATCH" "$STEPS" "$DEV" "${COMPILE_FLAG[*]:-}" <<'PYEOF'
import json, sys
import numpy as np
from pipelines.cli import main
w, seeds, batch, steps, dev, comp = sys.argv[1:7]
common = ["--seeds", seeds, "--batch", batch, "--steps", steps, "--device", dev]
comp = [comp] if comp else []
demo, guide = "assets/demo/digits_base.safetensors", "assets/demo/digits_early_20kimg.safetensors"
sims = ["sample-sims", "--base", demo, "--aux", guide, "--omega", "1.5"]
runs = {"g_eager": ["generate", "--model", demo], "g_comp": ["generate", "--model", demo, *comp],
        "s_eager": sims, "s_comp": [*sims, "--paired", *comp]}
for name, argv in runs.items():
    if main([*argv, *common, "--out", f"{w}/{name}.npz"]) != 0:
        sys.exit(f"{name} failed")
for a, b in (("g_eager", "g_comp"), ("s_eager", "s_comp")):
    x, y = (np.load(f"{w}/{n}.npz") for n in (a, b))
    d = np.abs(x["images"].astype(int) - y["images"].astype(int))
    ix, iy = json.loads(str(x["info"])), json.loads(str(y["info"]))
    print(f"{b} vs {a}: max |diff| {d.max()} of 255, {np.mean(d == 0):.4f} of pixels equal; "
          f"compiled={iy['compiled']} paired={iy['paired']}, compile {iy.get('compile_seconds')} s, "
          f"sampling {iy['seconds']} s vs eager {ix['seconds']} s", flush=True)
PYEOF

step ffhq64t "$L_T" "$PY" bench/gpu.py "${GPU_ARGS[@]}" --configs ffhq64 --skip sample,tiny "${REF_ARGS[@]}"
step ffhq64s "$L_S" "$PY" bench/gpu.py "${GPU_ARGS[@]}" --configs ffhq64 --skip train,reference,tiny --repeats 1
step cifar10 "$L_C" "$PY" bench/gpu.py "${GPU_ARGS[@]}" --configs cifar10 --skip tiny --compile-configs '' --repeats 1 \
  "${REF_ARGS[@]}"
step tiny "$L_TINY" "$PY" bench/gpu.py "${GPU_ARGS[@]}" --configs '' --skip train,sample,reference
rm -rf "$W"
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$SUMMARY"
# The logs, so that a tool returning only the output's tail shows the figures too.
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; tail -n 40 "$f"; done
grep -q "FAILED\|TIMED OUT" "$SUMMARY" && exit 1
exit 0
