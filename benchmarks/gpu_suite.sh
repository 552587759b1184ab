#!/usr/bin/env bash
# The one command to run first whenever a GPU is available (issue 15), < 8 minutes, data < 64 MiB:
#   1. the CUDA-marked tests (pytest -m cuda; they skip without a GPU)
#   2. deploy-form batch-1 latency of dscnn_t0/t1, fasternet_t0/t1, falconnet, repvgg_a0, mobilenet_v2,
#      resnet18 in every runtime available here (python -m dscnn.bench --runtime all; torch.compile
#      per model under a time guard, it compiles for tens of seconds each)
#   3. batch-32/256 fp32 and bf16 throughput (FasterNet's protocol) of dscnn_t0/t1, fasternet_t0/t1;
#      the summary prints batch-32 fp32 beside the paper's RTX 3090 Ti anchors (6,912 / 8,609 img/s)
#   4. train-form training throughput (benchmarks/train_throughput.py --quick), when that script exists
#   5. a search.py --budget-ms 2 --dataset tiny-imagenet search of a few trials on a synthetic slice in
#      the tiny-imagenet-200 layout (benchmarks/make_tiny_imagenet.py; real images may not be committed)
# Every step writes JSON under benchmarks/results/gpu/<device>-<name>/ (suite.json names the device
# and each step's exit status). A failing step does not stop the others; the exit status is 1 if any failed.
#
#   benchmarks/gpu_suite.sh                        # on the GPU machine (device cuda)
#   benchmarks/gpu_suite.sh --device cpu --quick   # the same code paths on a CPU, minutes (tested: slow set)
#   options: --out DIR (results folder), --python PY
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
ARGS_GIVEN=("$@")
DEVICE=cuda
QUICK=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cpu|cuda) ;; *) echo "gpu_suite.sh: --device must be cpu or cuda, got $DEVICE" >&2; exit 2 ;; esac
# CPU timings share the machine's cores with other engineers' benchmarks: one at a time
if [ "$DEVICE" = cpu ] && [ -z "${REPNAS_SUITE_LOCKED:-}" ] && command -v flock > /dev/null; then
    REPNAS_SUITE_LOCKED=1 exec flock /tmp/repnas-cpu-bench.lock "$0" "${ARGS_GIVEN[@]}"
fi
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite.sh: no CUDA GPU visible to torch; use --device cpu --quick for the CPU run" >&2
    exit 2
fi
NAME=$("$PYTHON" -c "
import re, sys, torch
from dscnn.environment import cpu_model
name = torch.cuda.get_device_name() if sys.argv[1] == 'cuda' else cpu_model()
print(re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')[:40])" "$DEVICE")
[ "$QUICK" = 1 ] && NAME="quick-$NAME"
OUT="${OUT:-benchmarks/results/gpu/$DEVICE-$NAME}"
mkdir -p "$OUT"
WORK=$(mktemp -d -t repnas-gpu-suite-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export REPNAS_DEVICE_LOCK="$WORK/device.lock"   # never wait for (or block) a search running elsewhere here
START=$(date +%s)
STATUS=()
FAILED=0

step() {  # step NAME CMD...: run, log to $OUT/NAME.log, record the exit status
    local name="$1"; shift
    echo "== [$(( $(date +%s) - START ))s] $name: $*"
    "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    STATUS+=("\"$name\": $rc")
    [ $rc -eq 0 ] || { FAILED=1; echo "== $name failed (exit $rc); see $OUT/$name.log"; }
}

MODELS=dscnn_t0,dscnn_t1,fasternet_t0,fasternet_t1,falconnet,repvgg_a0,mobilenet_v2,resnet18
THROUGHPUT_MODELS=dscnn_t0,dscnn_t1,fasternet_t0,fasternet_t1
if [ "$QUICK" = 1 ]; then
    # smoke settings: same code paths, tiny counts (numbers are not protocol numbers)
    RES=64; COUNTS=(--warmup 1 --runs 3 --repeats 1); TP_COUNTS=(--warmup 1 --runs 2 --repeats 1)
    TP_BATCH=4; RUNTIMES=eager,onnxruntime; COMPILE_MODELS=""; TRIALS=3; TRAIN_PER_CLASS=4; TEST_FILTER=(tests/dscnn)
else
    RES=224; COUNTS=(); TP_COUNTS=(--runs 100)  # throughput: 50 warm-up, 100 timed runs x 3 repeats
    TP_BATCH=32,256; RUNTIMES=all; COMPILE_MODELS=$MODELS; TRIALS=8; TRAIN_PER_CLASS=0; TEST_FILTER=(tests)
fi
if [ "$DEVICE" = cpu ]; then TP_PRECISION=fp32; else TP_PRECISION=fp32,bf16; fi

"$PYTHON" -c "
import json, sys
from dscnn.environment import environment
json.dump({'device': sys.argv[1], 'quick': sys.argv[2] == '1', **environment(sys.argv[1], 1)}, open(sys.argv[3], 'w'), indent=2)
" "$DEVICE" "$QUICK" "$OUT/environment.json"
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

# 1. CUDA-marked tests (skip without a GPU)
step cuda_tests "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider "${TEST_FILTER[@]}" --junitxml "$OUT/cuda_tests.xml"

# 2. batch-1 latency, every runtime available (compile separately, per model, under a time guard)
LATENCY_RUNTIMES=$RUNTIMES
if [ "$RUNTIMES" = all ]; then
    LATENCY_RUNTIMES=$("$PYTHON" -c "
import sys
from dscnn.latency import LatencySettings
from dscnn.runtimes import available_runtimes
usable, missing = available_runtimes(LatencySettings(device=sys.argv[1]))
for name, why in missing.items():
    print(f'runtime {name} not available: {why}', file=sys.stderr)
print(','.join(r for r in usable if r != 'compile'))" "$DEVICE")
fi
step latency "$PYTHON" -m dscnn.bench --models "$MODELS" --device "$DEVICE" --runtime "$LATENCY_RUNTIMES" \
    --resolution "$RES" --batch 1 "${COUNTS[@]}" --json "$OUT/latency.json"
for model in ${COMPILE_MODELS//,/ }; do
    if [ $(( $(date +%s) - START )) -gt 240 ]; then
        echo "== compile: time guard (240 s) reached; $model and later models left out"; STATUS+=("\"compile_guard\": \"$model\""); break
    fi
    step "compile_$model" "$PYTHON" -m dscnn.bench --models "$model" --device "$DEVICE" --runtime eager,compile \
        --resolution "$RES" --batch 1 --no-train-form "${COUNTS[@]}" --json "$OUT/compile_$model.json"
done

# 3. throughput (FasterNet's protocol: eager PyTorch, large batches)
step throughput "$PYTHON" -m dscnn.bench --models "$THROUGHPUT_MODELS" --device "$DEVICE" --resolution "$RES" \
    --no-train-form "${COUNTS[@]}" --throughput-batch "$TP_BATCH" --throughput-precision "$TP_PRECISION" \
    "${TP_COUNTS[@]}" --json "$OUT/throughput.json"

# 4. train-form training throughput (another engineer's script; flags passed only where it has them)
if [ -f benchmarks/train_throughput.py ]; then
    HELP=$("$PYTHON" benchmarks/train_throughput.py --help 2>/dev/null)
    ARGS=(--quick)
    grep -q -- "--device" <<< "$HELP" && ARGS+=(--device "$DEVICE")
    grep -q -- "--out" <<< "$HELP" && ARGS+=(--out "$OUT/train_throughput.json")
    step train_throughput "$PYTHON" benchmarks/train_throughput.py "${ARGS[@]}"
else
    echo "== train_throughput: benchmarks/train_throughput.py not found, skipped"; STATUS+=("\"train_throughput\": \"absent\"")
fi

# 5. a few trials of the 2 ms search on the synthetic Tiny-ImageNet slice
"$PYTHON" benchmarks/make_tiny_imagenet.py "$WORK/data" --classes 10 --train 20 --val 5 > /dev/null
step search "$PYTHON" search.py --budget-ms 2 --dataset tiny-imagenet --data-dir "$WORK/data" --device "$DEVICE" \
    --trials "$TRIALS" --epochs 1 --batch-size 32 --train-per-class "$TRAIN_PER_CLASS" \
    --storage "$WORK/studies.db" --study-name gpu_suite --out "$WORK/search" --cache "$WORK/latency.sqlite"
[ -f "$WORK/search/best.json" ] && cp "$WORK/search/best.json" "$OUT/search_best.json"
[ -f "$WORK/search/search_config.json" ] && cp "$WORK/search/search_config.json" "$OUT/search_config.json"
"$PYTHON" -c "
import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from searchspace.storage import open_storage
study = optuna.load_study(study_name='gpu_suite', storage=open_storage(sys.argv[1]))
trials = [{'number': t.number, 'state': t.state.name, 'value': t.value, **{k: v for k, v in t.user_attrs.items()
           if k in ('family', 'latency_ms', 'macs', 'feasible', 'accuracy', 'device', 'runtime', 'latency_busy', 'busy')}}
          for t in study.trials]
json.dump({'trials': trials}, open(sys.argv[2], 'w'), indent=2)" "$WORK/studies.db" "$OUT/search_trials.json" \
    || echo "== search: no study to summarise"

step summary "$PYTHON" benchmarks/gpu_suite_summary.py "$OUT"
ELAPSED=$(( $(date +%s) - START ))
{ echo "{\"device\": \"$DEVICE\", \"name\": \"$NAME\", \"quick\": $([ "$QUICK" = 1 ] && echo true || echo false),"
  echo " \"elapsed_s\": $ELAPSED, \"uptime\": \"$(uptime)\", \"steps\": {$(IFS=,; echo "${STATUS[*]}")}}"; } > "$OUT/suite.json"
echo "== done in ${ELAPSED}s: $OUT"
exit $FAILED
