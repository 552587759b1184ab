"""``python -m dscnn.bench``: deployment cost of registry models and torchvision baselines.

Prints a table in the shape of the DSCNN paper's Table 3 (params, FLOPs, train- and deploy-form
latency, speedup, throughput, FLOPS), one deploy-latency column per runtime (``--runtime
eager,onnxruntime``; `dscnn.runtimes`), and with ``--throughput-batch 32,256`` a throughput table in
FasterNet's protocol (eager PyTorch, large batches, fp32 and bf16 on GPU). Optionally written as
JSON with the environment. FLOPs = fvcore multiply-accumulates of the deploy form at batch 1
(docs/design.md section 0); FLOPS = FLOPs x images/s. ``--recheck`` re-times cached entries or a
study's trials and reports drift (`dscnn.recheck`).

Protocol (docs/design.md section 4): on GPU cudnn.benchmark on, >= 50 warm-up and 200 timed runs
per repeat, each bracketed by CUDA events, the median of >= 3 repeats; the TF32 flags are stated
in the table title and the JSON. On CPU a fixed thread count, >= 10 warm-up and 100 timed runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from dscnn.cost import DeployCost, cached_latency, measure_deploy_cost
from dscnn.environment import environment
from dscnn.external import create_bench_model, deploy_function, list_bench_models
from dscnn.latency import LatencyResult, LatencySettings, require_device
from dscnn.measure_cache import CacheUnusable, MeasureCache
from dscnn.runtimes import RUNTIMES, available_runtimes, check_runtime

CONVENTION = "FLOPs = fvcore multiply-accumulates of the deploy form at batch 1; FLOPS = FLOPs x images/s"
MARKS = '"!" = repeats disagreed by > 20%; "*" = timed on a busy machine (dscnn.machine_load)'
THROUGHPUT_RUNTIME = "eager"  # FasterNet's throughput protocol is eager PyTorch


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]  # bench names (registry models and torchvision baselines)
    settings: LatencySettings = LatencySettings()  # timing protocol; resolution also sizes the models
    num_classes: int = 1000  # classifier outputs of every model
    time_train_form: bool = True  # also time the unfused model in eager (latency train-form, speedup)
    cache: str | None = None  # SQLite latency cache path; None = measure everything afresh
    runtimes: tuple[str, ...] = ()  # deploy-latency runtimes, one column each; () = settings.runtime only
    throughput_batches: tuple[int, ...] = ()  # FasterNet-protocol throughput batches; () = none
    throughput_precisions: tuple[str, ...] = ("fp32",)  # precisions of the throughput table
    skipped_runtimes: dict[str, str] = field(default_factory=dict)  # `--runtime all`: runtime -> why not here

    @property
    def runtime_list(self) -> tuple[str, ...]:
        return self.runtimes or (self.settings.runtime,)


@dataclass(frozen=True)
class Throughput:
    batch: int
    precision: str
    result: LatencyResult

    def to_dict(self, macs: int) -> dict[str, Any]:
        return {"batch": self.batch, "precision": self.precision, "images_per_s": self.result.throughput_ips,
                "macs_per_s": macs * self.result.throughput_ips, "result": self.result.to_dict()}


@dataclass(frozen=True)
class ModelBench:
    """Everything measured for one model: the cost (first runtime), every runtime's latency, throughput."""

    name: str
    cost: DeployCost  # latency = the first runtime's; train_latency = eager train form
    runtimes: dict[str, LatencyResult]  # deploy-form latency per runtime, in the order asked
    throughput: tuple[Throughput, ...] = ()

    def ratios(self) -> dict[str, float]:
        """Each runtime's latency over the first runtime's (< 1 = faster than the first)."""
        first = next(iter(self.runtimes.values())).median_ms
        return {r: res.median_ms / first for r, res in self.runtimes.items()}


def resolve_models(spec: str) -> tuple[str, ...]:
    """A comma list of names or globs (``all``, ``dscnn_*``) -> bench names; unknown ones are an error."""
    known = list_bench_models()
    names: list[str] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        matches = known if item == "all" else fnmatch.filter(known, item)
        if not matches:
            raise ValueError(f"unknown model {item!r}; valid models: {', '.join(known)}")
        names += [m for m in matches if m not in names]
    if not names:
        raise ValueError("no models given")
    return tuple(names)


def resolve_runtimes(spec: str, settings: LatencySettings) -> tuple[tuple[str, ...], dict[str, str]]:
    """``eager,onnxruntime`` -> the names, each checked here; ``all`` -> every runtime available here.

    Returns the runtimes and, for ``all``, why each left-out runtime cannot run here. An explicitly
    named runtime that cannot run is a one-line `RuntimeUnavailable` (never silently dropped).
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if items == ["all"]:
        usable, missing = available_runtimes(settings)
        return tuple(usable), missing
    if not items:
        raise ValueError(f"no runtime given; valid runtimes: {', '.join(RUNTIMES)} or all")
    names = tuple(dict.fromkeys(items))
    for name in names:
        check_runtime(settings.replace(runtime=name))  # unknown names and unavailable runtimes raise here
    return names, {}


def run_bench(config: BenchConfig, log: Console | None = None) -> list[ModelBench]:
    """Measure every model of ``config`` in order: each runtime's deploy latency, then throughput."""
    require_device(config.settings.device)
    cache = MeasureCache(config.cache) if config.cache else None
    s = config.settings
    results = []
    for name in config.models:
        if log is not None:
            log.print(f"measuring {name} ...")
        model = create_bench_model(name, resolution=s.resolution, num_classes=config.num_classes)
        deploy = deploy_function(name)(model)
        source = {"bench": name, "num_classes": config.num_classes, "resolution": s.resolution}
        runtimes = list(config.runtime_list)
        cost = measure_deploy_cost(model, s.replace(runtime=runtimes[0]), cache=cache, to_deploy=_given(deploy),
                                   source=source)
        assert cost.latency is not None
        latencies = {runtimes[0]: cost.latency}
        for runtime in runtimes[1:]:
            if log is not None:
                log.print(f"  {name}: {runtime} ...")
            latencies[runtime] = cached_latency(deploy, s.replace(runtime=runtime), cache, cost.arch_key, source=source)
        if config.time_train_form:
            train = cached_latency(model, s.replace(runtime="eager"), cache)
            cost = dataclasses.replace(cost, train_latency=train)
        throughput = []
        for batch in config.throughput_batches:
            for precision in config.throughput_precisions:
                if log is not None:
                    log.print(f"  {name}: throughput batch {batch} {precision} ...")
                ts = s.replace(batch=batch, precision=precision, runtime=THROUGHPUT_RUNTIME, channels_last=s.channels_last)
                throughput.append(Throughput(batch, precision, cached_latency(deploy, ts, cache, cost.arch_key,
                                                                              source=source)))
        results.append(ModelBench(name, cost, latencies, tuple(throughput)))
    return results


def _given(deploy: nn.Module) -> Callable[[nn.Module], nn.Module]:
    """A ``to_deploy`` that returns the deploy form built once (shared by every runtime's timing)."""
    return lambda _model: deploy


def report(config: BenchConfig, results: list[ModelBench]) -> dict[str, Any]:
    """The JSON document: convention, resolved config, environment, one record per model."""
    return {
        "convention": CONVENTION,
        "config": dataclasses.asdict(config),
        "environment": environment(config.settings.device, config.settings.threads),
        "runtimes": list(config.runtime_list),
        "skipped_runtimes": config.skipped_runtimes,
        "models": [_model_record(r) for r in results],
    }


def _model_record(r: ModelBench) -> dict[str, Any]:
    return {"name": r.name, **r.cost.to_dict(), "runtimes": {k: v.to_dict() for k, v in r.runtimes.items()},
            "runtime_ratios": r.ratios(), "throughput": [t.to_dict(r.cost.macs) for t in r.throughput]}


def title(config: BenchConfig, batch: str | None = None, precision: str | None = None) -> str:
    """Device, batch, resolution, precision, threads, memory format and (GPU) the TF32 flags in force."""
    s = config.settings
    text = (f"{s.device}, batch {batch or s.batch}, {s.resolution}x{s.resolution}, {precision or s.precision}, "
            f"{s.threads} thread(s), {'channels_last' if s.channels_last else 'NCHW'}")
    env = environment(s.device, s.threads)
    if "tf32_cudnn" in env:
        text += f", TF32 conv {'on' if env['tf32_cudnn'] else 'off'} / matmul {'on' if env['tf32_matmul'] else 'off'}"
    return text


def render(config: BenchConfig, results: list[ModelBench]) -> Table:
    """The Table 3 layout, one deploy-latency column per runtime (and its ratio to the first)."""
    runtimes = config.runtime_list
    table = Table(title=title(config), caption=f"{CONVENTION}; {MARKS}; train form timed in eager")
    headers = ["Model", "Params train (M)", "Params deploy (M)", "FLOPs (G)", "Latency train (ms)"]
    headers += [f"Latency deploy {r} (ms)" for r in runtimes] + [f"{r}/{runtimes[0]}" for r in runtimes[1:]]
    headers += ["Speedup", f"Throughput {runtimes[0]} (img/s)", f"FLOPS {runtimes[0]} (G/s)"]
    for header in headers:
        table.add_column(header, justify="left" if header == "Model" else "right", no_wrap=header == "Model")
    for r in results:
        c = r.cost
        ratios = r.ratios()
        table.add_row(
            r.name, f"{c.params_train / 1e6:.2f}", f"{c.params_deploy / 1e6:.2f}", f"{c.macs / 1e9:.3f}",
            _fmt_latency(c.train_latency), *(_fmt_latency(r.runtimes[k]) for k in runtimes),
            *(f"{ratios[k]:.2f}" for k in runtimes[1:]),
            _fmt(_speedup(r), "{:.2f}x"), _fmt(c.latency.throughput_ips if c.latency else None, "{:.1f}"),
            _fmt(c.macs_per_s / 1e9 if c.macs_per_s is not None else None, "{:.1f}"),
        )
    return table


def render_throughput(config: BenchConfig, results: list[ModelBench]) -> Table:
    """FasterNet's protocol: images/s and achieved FLOPS (G/s) per batch and precision, eager PyTorch."""
    batches = "/".join(str(b) for b in config.throughput_batches)
    table = Table(title="throughput: " + title(config, batches, "/".join(config.throughput_precisions)),
                  caption=f"{THROUGHPUT_RUNTIME} PyTorch; {MARKS}")
    table.add_column("Model", no_wrap=True)
    columns = [(b, p) for b in config.throughput_batches for p in config.throughput_precisions]
    for b, p in columns:
        table.add_column(f"b{b} {p} (img/s)", justify="right")
        table.add_column(f"b{b} {p} FLOPS (G/s)", justify="right")
    for r in results:
        cells = []
        for t in r.throughput:
            mark = (" !" if t.result.noisy else "") + (" *" if t.result.busy else "")
            cells += [f"{t.result.throughput_ips:.1f}{mark}", f"{r.cost.macs * t.result.throughput_ips / 1e9:.1f}"]
        table.add_row(r.name, *cells)
    return table


def _speedup(r: ModelBench) -> float | None:
    """Eager train-form latency / eager deploy-form latency (Table 3); None without both."""
    deploy = r.runtimes.get("eager")
    train = r.cost.train_latency
    return None if deploy is None or train is None else train.median_ms / deploy.median_ms


def _fmt_latency(result: LatencyResult | None) -> str:
    """Median in ms; "!" marks disagreeing repeats, "*" a busy machine."""
    if result is None:
        return "-"
    return f"{result.median_ms:.2f}" + (" !" if result.noisy else "") + (" *" if result.busy else "")


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} takes a comma list of integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{flag} values must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    d = LatencySettings()
    p = argparse.ArgumentParser(
        prog="python -m dscnn.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all", help="comma list of names or globs, or 'all' (default); "
                   f"known: {', '.join(list_bench_models())}")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"], help="where to time (default %(default)s)")
    p.add_argument("--runtime", default=d.runtime, help=f"comma list of {', '.join(RUNTIMES)}, or all (every runtime "
                   "available here); one deploy-latency column each (default %(default)s)")
    p.add_argument("--resolution", type=int, default=d.resolution, help="input size (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="images per forward (default %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "fp16", "bf16"],
                   help="fp16/bf16 on GPU only (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: 10 cpu, 50 cuda)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per repeat (default: 100 cpu, 200 cuda)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="repeats; median reported (default %(default)s)")
    p.add_argument("--throughput-batch", default="", help="comma list of batches for the throughput table, "
                   "e.g. 32,256 (FasterNet's protocol; default: none)")
    p.add_argument("--throughput-precision", default=None, help="comma list for the throughput table "
                   "(default: fp32,bf16 on cuda, fp32 on cpu)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default %(default)s)")
    p.add_argument("--no-train-form", action="store_true", help="skip timing the unfused model")
    p.add_argument("--cache", default=None, help="SQLite latency cache to read/write (default: none; "
                   "with --recheck: $REPNAS_CACHE/latency.sqlite or ~/.cache/repnas/latency.sqlite)")
    p.add_argument("--json", default=None, help="write the results and environment to this JSON file")
    g = p.add_argument_group("recheck (python -m dscnn.bench --recheck ...)")
    g.add_argument("--recheck", action="store_true", help="re-time cached entries (or --study's trials), report drift")
    g.add_argument("--study", default=None, help="with --recheck: the study storage (e.g. studies.db) whose trials to re-time")
    g.add_argument("--study-name", default=None, help="with --recheck --study: the study's name")
    g.add_argument("--limit", type=int, default=None, help="with --recheck: re-time at most this many entries")
    g.add_argument("--update", action="store_true", help="with --recheck: store trusted new timings in the cache")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    p = build_parser()
    a = p.parse_args(argv)
    if a.recheck:
        p.error("--recheck is handled by main(); parse_args builds a benchmark")
    try:
        config = config_from_args(a)
    except ValueError as e:  # RuntimeUnavailable included
        p.error(str(e))  # exits with status 2 and the usage line
    return config, a.json


def config_from_args(a: argparse.Namespace) -> BenchConfig:
    require_device(a.device)
    settings = LatencySettings(device=a.device, batch=a.batch, resolution=a.resolution, threads=a.threads,
                               precision=a.precision, channels_last=a.channels_last, warmup=a.warmup,
                               runs=a.runs, repeats=a.repeats)
    runtimes, skipped = resolve_runtimes(a.runtime, settings)
    if not runtimes:
        raise ValueError(f"no runtime can time {a.device} here: " + "; ".join(skipped.values()))
    settings = settings.replace(runtime=runtimes[0])
    if a.num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {a.num_classes}")
    batches = _int_list(a.throughput_batch, "--throughput-batch")
    precisions = tuple(p.strip() for p in (a.throughput_precision or ("fp32,bf16" if a.device == "cuda" else "fp32"))
                       .split(",") if p.strip())
    for precision in precisions:  # validated by LatencySettings (names, GPU-only precisions)
        settings.replace(runtime=THROUGHPUT_RUNTIME, precision=precision)
    return BenchConfig(resolve_models(a.models), settings, a.num_classes, not a.no_train_form, a.cache, runtimes,
                       batches, precisions, skipped)


def main(argv: list[str] | None = None) -> int:
    # fvcore's import scripts a loss with torch.jit.script, deprecated in this torch: not our concern
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    args = sys.argv[1:] if argv is None else argv
    if "--recheck" in args:
        from dscnn.recheck import main as recheck_main

        return recheck_main(build_parser(), args)
    config, json_path = parse_args(argv)
    try:
        results = run_bench(config, log=Console(stderr=True))
    except CacheUnusable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Console(width=None if sys.stdout.isatty() else 200)  # pipes: no squeezing
    out.print(render(config, results))
    if config.throughput_batches:
        out.print(render_throughput(config, results))
    for name, why in config.skipped_runtimes.items():
        out.print(f"runtime {name} not available here: {why}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": ["python", "-m", "dscnn.bench", *args], **report(config, results)}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
