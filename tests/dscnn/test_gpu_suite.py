"""benchmarks/gpu_suite.sh runs end to end on the CPU (``--device cpu --quick``): the GPU's first run
must not die on a typo. Slow set (minutes): ``pytest -m slow tests/dscnn/test_gpu_suite.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_runs_on_cpu_quick(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run([str(ROOT / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--quick", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    suite = json.loads((out / "suite.json").read_text())
    assert suite["device"] == "cpu" and suite["quick"] is True
    assert all(v == 0 for k, v in suite["steps"].items() if isinstance(v, int)), suite["steps"]
    latency = json.loads((out / "latency.json").read_text())
    assert latency["runtimes"] == ["eager", "onnxruntime"] and len(latency["models"]) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["latency_ms"]["dscnn_t0"]) == {"eager", "onnxruntime"}
    assert json.loads((out / "environment.json").read_text())["cpu_model"]
    assert json.loads((out / "search_trials.json").read_text())["trials"], "the search ran trials"


def test_gpu_suite_rejects_bad_options() -> None:
    run = subprocess.run([str(ROOT / "benchmarks" / "gpu_suite.sh"), "--device", "tpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--device must be cpu or cuda" in run.stderr


def test_tiny_imagenet_slice_reads_as_tiny_imagenet(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from make_tiny_imagenet import write
    finally:
        sys.path.pop(0)
    from dscnn.data.tiny_imagenet import read_tiny_imagenet

    folder = write(tmp_path, classes=3, train=2, val=1)
    raw = read_tiny_imagenet(tmp_path)
    assert raw.class_names == tuple(sorted(p.name for p in (folder / "train").iterdir()))
    assert len(raw.train.labels) == 6 and len(raw.val.labels) == 3
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 1 << 20
