"""The command line of ``python -m dscnn.export``: flags -> `ExportConfig` -> `run_export` -> report.

Real inputs: ``--real-data DIR`` reads the first ``--num-real`` image files under DIR (sorted,
recursive), normalised by their own channel statistics; without it, validation images of the
embedded CIFAR-10 subset normalised by its training statistics, as `dscnn.train` does.
Exit status: 0 when every check passes, 1 when one fails or the checkpoint cannot be used, 2 for
bad flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dscnn.checkpoint import CheckpointError, load_checkpoint
from dscnn import export as _lib
from dscnn.export import (DEFAULT_OPSET, REL_TOLERANCE, export_onnx, export_torchscript, verify_onnx,
                          verify_torchscript)
from dscnn.latency import LatencySettings, measure_latency_ms
from dscnn.reparam import is_deploy_form, reparameterize_model


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str  # a dscnn.save_checkpoint file (train or deploy form)
    onnx: str | None = None  # ONNX output path
    torchscript: str | None = None  # TorchScript output path
    resolution: int = 0  # input size; 0 = the checkpoint config's resolution
    opset: int = DEFAULT_OPSET  # ONNX opset
    real_data: str | None = None  # folder of images; None = the embedded CIFAR-10 subset
    num_real: int = 8  # real images checked (0 = none)
    num_random: int = 4  # random N(0, 1) images checked
    latency: LatencySettings | None = LatencySettings()  # CPU timing protocol; None = no timing


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Load, fuse, export and check; the JSON-ready report (``ok`` says whether every check passed)."""
    model, info = load_checkpoint(config.checkpoint)
    if info.form == "train":
        reparameterize_model(model)  # fused here once: the files and the checks all see this form
    if not is_deploy_form(model):
        raise CheckpointError(f"{config.checkpoint!r}: the model still has unfused blocks after fusion")
    resolution = config.resolution or info.config.resolution
    inputs = {"random": torch.randn(config.num_random, 3, resolution, resolution,
                                    generator=torch.Generator().manual_seed(0))}
    if config.num_real:
        inputs["real"] = real_inputs(resolution, config.real_data, config.num_real)
    latency = config.latency.replace(resolution=resolution) if config.latency else None
    doc: dict[str, Any] = {"checkpoint": config.checkpoint, "family": info.config.family, "form": info.form,
                           "arch_hash": info.config.arch_hash(), "resolution": resolution,
                           "config": {**dataclasses.asdict(config), "latency": latency.to_dict() if latency else None}}
    problems: list[str] = []
    if config.onnx:
        export_onnx(model, config.onnx, resolution=resolution, opset=config.opset, fuse=False)
        report = verify_onnx(model, config.onnx, inputs, latency=latency)
        doc["onnx"] = {"path": config.onnx, **report.to_dict()}
        problems += [f"onnx: {p}" for p in report.problems]
    elif latency:
        doc["torch_latency"] = measure_latency_ms(model, latency).to_dict()
    if config.torchscript:
        export_torchscript(model, config.torchscript, resolution=resolution, fuse=False)
        checks = verify_torchscript(model, config.torchscript, inputs)
        doc["torchscript"] = {"path": config.torchscript, "checks": [dataclasses.asdict(c) for c in checks]}
        problems += [f"torchscript: {c.inputs} inputs: relative error {c.max_rel_error:.3g}"
                     for c in checks if not c.passed()]
    return {**doc, "problems": problems, "ok": not problems}


def real_inputs(resolution: int, folder: str | None, count: int) -> Tensor:
    """``count`` real images at ``resolution``, normalised; see the module docstring for the source."""
    from dscnn.data import DataConfig, load_dataset  # lazy: only the CLI needs the data package
    from dscnn.data._common import IMAGE_SUFFIXES
    from dscnn.data.augment import prepare_batch
    from dscnn.data.decode import decode_all

    if folder is None:
        data = load_dataset(DataConfig())
        images, (mean, std) = data.val_images[:count], data.channel_stats
    else:
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"--real-data {folder!r} is not a folder")
        paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not paths:
            raise ValueError(f"--real-data {folder!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        images = decode_all(paths, resolution)
        x = images.double() / 255
        mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp_min(1e-3).tolist()
    scale = 255 * torch.ones(1, 3, 1, 1)
    return prepare_batch(images, torch.tensor(mean).view(1, 3, 1, 1) * scale,
                         torch.tensor(std).view(1, 3, 1, 1) * scale, resolution)


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
                lines.append(f"  {c['inputs']} ({c['batch']} images): max abs error {c['max_abs_error']:.3g}, "
                             f"max rel error {c['max_rel_error']:.3g} (tolerance {REL_TOLERANCE:g})")
    onnx_part = doc.get("onnx", {})
    timings = [(label, t) for label, t in (("pytorch", onnx_part.get("torch_latency") or doc.get("torch_latency")),
                                           ("onnxruntime", onnx_part.get("onnx_latency"))) if t]
    if timings:
        s = doc["config"]["latency"]
        lines.append(f"latency (cpu, {s['threads']} thread(s), batch {s['batch']}, median of {s['repeats']} x "
                     f"{s['runs']} runs): " + ", ".join(f"{label} {t['median_ms']:.3f} ms" + (" (noisy)" if t["noisy"]
                                                        else "") for label, t in timings))
    lines += [f"FAILED: {p}" for p in doc["problems"]] or ["all checks passed"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[ExportConfig, str | None]:
    d = ExportConfig("")
    p = argparse.ArgumentParser(prog="python -m dscnn.export", description=f"{_lib.__doc__}\n{__doc__}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint written by dscnn.save_checkpoint (train or deploy form)")
    p.add_argument("--onnx", help="write the deploy form as ONNX here and check it with onnxruntime")
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
        p.error("nothing to do: give --onnx PATH and/or --torchscript PATH")
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
        doc = run_export(config)
    except ValueError as e:  # CheckpointError and the data package's DataError are ValueErrors
        raise SystemExit(f"python -m dscnn.export: error: {e}") from None
    print(render(doc))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": ["python", "-m", "dscnn.export", *(sys.argv[1:] if argv is None else argv)], **doc}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["ok"] else 1
