"""One export job: load a checkpoint, fuse it, write the files, check them: `run_export(ExportConfig)`.

Files are written to temp files beside their paths (`dscnn.checkpoint.temp_path`) and renamed
into place only when every check passed: a failed export leaves no file behind.

Real inputs: ``real_data`` names a folder whose first ``num_real`` image files (sorted, recursive)
are used, normalised by their own channel statistics; without it, validation images of the
embedded CIFAR-10 subset normalised by its training statistics, as `dscnn.train` does.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dscnn.checkpoint import CheckpointError, load_checkpoint, remove_stale_temps, temp_path
from dscnn.data import IMAGE_SUFFIXES, DataConfig, DataError, decode_all, load_dataset, prepare_batch
from dscnn.export.files import (
    DEFAULT_OPSET,
    OutputCheck,
    VerifyReport,
    export_onnx,
    export_torchscript,
    verify_onnx,
    verify_torchscript,
)
from dscnn.latency import LatencyResult, LatencySettings, measure_latency_ms
from dscnn.reparam import is_deploy_form, reparameterize_model

__all__ = ["ExportConfig", "ExportReport", "real_inputs", "run_export"]


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


@dataclass(frozen=True)
class ExportReport:
    """What `run_export` wrote and found; ``to_dict()`` is the JSON the CLI writes."""

    checkpoint: str
    family: str
    form: str  # the checkpoint's form: "train" (fused here), "deploy" or "pruned"
    arch_hash: str
    resolution: int
    config: dict[str, Any]  # the ExportConfig, with the resolved latency settings
    onnx_path: str | None = None
    onnx: VerifyReport | None = None  # onnxruntime vs PyTorch, graph check, latencies
    torchscript_path: str | None = None
    torchscript_checks: tuple[OutputCheck, ...] = ()
    torch_latency: LatencyResult | None = None  # PyTorch timing when no ONNX file was asked for
    problems: tuple[str, ...] = field(default=())  # every failed check, one line each

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def written(self) -> bool:
        """The files were written (only when every check passed)."""
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"checkpoint": self.checkpoint, "family": self.family, "form": self.form,
                               "arch_hash": self.arch_hash, "resolution": self.resolution, "config": self.config}
        if self.onnx is not None:
            doc["onnx"] = {"path": self.onnx_path, **self.onnx.to_dict()}
        if self.torch_latency is not None:
            doc["torch_latency"] = self.torch_latency.to_dict()
        if self.torchscript_path is not None:
            doc["torchscript"] = {"path": self.torchscript_path,
                                  "checks": [dataclasses.asdict(c) for c in self.torchscript_checks]}
        return {**doc, "problems": list(self.problems), "ok": self.ok, "written": self.written}


def run_export(config: ExportConfig) -> ExportReport:
    """Load, fuse, export and check; ``report.ok`` says whether every check passed."""
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
    onnx_report: VerifyReport | None = None
    torch_latency: LatencyResult | None = None
    checks: tuple[OutputCheck, ...] = ()
    problems: list[str] = []
    temps: dict[str, Path] = {}
    try:
        if config.onnx:
            temps[config.onnx] = _temp(config.onnx)
            export_onnx(model, temps[config.onnx], resolution=resolution, opset=config.opset, fuse=False)
            onnx_report = verify_onnx(model, temps[config.onnx], inputs, latency=latency)
            problems += [f"onnx: {p}" for p in onnx_report.problems]
        elif latency:
            torch_latency = measure_latency_ms(model, latency)
        if config.torchscript:
            temps[config.torchscript] = _temp(config.torchscript)
            export_torchscript(model, temps[config.torchscript], resolution=resolution, fuse=False)
            checks = verify_torchscript(model, temps[config.torchscript], inputs)
            problems += [f"torchscript: {c.problem()}" for c in checks if not c.passed()]
        if not problems:
            for final, tmp in temps.items():
                os.replace(tmp, final)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return ExportReport(
        checkpoint=config.checkpoint, family=info.config.family, form=info.form, arch_hash=info.config.arch_hash(),
        resolution=resolution, config={**dataclasses.asdict(config), "latency": latency.to_dict() if latency else None},
        onnx_path=config.onnx, onnx=onnx_report, torchscript_path=config.torchscript, torchscript_checks=checks,
        torch_latency=torch_latency, problems=tuple(problems),
    )


def _temp(path: str) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    return temp_path(path)


def real_inputs(resolution: int, folder: str | None, count: int) -> Tensor:
    """``count`` real images at ``resolution``, normalised; see the module docstring for the source."""
    if folder is None:
        data = load_dataset(DataConfig())
        images, (mean, std) = data.val_images[:count], data.channel_stats
    else:
        root = Path(folder)
        if not root.is_dir():
            raise DataError(f"real_data {folder!r} is not a folder")
        paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not paths:
            raise DataError(f"real_data {folder!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        images = decode_all(paths, resolution)
        x = images.double() / 255
        mean, std = tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())
    scale = 255 * torch.ones(1, 3, 1, 1)
    return prepare_batch(images, torch.tensor(mean).view(1, 3, 1, 1) * scale,
                         torch.tensor(std).view(1, 3, 1, 1) * scale, resolution)
