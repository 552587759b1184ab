"""Deployable files of a deploy-form model (ONNX, TorchScript) and the checks they pass.

Any checkpoint of `dscnn.save_checkpoint` (train form: fused on the way; deploy form; pruned
configs) is exported and the export checks itself: onnxruntime's output must equal PyTorch's on
random and real images within docs/design.md section 0's relative tolerance (1e-5 in float32) applied
layer by layer against a float64 reference (`dscnn.export.tolerance`), the graph
must hold no BatchNormalization node and no parallel branch (see `dscnn.export.onnx_graph`), and the
ONNX model's CPU latency under onnxruntime is reported beside PyTorch's, both timed with the
protocol of `dscnn.latency` (batch 1, fixed threads, warm-up, median of repeats).

interpretation: the exporter is torch's legacy TorchScript-based one (``dynamo=False``), which
needs no package beyond ``onnx``; the dynamo exporter would need ``onnxscript``. It is run with
``TrainingMode.PRESERVE`` so that it cannot silently fold a BN left in the model: the graph check
sees what the model really holds. TorchScript files are traced (``torch.jit.trace``). Both APIs
are deprecated in this torch and still work; their deprecation warnings are silenced here.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from dscnn.complexity import deploy_copy
from dscnn.export.decisions import DecisionLog, as_tensors, recorded_decisions, with_decision_outputs
from dscnn.export.onnx_graph import find_parallel_branches, node_histogram
from dscnn.export.tolerance import allowed_error, float64_reference
from dscnn.latency import LatencyResult, LatencySettings, _summarise, measure_latency_ms

DEFAULT_OPSET = 17  # widely supported by runtimes; the legacy exporter goes up to 20
REL_TOLERANCE = 1e-5  # docs/design.md section 0, float32; per layer, of its own magnitudes (dscnn.export.tolerance)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class OutputCheck:
    """How far an exported model's outputs are from PyTorch's, and from the float64 truth, on one batch.

    The check is on the float64 truth: the export passes when ``fp64_abs_error`` is at most
    ``allowed_abs_error``, what an error of `REL_TOLERANCE` in every layer (of that layer's own
    magnitudes) moves the output (`dscnn.export.tolerance`), and never less than `REL_TOLERANCE`
    times the largest output. ``max_rel_error`` (against PyTorch float32, relative to the largest
    logit) is kept for reading; for tiny logits it says little.
    """

    inputs: str  # which inputs: "random", "real", ...
    batch: int  # images in the batch
    max_abs_error: float  # max |y_exported - y_torch|
    max_rel_error: float  # max_abs_error / max |y_torch| (docs/design.md section 0)
    torch_fp32_rel_error: float = 0.0  # PyTorch float32 vs PyTorch float64, relative
    fp64_rel_error: float = float("nan")  # exported vs PyTorch float64, relative
    fp64_abs_error: float = float("nan")  # max |y_exported - y_float64|
    allowed_abs_error: float = float("nan")  # the largest fp64_abs_error a correct float32 export may show
    torch_fp32_abs_error: float = float("nan")  # max |y_torch_float32 - y_float64|, for comparison
    tolerance: float = REL_TOLERANCE  # the per-layer relative tolerance allowed_abs_error stands for
    decisions_flipped: int = 0  # threshold decisions the export took otherwise than float64, all near the threshold
    decision_problems: tuple[str, ...] = ()  # decisions taken otherwise far from the threshold, or not comparable

    def passed(self) -> bool:
        return self.fp64_abs_error <= self.allowed_abs_error and not self.decision_problems  # False for NaN

    def problem(self) -> str:
        if self.decision_problems:
            return f"{self.inputs} inputs: " + "; ".join(self.decision_problems)
        return (f"{self.inputs} inputs: error {self.fp64_abs_error:.3g} from the float64 reference > allowed "
                f"{self.allowed_abs_error:.3g} (a {self.tolerance:g} error in every layer; PyTorch float32 itself: "
                f"{self.torch_fp32_abs_error:.3g}; relative to the largest output {self.fp64_rel_error:.3g})")


@dataclass(frozen=True)
class VerifyReport:
    """Numerical and structural checks of one exported ONNX file, plus optional latencies."""

    checks: tuple[OutputCheck, ...]  # one per input batch
    node_types: dict[str, int]  # node count per ONNX op type
    branches: tuple[str, ...]  # mergeable parallel convs found (a re-param block left unfused)
    tolerance: float = REL_TOLERANCE  # per-layer relative tolerance the checks were judged by
    onnx_latency: LatencyResult | None = None  # onnxruntime, CPU
    torch_latency: LatencyResult | None = None  # PyTorch, same settings

    @property
    def batchnorm_nodes(self) -> int:
        return self.node_types.get("BatchNormalization", 0)

    @property
    def problems(self) -> list[str]:
        """Why the export is not acceptable; empty when it is."""
        out = [c.problem() for c in self.checks if not c.passed()]
        if self.batchnorm_nodes:
            out.append(f"{self.batchnorm_nodes} BatchNormalization node(s) left in the graph")
        return out + list(self.branches)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(batchnorm_nodes=self.batchnorm_nodes, problems=self.problems, ok=self.ok)
        return data


def export_onnx(model: nn.Module, path: str | Path, *, resolution: int, opset: int = DEFAULT_OPSET,
                fuse: bool = True, in_channels: int = 3) -> Path:
    """Write ``model`` as ONNX (input ``input`` NCHW float32 with a dynamic batch, output ``logits``).

    Args:
        model: any module; it is copied, never changed.
        resolution: input height = width traced.
        opset: ONNX opset, 7..20 (the legacy exporter's range).
        fuse: export the fused deploy form (`dscnn.deploy_copy`); False exports the module as it is.
    """
    if not 7 <= opset <= 20:
        raise ValueError(f"opset must be in 7..20 (torch's TorchScript-based exporter), got {opset}")
    model = _cpu_eval_copy(model, fuse)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_deprecations():
        torch.onnx.export(
            model, (_example(resolution, in_channels),), str(path), dynamo=False, opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    onnx.checker.check_model(str(path))
    return path


def export_torchscript(model: nn.Module, path: str | Path, *, resolution: int, fuse: bool = True,
                       in_channels: int = 3) -> Path:
    """Write ``model`` (copied; deploy form when ``fuse``) as a traced TorchScript file."""
    model = _cpu_eval_copy(model, fuse)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model, _example(resolution, in_channels))
    traced.save(str(path))
    return path


def verify_onnx(model: nn.Module, path: str | Path, inputs: Mapping[str, Tensor], *,
                latency: LatencySettings | None = None, tolerance: float = REL_TOLERANCE) -> VerifyReport:
    """Compare the ONNX file at ``path`` with ``model`` (the reference, as given) and inspect its graph.

    Args:
        inputs: named NCHW batches, e.g. ``{"random": ..., "real": ...}``.
        latency: when given, time the ONNX file (onnxruntime) and ``model`` (PyTorch) under it.
    """
    proto = onnx.load(str(path))
    graph, count = with_decision_outputs(proto)  # the comparison nodes' results too: see dscnn.export.decisions
    session = _session(graph, threads=1)

    def run(x: Tensor) -> tuple[Any, list[Tensor]]:
        outputs = session.run(None, {INPUT_NAME: x.numpy()})
        return outputs[0], as_tensors(outputs[1 : 1 + count])

    checks = _compare(model, run, inputs, tolerance)
    onnx_ms = torch_ms = None
    if latency is not None:
        onnx_ms = measure_onnx_latency_ms(path, latency)
        torch_ms = measure_latency_ms(model, latency)
    return VerifyReport(checks, node_histogram(proto), tuple(find_parallel_branches(proto)), tolerance,
                        onnx_ms, torch_ms)


def verify_torchscript(model: nn.Module, path: str | Path, inputs: Mapping[str, Tensor], *,
                       tolerance: float = REL_TOLERANCE) -> tuple[OutputCheck, ...]:
    """Reload the TorchScript file at ``path`` and compare its outputs with ``model``'s."""
    with _quiet_deprecations():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return _compare(model, lambda x: (loaded(x).numpy(), None), inputs, tolerance)


def measure_onnx_latency_ms(path: str | Path, settings: LatencySettings) -> LatencyResult:
    """Time the ONNX file under onnxruntime's CPU provider with the protocol of `dscnn.latency`."""
    if settings.device != "cpu" or settings.precision != "fp32" or settings.channels_last:
        raise ValueError("onnxruntime latency is measured on the cpu in fp32 NCHW; got "
                         f"device={settings.device!r}, precision={settings.precision!r}, "
                         f"channels_last={settings.channels_last}")
    session = _session(path, threads=settings.threads)
    shape = (settings.batch, settings.in_channels, settings.resolution, settings.resolution)
    feed = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for _ in range(settings.warmup or 0):
        session.run(None, feed)
    medians = [statistics.median(_ort_run_ms(session, feed) for _ in range(settings.runs or 1))
               for _ in range(settings.repeats)]
    return _summarise(medians, settings, None)


Run = Callable[[Tensor], tuple[Any, list[Tensor] | None]]  # x -> (output, its comparison results or None)


def _compare(model: nn.Module, run: Run, inputs: Mapping[str, Tensor],
             tolerance: float = REL_TOLERANCE) -> tuple[OutputCheck, ...]:
    """Errors of ``run(x)`` (the exported model) against ``model(x)`` and its float64 truth, per named batch.

    The float64 truth takes the exported model's threshold decisions, or, when ``run`` gives none,
    PyTorch float32's (`dscnn.export.decisions`).
    """
    if not inputs:
        raise ValueError("inputs is empty: give at least one named batch of NCHW images")
    reference = _cpu_eval_copy(model, fuse=False)
    reference64 = float64_reference(reference)
    checks = []
    for name, x in inputs.items():
        if x.ndim != 4:
            raise ValueError(f"inputs[{name!r}] must be an NCHW batch, got shape {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float32).contiguous()
        with torch.inference_mode(), recorded_decisions() as torch_decisions:
            y_ref = reference(x).double()
        with torch.inference_mode():
            output, decisions = run(x)
            y_exported = torch.from_numpy(np.asarray(output)).double()
        log = DecisionLog()
        y64, allowed = allowed_error(reference64, x, tolerance, forced=torch_decisions if decisions is None
                                     else decisions, log=log)
        problems = tuple(log.far)
        if not log.aligned:  # the graph's comparisons do not match the model's: judge without them
            problems += ("its comparison nodes do not match the model's comparisons one to one",)
        diff = (y_exported - y_ref).abs().max().item()
        fp64_diff = (y_exported - y64).abs().max().item()
        torch_diff = (y_ref - y64).abs().max().item()
        checks.append(OutputCheck(
            name, x.shape[0], diff, _relative(diff, y_ref), torch_fp32_rel_error=_relative(torch_diff, y64),
            fp64_rel_error=_relative(fp64_diff, y64), fp64_abs_error=fp64_diff, allowed_abs_error=allowed,
            torch_fp32_abs_error=torch_diff, tolerance=tolerance, decisions_flipped=log.flipped,
            decision_problems=problems,
        ))
    return tuple(checks)


def _relative(diff: float, reference: Tensor) -> float:
    scale = reference.abs().max().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _cpu_eval_copy(model: nn.Module, fuse: bool) -> nn.Module:
    """A float32 CPU copy in eval mode (deploy form when ``fuse``); the caller's model is untouched."""
    model = deploy_copy(model) if fuse else copy.deepcopy(model)
    return model.to("cpu", torch.float32).eval()


def _example(resolution: int, in_channels: int) -> Tensor:
    if resolution < 1 or in_channels < 1:
        raise ValueError(f"resolution and in_channels must be >= 1, got {resolution}, {in_channels}")
    return torch.randn(1, in_channels, resolution, resolution, generator=torch.Generator().manual_seed(0))


def _session(model: str | Path | bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the measurement protocol fixes the thread count
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _ort_run_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - start) * 1000.0


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch 2.14's notices that the legacy ONNX exporter and torch.jit are deprecated.

    Also its advice against constant folding with ``TrainingMode.PRESERVE``: that concerns models in
    training mode; ours are always in eval mode, where folding constants is exactly what we want.
    """
    with warnings.catch_warnings():
        for pattern in (r".*legacy TorchScript-based ONNX export", r"The feature will be removed",
                        r".*torch\.jit\.\w+` is deprecated", r"It is recommended that constant folding"):
            warnings.filterwarnings("ignore", message=pattern)
        yield
