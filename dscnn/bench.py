"""``python -m dscnn.bench``: deployment cost of registry models and torchvision baselines.

Prints a table in the shape of the DSCNN paper's Table 3 (params, FLOPs, train- and deploy-form
latency, speedup, throughput, FLOPS) and optionally writes it as JSON with the environment.
FLOPs = fvcore multiply-accumulates of the deploy form at batch 1 (docs/design.md section 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dscnn.cost import DeployCost, measure_deploy_cost
from dscnn.environment import environment
from dscnn.external import create_bench_model, deploy_function, list_bench_models
from dscnn.latency import LatencyResult, LatencySettings, require_device
from dscnn.measure_cache import MeasureCache

CONVENTION = "FLOPs = fvcore multiply-accumulates of the deploy form at batch 1; FLOPS = FLOPs x images/s"


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]  # bench names (registry models and torchvision baselines)
    settings: LatencySettings = LatencySettings()  # timing protocol; resolution also sizes the models
    num_classes: int = 1000  # classifier outputs of every model
    time_train_form: bool = True  # also time the unfused model (latency train-form, speedup)
    cache: str | None = None  # SQLite latency cache path; None = measure everything afresh


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


def run_bench(config: BenchConfig, log: Console | None = None) -> list[tuple[str, DeployCost]]:
    """Measure every model of ``config`` in order."""
    require_device(config.settings.device)
    cache = MeasureCache(config.cache) if config.cache else None
    results = []
    for name in config.models:
        if log is not None:
            log.print(f"measuring {name} ...")
        model = create_bench_model(name, resolution=config.settings.resolution, num_classes=config.num_classes)
        cost = measure_deploy_cost(model, config.settings, cache=cache, time_train_form=config.time_train_form,
                                   to_deploy=deploy_function(name))
        results.append((name, cost))
    return results


def report(config: BenchConfig, results: list[tuple[str, DeployCost]]) -> dict[str, Any]:
    """The JSON document: convention, resolved config, environment, one record per model."""
    return {
        "convention": CONVENTION,
        "config": dataclasses.asdict(config),
        "environment": environment(config.settings.device, config.settings.threads),
        "models": [{"name": name, **cost.to_dict()} for name, cost in results],
    }


def render(config: BenchConfig, results: list[tuple[str, DeployCost]]) -> Table:
    s = config.settings
    title = (f"{s.device}, batch {s.batch}, {s.resolution}x{s.resolution}, {s.precision}, {s.threads} thread(s), "
             f"{'channels_last' if s.channels_last else 'NCHW'}")
    table = Table(title=title, caption=CONVENTION + '; "!" = repeats disagreed by > 20%')
    for header in ("Model", "Params train (M)", "Params deploy (M)", "FLOPs (G)", "Latency train (ms)",
                   "Latency deploy (ms)", "Speedup", "Throughput (img/s)", "FLOPS (G/s)"):
        table.add_column(header, justify="left" if header == "Model" else "right", no_wrap=header == "Model")
    for name, c in results:
        table.add_row(
            name, f"{c.params_train / 1e6:.2f}", f"{c.params_deploy / 1e6:.2f}", f"{c.macs / 1e9:.3f}",
            _fmt_latency(c.train_latency), _fmt_latency(c.latency),
            _fmt(c.speedup, "{:.2f}x"), _fmt(c.latency.throughput_ips if c.latency else None, "{:.1f}"),
            _fmt(c.macs_per_s / 1e9 if c.macs_per_s is not None else None, "{:.1f}"),
        )
    return table


def _fmt_latency(result: LatencyResult | None) -> str:
    """Median in ms; "!" marks repeats that disagreed by more than 20% (a noisy machine)."""
    return "-" if result is None else f"{result.median_ms:.2f}" + (" !" if result.noisy else "")


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    d = LatencySettings()
    p = argparse.ArgumentParser(
        prog="python -m dscnn.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Protocol (docs/design.md section 4): CPU >= 10 warm-up / 100 timed runs, GPU >= 50 / 200 with "
        "cudnn.benchmark on; the latency is the median over repeats of each repeat's median run.")
    p.add_argument("--models", default="all", help="comma list of names or globs, or 'all' (default); "
                   f"known: {', '.join(list_bench_models())}")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"], help="where to time (default %(default)s)")
    p.add_argument("--resolution", type=int, default=d.resolution, help="input size (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="images per forward (default %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "fp16", "bf16"],
                   help="fp16/bf16 on GPU only (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: 10 cpu, 50 cuda)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per repeat (default: 100 cpu, 200 cuda)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="repeats; median reported (default %(default)s)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default %(default)s)")
    p.add_argument("--no-train-form", action="store_true", help="skip timing the unfused model")
    p.add_argument("--cache", default=None, help="SQLite latency cache to read/write (default: none)")
    p.add_argument("--json", default=None, help="write the results and environment to this JSON file")
    a = p.parse_args(argv)
    try:
        require_device(a.device)
        settings = LatencySettings(device=a.device, batch=a.batch, resolution=a.resolution, threads=a.threads,
                                   precision=a.precision, channels_last=a.channels_last, warmup=a.warmup,
                                   runs=a.runs, repeats=a.repeats)
        if a.num_classes < 1:
            raise ValueError(f"--num-classes must be >= 1, got {a.num_classes}")
        config = BenchConfig(resolve_models(a.models), settings, a.num_classes, not a.no_train_form, a.cache)
    except ValueError as e:
        p.error(str(e))  # exits with status 2 and the usage line
    return config, a.json


def main(argv: list[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    # fvcore's import scripts a loss with torch.jit.script, deprecated in this torch: not our concern
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    results = run_bench(config, log=Console(stderr=True))
    Console(width=None if sys.stdout.isatty() else 150).print(render(config, results))  # pipes: no squeezing
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": ["python", "-m", "dscnn.bench", *(sys.argv[1:] if argv is None else argv)],
               **report(config, results)}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
