"""``python -m dscnn.export ckpt.pt [--onnx model.onnx] [--torchscript model.ts]``: flags -> `ExportConfig`
-> `run_export` -> report. With neither flag, the ONNX file goes beside the checkpoint (``ckpt.onnx``).
Files are written only when every check passes.

Real inputs: ``--real-data DIR`` reads the first ``--num-real`` image files under DIR (sorted,
recursive), normalised by their own channel statistics; without it, validation images of the
embedded CIFAR-10 subset normalised by its training statistics, as `dscnn.train` does.
Exit status: 0 when every check passes, 1 when one fails or the checkpoint cannot be used, 2 for
bad flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dscnn.checkpoint import CheckpointError
from dscnn.data import DataError
from dscnn.export import files as _lib
from dscnn.export.run import ExportConfig, run_export
from dscnn.latency import LatencySettings


def render(doc: dict[str, Any]) -> str:
    lines = [f"{doc['checkpoint']}: {doc['family']} ({doc['form']} form"
             f"{', fused for export' if doc['form'] == 'train' else ''}), {doc['resolution']}x{doc['resolution']}"]
    for kind in ("onnx", "torchscript"):
        if kind in doc:
            part = doc[kind]
            lines.append(f"{kind} {part['path']}")
            if kind == "onnx":
                lines.append("  nodes: " + ", ".join(f"{n} {op}" for op, n in part["node_types"].items()))
                lines.append(f"  BatchNormalization nodes: {part['batchnorm_nodes']}; "
                             f"parallel branches: {len(part['branches'])}")
            for c in part["checks"]:
                lines.append(f"  {c['inputs']} ({c['batch']} images): vs PyTorch max abs error {c['max_abs_error']:.3g} "
                             f"(rel {c['max_rel_error']:.3g}); vs float64 {c['fp64_abs_error']:.3g}, allowed "
                             f"{c['allowed_abs_error']:.3g} ({c['tolerance']:g} per layer; PyTorch float32 itself "
                             f"{c['torch_fp32_abs_error']:.3g})")
    onnx_part = doc.get("onnx", {})
    timings = [(label, t) for label, t in (("pytorch", onnx_part.get("torch_latency") or doc.get("torch_latency")),
                                           ("onnxruntime", onnx_part.get("onnx_latency"))) if t]
    if timings:
        s = doc["config"]["latency"]
        lines.append(f"latency (cpu, {s['threads']} thread(s), batch {s['batch']}, median of {s['repeats']} x "
                     f"{s['runs']} runs): " + ", ".join(f"{label} {t['median_ms']:.3f} ms" + (" (noisy)" if t["noisy"]
                                                        else "") for label, t in timings))
    lines += [f"FAILED: {p}" for p in doc["problems"]] or ["all checks passed"]
    if not doc["written"]:
        lines.append("nothing written: the files are kept only when every check passes")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[ExportConfig, str | None]:
    d = ExportConfig("")
    p = argparse.ArgumentParser(prog="python -m dscnn.export", description=f"{_lib.__doc__}\n{__doc__}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint written by dscnn.save_checkpoint (train or deploy form)")
    p.add_argument("--onnx", help="write the deploy form as ONNX here and check it with onnxruntime "
                                  "(default, when --torchscript is not given either: the checkpoint's path with .onnx)")
    p.add_argument("--torchscript", help="write the deploy form as traced TorchScript here and check it")
    p.add_argument("--resolution", type=int, default=0, help="input size (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=d.opset, help="ONNX opset, 7..20 (default %(default)s)")
    p.add_argument("--real-data", help="folder of images for the real-input check (default: embedded CIFAR-10)")
    p.add_argument("--num-real", type=int, default=d.num_real, help="real images checked (default %(default)s)")
    p.add_argument("--num-random", type=int, default=d.num_random, help="random images (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads when timing (default %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 10)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per repeat (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; median reported (default %(default)s)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--json", help="write the report to this JSON file")
    a = p.parse_args(argv)
    if not (a.onnx or a.torchscript):
        a.onnx = str(Path(a.checkpoint).with_suffix(".onnx"))
    outputs = [Path(o).resolve() for o in (a.onnx, a.torchscript) if o]
    if len(set(outputs)) < len(outputs) or Path(a.checkpoint).resolve() in outputs:
        p.error("--onnx, --torchscript and the checkpoint must be different files")
    for flag, value, low in (("--resolution", a.resolution, 0), ("--num-real", a.num_real, 0),
                             ("--num-random", a.num_random, 1)):
        if value < low:
            p.error(f"{flag} must be >= {low}, got {value}")
    if not 7 <= a.opset <= 20:
        p.error(f"--opset must be in 7..20, got {a.opset}")
    try:
        latency = None if a.no_latency else LatencySettings(threads=a.threads, warmup=a.warmup, runs=a.runs,
                                                             repeats=a.repeats)
    except ValueError as e:
        p.error(str(e))
    return ExportConfig(a.checkpoint, a.onnx, a.torchscript, a.resolution, a.opset, a.real_data, a.num_real,
                        a.num_random, latency), a.json


def main(argv: list[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    try:
        doc = run_export(config).to_dict()
    except (CheckpointError, DataError) as e:
        raise SystemExit(f"python -m dscnn.export: error: {e}") from None
    print(render(doc))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": ["python", "-m", "dscnn.export", *(sys.argv[1:] if argv is None else argv)], **doc}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["ok"] else 1
