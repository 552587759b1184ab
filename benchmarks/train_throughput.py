"""Training throughput of the train form: per-branch reference vs fast path vs online vs plain twin.

Images/s of one SGD training step (forward, cross-entropy, backward, step) for each model, input
size, batch and thread count, for five forms of the same model measured side by side (one step of
each form per round, in turn, so machine drift hits all of them alike; median over rounds):

- ``reference``: the per-branch train form in the default (contiguous) memory format, i.e. how
  training ran before issue 12;
- ``reference_fmt``: the per-branch form in the memory format the probe picked (isolates the
  memory-format gain from the fast-path gain);
- ``default``: what `dscnn.train.train_and_evaluate` runs by default: exact fast path + the probe's
  memory format;
- ``online``: OREPA's online form (`dscnn.online`), same memory format;
- ``plain``: the deploy form's plain twin (`benchmarks/plain_twin.py`) trained directly, same
  memory format: the physical limit for a step of this network.

Each row records the machine load over its timed rounds (`dscnn.machine_load`: other processes'
share of the machine and the timing thread's CPU share; ``busy`` marks a row not to trust) and
the 1-minute load average; the JSON is rewritten after every row, ``complete`` once every row of
the grid is there and none failed.

Memory is the activation memory saved for backward in one step (the tensors autograd keeps, each
storage counted once), a device-independent proxy for training memory; ``peak_rss_mb`` is the
measuring process's peak resident memory in MiB (with ``--in-process``: the whole run's peak so far).

Each row also records what was in force in the process that measured it: ``malloc_pinned``
(`dscnn.allocator.pin_malloc`), ``threads_in_force`` (torch's intra-op threads while timing),
``git`` (`dscnn.environment.git_revision`), its own ``environment`` and the ``run`` it was measured
in (see ``--resume``). The top-level ``environment`` is the parent's, with ``threads`` the grid's
list of thread counts when it has several.

Each row is measured in its own child process (this script with the hidden ``--one-row``, run by
``row_runner.py``), so one row's memory cannot pile up into the next (the full grid in one process
was OOM-killed at 24 GiB RSS on dscnn_t1) and a row that dies does not end the run. A row holds
its five forms in one process so that their steps alternate, so its peak is about the sum of
theirs: 1 thread, 32 px, batch 64, about 7.8 GB for dscnn_t0 and 11.6 GB for falconnet, about
twice that at batch 128 (falconnet's then exceeds a 24 GB machine).
The parent polls the child's RSS every 0.1 s and kills it past ``--max-rss-gb`` GiB (an RSS cap, not
RLIMIT_AS: torch reserves address space far beyond what it touches, about 3.3 GiB of it for
0.65 GiB resident on a tiny resnet20 row, and CUDA's context reserves far more). A parent stopped
by SIGTERM or an error kills the row's child first. A row that fails
(killed, MemoryError, any non-zero exit) is recorded as ``{"model", "resolution", "batch",
"threads", "device", "failed": "<one-line reason>", "run"}``, printed as a failed row, and makes the exit
status 1 once the other rows are done.
``--in-process`` measures every row in this process instead (debugging: a failure raises).
``--resume`` (``resumable_results.py``) keeps the rows of ``--out`` with the same model,
resolution, batch, threads and device that did not fail, measures the rest, and refuses a file made
with other ``--rounds`` or ``--memory-format``, or on another CPU (``environment.cpu_model``), torch
version (``environment.torch``) or commit (``git.commit``) unless ``--force-resume``; every row
says which run measured it (``run``: 0 first, then one more per resumed run; ``earlier_runs``
holds the earlier runs' command, environment and git). The file is rewritten at the end even when
every row was kept, so its ``command`` and ``complete`` describe this run. Bad settings fail
before any measuring, with one line and exit status 2.

    flock /tmp/repnas-cpu-bench.lock .venv/bin/python benchmarks/train_throughput.py --quick
    flock /tmp/repnas-cpu-bench.lock .venv/bin/python benchmarks/train_throughput.py --resume   # full grid
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from plain_twin import plain_twin
from resumable_results import ProvenanceMismatch, ResumableResults, ResumeMismatch
from row_runner import peak_rss_mb, run_in_child, sigterm_raises, write_row
from torch import nn

from dscnn import create_model, deploy_copy, list_models
from dscnn.allocator import pin_malloc
from dscnn.blocks.fast_branch import branch_impl
from dscnn.environment import environment, git_revision
from dscnn.machine_load import default_probe, describe, is_busy
from dscnn.memory_format import choose_memory_format
from dscnn.online import to_online

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
MODELS = ("dscnn_t0", "dscnn_t1", "falconnet", "repvgg_a0", "fasternet_t0", "resnet20")
FORMS = ("reference", "reference_fmt", "default", "online", "plain")
KEY = ("model", "resolution", "batch", "threads", "device")  # what makes two rows the same row (--resume)


def _forms(name: str, resolution: int, fmt: torch.memory_format, device: str) -> dict[str, tuple[nn.Module, str]]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, resolution=resolution)
    example = torch.randn(2, 3, resolution, resolution)
    twin = plain_twin(deploy_copy(model), example)
    forms = {
        "reference": (copy.deepcopy(model), "reference"),
        "reference_fmt": (copy.deepcopy(model).to(memory_format=fmt), "reference"),
        "default": (copy.deepcopy(model).to(memory_format=fmt), "fast"),
        "online": (to_online(copy.deepcopy(model)).to(memory_format=fmt), "fast"),
        "plain": (twin.to(memory_format=fmt), "fast"),
    }
    return {k: (m.to(device), impl) for k, (m, impl) in forms.items()}


def _stepper(model: nn.Module, impl: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with branch_impl(impl):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def saved_activation_bytes(model: nn.Module, impl: str, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta" and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), branch_impl(impl):
        out = model(x)
    del out
    return sum(seen.values())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    name: str, resolution: int, batch: int, threads: int, rounds: int, device: str = "cpu", memory_format: str = "auto",
) -> dict[str, Any]:
    """One row: images/s and saved-activation MB of every form, measured in alternation."""
    torch.set_num_threads(threads)
    choice = choose_memory_format(device, memory_format)
    fmt = choice.memory_format
    forms = _forms(name, resolution, fmt, device)
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    base = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(device)
    steps, memory = {}, {}
    for key, (model, impl) in forms.items():
        x = base.contiguous(memory_format=torch.contiguous_format if key == "reference" else fmt)
        memory[key] = saved_activation_bytes(model, impl, x) / 2**20
        steps[key] = _stepper(model, impl, x, labels)
        steps[key]()  # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {k: [] for k in forms}
    window = default_probe(threads)
    for _ in range(rounds):
        for key, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    reading = window.stop()
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {
        "machine_load": {"load": reading.load, "cpu_share": reading.cpu_share, "window_s": reading.window_s,
                         "busy": is_busy(reading, device), "describe": describe(reading)},
        "load_average": os.getloadavg(),
        "model": name, "resolution": resolution, "batch": batch, "threads": threads, "device": device,
        "memory_format": choice.name, "memory_format_probe": choice.to_dict(), "images_per_s": ips, "saved_activation_mb": memory,
        "step_s": times,
        "default_vs_reference": ips["default"] / ips["reference"],
        "default_vs_plain": ips["default"] / ips["plain"], "online_vs_plain": ips["online"] / ips["plain"],
        "memory_default_vs_reference": memory["default"] / memory["reference"],
    }


@dataclass(frozen=True)
class Point:
    """One row of the grid."""

    model: str  # registry name
    resolution: int  # input side, px
    batch: int  # images per step
    threads: int  # torch intra-op threads

    def label(self) -> str:
        return f"{self.model} {self.resolution} px batch {self.batch} {self.threads} thr"


def device_kind(device: str) -> str:
    """``cuda:0`` -> ``cuda``: what `dscnn.environment.environment` tests for to record the GPU."""
    return device.split(":")[0]


def run_environment(device: str, threads: list[int]) -> dict[str, Any]:
    """The parent's `environment`, naming every thread count of the grid when it has several."""
    env = environment(device_kind(device), threads[0])
    return env if len(threads) == 1 else {**env, "threads": list(threads)}


def measure_row(point: Point, rounds: int, device: str, memory_format: str) -> dict[str, Any]:
    """`measure` plus this process's peak RSS (MiB) and what was in force while it measured."""
    pinned = pin_malloc()  # cached: pins (if main has not) before timing, so the record is true of it
    row = measure(point.model, point.resolution, point.batch, point.threads, rounds, device, memory_format)
    threads = torch.get_num_threads()  # as `measure` left them
    return {**row, "peak_rss_mb": peak_rss_mb(), "malloc_pinned": pinned, "threads_in_force": threads,
            "git": git_revision(), "environment": environment(device_kind(device), threads)}


def measure_in_child(point: Point, a: argparse.Namespace) -> dict[str, Any]:
    """`measure_row` in a fresh process of this script; a row that dies comes back with ``failed``."""
    def command(row_file: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--one-row", json.dumps(asdict(point)),
                "--row-out", str(row_file), "--rounds", str(a.rounds), "--device", a.device,
                "--memory-format", a.memory_format]

    row = run_in_child(command, a.max_rss_gib)
    return row if isinstance(row, dict) else {**asdict(point), "device": a.device, "failed": row}


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | res | batch | thr | fmt | " + " | ".join(f"{f} img/s" for f in FORMS)
            + " | default/ref | default/plain | online/plain | mem ref / default / online / plain (MB) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        start = f"| {r['model']} | {r['resolution']} | {r['batch']} | {r['threads']} | "
        if "failed" in r:
            lines.append(start + f"failed: {r['failed'].replace('|', '/')} |")
            continue
        ips, mem = r["images_per_s"], r["saved_activation_mb"]
        lines.append(
            start + f"{r['memory_format']} | "
            + " | ".join(f"{ips[f]:.1f}" for f in FORMS)
            + f" | {r['default_vs_reference']:.2f}x | {r['default_vs_plain']:.2f}x | {r['online_vs_plain']:.2f}x"
            + f" | {mem['reference']:.0f} / {mem['default']:.0f} / {mem['online']:.0f} / {mem['plain']:.0f} |"
        )
    return "\n".join(lines)


def _fail(message: str) -> NoReturn:
    """Bad input: one line and exit status 2, as argparse's own errors."""
    print(f"train_throughput.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        _fail(message)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value

    return parse


def _positive_ints(text: str) -> list[int]:
    return [_positive(int)(v.strip()) for v in text.split(",")]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_names, default=",".join(MODELS))
    p.add_argument("--resolutions", type=_positive_ints, default="32,64")
    p.add_argument("--batches", type=_positive_ints, default="64,128")
    p.add_argument("--threads", type=_positive_ints, default="1,2")
    p.add_argument("--rounds", type=_positive(int), default=5, help="timed steps per form (median)")
    p.add_argument("--quick", action="store_true", help="dscnn_t0 and resnet20, 32 px, batch 64, 1 thread, 3 rounds")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"),
                   help="format of every form but 'reference' (auto = dscnn.memory_format's probe, which a busy "
                        "machine can mislead)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--resume", action="store_true", help="keep the rows of --out already measured (not failed)")
    p.add_argument("--force-resume", action="store_true",
                   help="--resume even from a file measured on another CPU, torch version or commit")
    p.add_argument("--in-process", action="store_true", help="measure every row in this process (debugging)")
    p.add_argument("--max-rss-gb", dest="max_rss_gib", type=_positive(float), default=16.0,
                   help="kill a row's process past this resident memory in GiB (default 16; a dscnn_t0 row at "
                        "32 px, batch 64 peaks near 7.8 GB, about twice that at batch 128)")
    p.add_argument("--one-row", help=argparse.SUPPRESS)  # child mode: one Point as JSON ...
    p.add_argument("--row-out", help=argparse.SUPPRESS)  # ... whose row is written here
    a = p.parse_args(argv)
    a.resume = a.resume or a.force_resume
    if a.quick:
        a.models, a.resolutions, a.batches, a.threads, a.rounds = ["dscnn_t0", "resnet20"], [32], [64], [1], 3
    unknown = [m for m in a.models if m not in list_models()]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; valid models: {', '.join(list_models())}")
    if device_kind(a.device) not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, not {a.device!r}")
    return a


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def _open_results(a: argparse.Namespace, keys: list[dict[str, Any]], env: dict[str, Any],
                  git: dict[str, Any] | None) -> ResumableResults:
    same = {"environment.cpu_model": env["cpu_model"], "environment.torch": env["torch"],
            "git.commit": git and git["commit"]}
    assumed = {"rounds": 5, "memory_format": "auto"}  # files from before they were recorded
    try:
        return ResumableResults(Path(a.out), KEY, keys, {"rounds": a.rounds, "memory_format": a.memory_format},
                                resume=a.resume, assumed=assumed, provenance=("command", "environment", "git"),
                                same={} if a.force_resume else same)
    except ProvenanceMismatch as e:
        _fail(f"{e}: --force-resume to mix the two in one file, or drop --resume or use another --out")
    except ResumeMismatch as e:
        _fail(f"{e}: drop --resume or use another --out")


def run(a: argparse.Namespace, command: str) -> int:
    """Measure the grid, row by row, rewriting ``a.out`` after each and at the end; 1 if any row of the grid failed."""
    grid = [Point(m, r, b, t) for t in a.threads for m in a.models for r in a.resolutions for b in a.batches]
    keys = [{**asdict(p), "device": a.device} for p in grid]  # the KEY fields of each point's row
    env, git = run_environment(a.device, a.threads), git_revision()
    results = _open_results(a, keys, env, git)
    load_before = os.getloadavg()

    def save() -> None:
        results.save(command, {"load_average_before": load_before, "load_average_after": os.getloadavg(),
                               "environment": env, "git": git})

    row_s: list[float] = []
    with sigterm_raises():  # a stopped run kills its row's child instead of leaving it running
        for i, (point, key) in enumerate(zip(grid, keys), 1):
            if results.kept(key):
                print(f"[{i}/{len(grid)}] {point.label()}: kept from {a.out} (--resume)", flush=True)
                continue
            eta = _mmss(statistics.mean(row_s) * (len(results.to_measure) - len(row_s))) if row_s else "--:--"
            print(f"[{i}/{len(grid)}] {point.label()} ... ETA {eta}", flush=True)
            t0 = time.perf_counter()
            row = (measure_row(point, a.rounds, a.device, a.memory_format) if a.in_process else measure_in_child(point, a))
            row_s.append(time.perf_counter() - t0)
            results.add(row)
            load = [] if "failed" in row else [f"(load: {row['machine_load']['describe']})"]
            print(_table([row]).splitlines()[-1], *load, flush=True)
            save()
    save()  # also when every row was kept: command and complete are this run's
    print(_table(results.grid_rows()))
    return 1 if results.any_failed() else 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    pin_malloc()
    if a.one_row:  # child mode (see measure_in_child)
        write_row(a.row_out, measure_row(Point(**json.loads(a.one_row)), a.rounds, a.device, a.memory_format))
        return 0
    return run(a, "benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
