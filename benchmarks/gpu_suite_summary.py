"""Summary of one `benchmarks/gpu_suite.sh` run: every runtime's batch-1 latency and the batch-32 anchors.

Reads the suite folder's ``latency.json`` and ``compile_<model>.json`` (`python -m dscnn.bench`
outputs) and ``throughput.json``; writes ``summary.json`` and prints two tables: deploy-form batch-1
latency per runtime with each runtime's speed-up over eager, and batch-32 fp32 throughput beside
the DSCNN paper's RTX 3090 Ti anchors (DSCNN_T0 6,912 and FasterNet_T0 8,609 img/s; ratio 0.80).

    python benchmarks/gpu_suite_summary.py benchmarks/results/gpu/<device>/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: DSCNN paper, batch-32 fp32 throughput on an RTX 3090 Ti (img/s).
PAPER_THROUGHPUT = {"dscnn_t0": 6912.0, "fasternet_t0": 8609.0}
PAPER_RATIO = PAPER_THROUGHPUT["dscnn_t0"] / PAPER_THROUGHPUT["fasternet_t0"]


def latency_rows(folder: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> runtime -> {median_ms, busy, noisy} from every bench JSON of the folder."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for path in [folder / "latency.json", *sorted(folder.glob("compile_*.json"))]:
        if not path.is_file():
            continue
        for model in json.loads(path.read_text())["models"]:
            for runtime, result in model.get("runtimes", {}).items():
                rows.setdefault(model["name"], {})[runtime] = {
                    k: result[k] for k in ("median_ms", "busy", "noisy", "runtime_version")}
    return rows


def throughput_rows(folder: Path) -> dict[str, dict[str, float]]:
    """model -> "b<batch> <precision>" -> images/s."""
    path = folder / "throughput.json"
    if not path.is_file():
        return {}
    return {m["name"]: {f"b{t['batch']} {t['precision']}": t["images_per_s"] for t in m["throughput"]}
            for m in json.loads(path.read_text())["models"]}


def summarise(folder: Path) -> dict[str, Any]:
    latency = latency_rows(folder)
    throughput = throughput_rows(folder)
    speedups = {m: {r: runtimes["eager"]["median_ms"] / v["median_ms"] for r, v in runtimes.items()}
                if "eager" in runtimes else {} for m, runtimes in latency.items()}
    ours = {m: throughput.get(m, {}).get("b32 fp32") for m in PAPER_THROUGHPUT}
    ratio = ours["dscnn_t0"] / ours["fasternet_t0"] if ours["dscnn_t0"] and ours["fasternet_t0"] else None
    return {"latency_ms": latency, "speedup_over_eager": speedups, "throughput_ips": throughput,
            "paper_b32_fp32": {"ips": PAPER_THROUGHPUT, "dscnn_t0/fasternet_t0": round(PAPER_RATIO, 3),
                               "device": "RTX 3090 Ti"},
            "ours_b32_fp32": {"ips": ours, "dscnn_t0/fasternet_t0": ratio}}


def render(summary: dict[str, Any]) -> list[Table]:
    latency = summary["latency_ms"]
    runtimes = sorted({r for v in latency.values() for r in v}, key=["eager", "compile", "cudagraph", "onnxruntime"].index)
    t1 = Table(title="deploy form, batch 1: latency (ms) per runtime, and eager / runtime", caption='"*" busy, "!" noisy')
    t1.add_column("Model", no_wrap=True)
    for r in runtimes:
        t1.add_column(f"{r} (ms)", justify="right")
    for r in runtimes[1:]:
        t1.add_column(f"eager/{r}", justify="right")
    for model, values in latency.items():
        cells = [f"{values[r]['median_ms']:.3f}" + (" *" if values[r]["busy"] else "") + (" !" if values[r]["noisy"] else "")
                 if r in values else "-" for r in runtimes]
        speed = summary["speedup_over_eager"][model]
        cells += [f"{speed[r]:.2f}x" if speed.get(r) else "-" for r in runtimes[1:]]
        t1.add_row(model, *cells)
    t2 = Table(title="batch-32 fp32 throughput (img/s): ours beside the paper's RTX 3090 Ti anchors")
    for header in ("Model", "ours", "paper (3090 Ti)"):
        t2.add_column(header, justify="left" if header == "Model" else "right")
    ours, paper = summary["ours_b32_fp32"], summary["paper_b32_fp32"]
    for model in PAPER_THROUGHPUT:
        value = ours["ips"][model]
        t2.add_row(model, "-" if value is None else f"{value:,.0f}", f"{paper['ips'][model]:,.0f}")
    ratio = ours["dscnn_t0/fasternet_t0"]
    t2.add_row("dscnn_t0 / fasternet_t0", "-" if ratio is None else f"{ratio:.2f}", f"{paper['dscnn_t0/fasternet_t0']:.2f}")
    return [t1, t2]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python benchmarks/gpu_suite_summary.py SUITE_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    summary = summarise(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console = Console(width=160)
    for table in render(summary):
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
