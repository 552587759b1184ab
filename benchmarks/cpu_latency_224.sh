#!/usr/bin/env bash
# CPU deployment cost at 224, batch 1, 1 thread: every registry model and every torchvision
# baseline (weights=None), train and deploy form, docs/design.md section 4 CPU protocol (10 warm-up,
# 100 timed runs, median of 3 repeats). No cache: every number is measured in this run.
# Takes tens of minutes on a 2-core machine; run it on an otherwise idle machine (repeats that
# disagree by > 20% are flagged with "!" in the table and "noisy": true in the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m dscnn.bench --models all --device cpu --resolution 224 --batch 1 --threads 1 \
    --warmup 10 --runs 100 --repeats 3 --json benchmarks/results/cpu_latency_224.json "$@"
