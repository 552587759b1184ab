"""Deploy form vs its plain twin: does the fused model cost more than its convs?

Issue 3's expectation: the deploy form of dscnn_t0 is within 10% of a hand-written plain network
with exactly the same convs. The twin (`plain_twin.py`) is that network; both are timed under the
same `LatencySettings`, alternating deploy and twin in every repeat so machine drift hits both.

    python benchmarks/deploy_overhead.py                      # CPU, batch 1, 1 thread, 224
    python benchmarks/deploy_overhead.py --models repvgg_a0 --runs 20 --out /tmp/o.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from plain_twin import plain_twin
from rich.console import Console
from rich.table import Table

from dscnn import LatencySettings, deploy_copy, list_models, measure_latency_ms
from dscnn.environment import environment
from dscnn.external import create_bench_model

DEFAULT_MODELS = ("dscnn_t0", "fasternet_t0", "falconnet", "repvgg_a0")
TOLERANCE = 0.10  # the "within 10%"


def compare(name: str, settings: LatencySettings) -> dict[str, Any]:
    """Median latency of ``name``'s deploy form and of its plain twin, measured in alternation."""
    deploy = deploy_copy(create_bench_model(name, resolution=settings.resolution))
    example = torch.randn(2, settings.in_channels, settings.resolution, settings.resolution)
    twin = plain_twin(deploy, example)
    once = settings.replace(repeats=1)
    deploy_ms, twin_ms = [], []
    for _ in range(settings.repeats):
        deploy_ms.append(measure_latency_ms(deploy, once).median_ms)
        twin_ms.append(measure_latency_ms(twin, once).median_ms)
    d, t = statistics.median(deploy_ms), statistics.median(twin_ms)
    return {"model": name, "deploy_ms": d, "twin_ms": t, "overhead": d / t - 1,
            "within_tolerance": d <= (1 + TOLERANCE) * t, "deploy_repeats_ms": deploy_ms, "twin_repeats_ms": twin_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma list of registry models")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=None, help="default: the CPU protocol's 10")
    p.add_argument("--runs", type=int, default=None, help="default: the CPU protocol's 100")
    p.add_argument("--repeats", type=int, default=5, help="alternating deploy/twin rounds")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "deploy_overhead.json"))
    a = p.parse_args(argv)
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in list_models()]
    if unknown or not names:
        p.error(f"unknown model(s) {unknown or names}; registered: {', '.join(list_models())}")
    try:
        settings = LatencySettings(resolution=a.resolution, threads=a.threads, warmup=a.warmup, runs=a.runs,
                                   repeats=a.repeats)
    except ValueError as e:
        p.error(str(e))
    rows = [compare(n, settings) for n in names]
    title = f"deploy form vs plain twin: cpu, batch 1, {a.resolution}x{a.resolution}, {a.threads} thread(s)"
    table = Table(title=title)
    for col in ("Model", "Deploy (ms)", "Twin (ms)", "Overhead", f"Within {TOLERANCE:.0%}"):
        table.add_column(col, justify="left" if col == "Model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['deploy_ms']:.2f}", f"{r['twin_ms']:.2f}", f"{r['overhead']:+.1%}",
                      "yes" if r["within_tolerance"] else "NO")
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"settings": settings.to_dict(), "tolerance": TOLERANCE, "environment": environment("cpu", a.threads),
           "results": rows}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
