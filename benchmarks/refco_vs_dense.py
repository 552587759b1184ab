"""CPU latency of the deploy-form RefCO against the dense 1x1 conv it replaces (docs/design.md 2.2, 4).

The layers are FalconNet's own at 224: every stage width C (32, 64, 128, 256 at 56, 28, 14, 7 pixels)
with its expanding C -> 2C and projecting 2C -> C 1x1, each timed as ``Conv2d(C_in, C_out, 1)`` and
as the fused RefCO (grouped 1x1 -> shuffle -> grouped 1x1) at R = 2 and R = 4 with the window K the
model uses (`refco_kernel`). All ops of a row are timed one after the other in the same process under
the docs/design.md section 4 CPU protocol (batch 1, fixed threads, >= 10 warm-up, >= 100 timed runs,
median of 3 repeats); read the ratios, not the absolute times, on a shared machine. MACs are fvcore's.

    flock /tmp/repnas-cpu-bench.lock .venv/bin/python benchmarks/refco_vs_dense.py [--threads 1]
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
from dscnn.blocks.refco import RefCO, refco_kernel
from dscnn.latency import LatencySettings, measure_latency_ms, pin_malloc

RESULTS = Path(__file__).parent / "results" / "refco_vs_dense.json"
#: FalconNet's stage widths and their map sizes at 224 (stem to h/4, then /2 per stage).
STAGES = ((32, 56), (64, 28), (128, 14), (256, 7))
REDUCTIONS = (2, 4)


def candidates(in_channels: int, out_channels: int) -> dict[str, nn.Module]:
    ops: dict[str, nn.Module] = {"dense": nn.Conv2d(in_channels, out_channels, 1)}
    for r in REDUCTIONS:
        ops[f"refco_r{r}"] = reparameterize_model(RefCO(in_channels, out_channels, reduction=r))
    return ops


def measure(in_channels: int, out_channels: int, size: int, threads: int) -> dict[str, Any]:
    settings = LatencySettings(resolution=size, in_channels=in_channels, threads=threads)
    row: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels, "size": size}
    for name, op in candidates(in_channels, out_channels).items():
        result = measure_latency_ms(op.eval(), settings)
        row[name] = {
            "latency_ms": result.median_ms, "spread": result.spread, "noisy": result.noisy,
            "params": count_params(op), "macs": count_macs(op, size, in_channels=in_channels),
        }
    dense_ms = row["dense"]["latency_ms"]
    for r in REDUCTIONS:
        op = row[f"refco_r{r}"]
        op["kernel"] = refco_kernel(in_channels, out_channels, r)
        op["latency_vs_dense"] = op["latency_ms"] / dense_ms
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    head = " | ".join(f"R={r}  K  x dense  params  MACs" for r in REDUCTIONS)
    print(f"{'C_in->C_out':>11} {'HxW':>6} | {head}")
    for row in rows:
        cells = [f"{row['in_channels']:>4}->{row['out_channels']:<4} {row['size']:>3}^2"]
        dense = row["dense"]
        for r in REDUCTIONS:
            op = row[f"refco_r{r}"]
            cells.append(
                f"   {op['kernel']:>3} {op['latency_vs_dense']:>7.2f} {op['params'] / dense['params']:>7.3f}"
                f" {op['macs'] / dense['macs']:>5.3f}"
            )
        noisy = any(row[name]["noisy"] for name in ("dense", *(f"refco_r{r}" for r in REDUCTIONS)))
        print(" | ".join(cells) + ("  (noisy repeats)" if noisy else ""))
    print("x dense = RefCO latency / dense 1x1 latency (same run); params and MACs also relative to dense")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--expansion", type=int, default=2, help="λ of the MetaLightBlocks (FalconNet: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    pinned = pin_malloc()  # measure_latency_ms pins too; recorded for the JSON
    torch.manual_seed(0)
    rows = []
    for channels, size in STAGES:
        hidden = args.expansion * channels
        rows += [measure(channels, hidden, size, args.threads), measure(hidden, channels, size, args.threads)]
    print_table(rows)
    payload = {
        "protocol": "CPU, batch 1, fp32, NCHW, median of 3 repeats x 100 timed runs after 10 warm-up; "
                    "the ops of a row timed one after the other in one process",
        "threads": args.threads, "expansion": args.expansion, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "macs": "fvcore multiply-accumulates (the index_select shuffle is not counted)",
        "malloc_pinned": pinned,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
