"""CPU latency of the deploy-form RefCO against the dense 1x1 conv it replaces (docs/design.md 2.2, 4).

For each width C and map size, times ``Conv2d(C, C, 1)`` and the fused ``RefCO(C, C)`` at R = 2 and
R = 4 (smallest full-range band K) under the docs/design.md section 4 CPU protocol (batch 1, fixed threads, >= 10
warm-up, >= 100 timed runs, median of 3 repeats), prints a table, writes JSON. The MACs column is
fvcore's count relative to the dense conv; it includes the zeros RefCO's tiles execute.

glibc's malloc returns large freed blocks to the OS depending on process history, so an op with
several MB-sized intermediates (RefCO's gathers) paid 1-2 ms of page faults per call in some
processes and not in others (0.6 vs 2.4 ms for RefCO(64) at 56x56); `dscnn.latency.pin_malloc` (applied
by every CPU measurement) fixes glibc's mmap/trim thresholds so every op is timed with warm heap pages.

    .venv/bin/python benchmarks/refco_vs_dense.py [--threads 1] [--widths 64 128 256] [--sizes 56 28]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dscnn import count_macs, count_params, reparameterize_model
from dscnn.blocks.refco import RefCO, full_range_kernel
from dscnn.latency import LatencySettings, measure_latency_ms, pin_malloc

RESULTS = Path(__file__).parent / "results" / "refco_vs_dense.json"


def candidates(channels: int) -> dict[str, nn.Module]:
    ops: dict[str, nn.Module] = {"dense": nn.Conv2d(channels, channels, 1)}
    for r in (2, 4):
        ops[f"refco_r{r}"] = reparameterize_model(RefCO(channels, channels, reduction=r))
    return ops


def measure(channels: int, size: int, threads: int) -> dict[str, Any]:
    settings = LatencySettings(resolution=size, in_channels=channels, threads=threads)
    row: dict[str, Any] = {"channels": channels, "size": size}
    for name, op in candidates(channels).items():
        result = measure_latency_ms(op, settings)
        row[name] = {
            "latency_ms": result.median_ms, "spread": result.spread, "noisy": result.noisy,
            "params": count_params(op), "macs": _macs(op, channels, size),
        }
    for r in (2, 4):
        row[f"refco_r{r}"]["kernel"] = full_range_kernel(channels, channels, r)
    return row


def _macs(op: nn.Module, channels: int, size: int) -> int:
    # count_macs feeds 1 x in_channels x size x size, as the timing does.
    return count_macs(op, size, in_channels=channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 28])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    pinned = pin_malloc()  # measure_latency_ms pins too; recorded for the JSON
    torch.manual_seed(0)
    rows = [measure(c, s, args.threads) for c in args.widths for s in args.sizes]
    print(f"{'C':>4} {'HxW':>6} | {'dense ms':>9} | {'R=2 K':>5} {'ms':>7} {'x dense':>7} {'MACs':>5} |"
          f" {'R=4 K':>5} {'ms':>7} {'x dense':>7} {'MACs':>5}")
    for row in rows:
        dense = row["dense"]
        cells = [f"{row['channels']:>4} {row['size']:>3}^2 | {dense['latency_ms']:>9.3f}"]
        for r in (2, 4):
            op = row[f"refco_r{r}"]
            cells.append(
                f"{op['kernel']:>5} {op['latency_ms']:>7.3f} {op['latency_ms'] / dense['latency_ms']:>7.2f}"
                f" {op['macs'] / dense['macs']:>5.2f}"
            )
        noisy = any(row[name]["noisy"] for name in ("dense", "refco_r2", "refco_r4"))
        print(" | ".join(cells) + ("  (noisy repeats)" if noisy else ""))
    payload = {
        "protocol": "CPU, batch 1, fp32, NCHW, median of 3 repeats x 100 timed runs after 10 warm-up",
        "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "macs": "fvcore multiply-accumulates (index_select gathers are not counted)",
        "malloc_pinned": pinned,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
