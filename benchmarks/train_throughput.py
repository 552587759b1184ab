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
the 1-minute load average; the JSON is rewritten after every row.

Memory is the activation memory saved for backward in one step (the tensors autograd keeps, each
storage counted once), a device-independent proxy for training memory.

    flock /tmp/repnas-cpu-bench.lock .venv/bin/python benchmarks/train_throughput.py --quick
    flock /tmp/repnas-cpu-bench.lock .venv/bin/python benchmarks/train_throughput.py   # full grid
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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from plain_twin import plain_twin
from torch import nn

from dscnn import create_model, deploy_copy
from dscnn.blocks.fast_branch import branch_impl
from dscnn.environment import environment
from dscnn.latency import pin_malloc
from dscnn.machine_load import default_probe, describe, is_busy
from dscnn.memory_format import choose_memory_format
from dscnn.online import to_online

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
MODELS = ("dscnn_t0", "dscnn_t1", "falconnet", "repvgg_a0", "fasternet_t0", "resnet20")
FORMS = ("reference", "reference_fmt", "default", "online", "plain")


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


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | res | batch | thr | fmt | " + " | ".join(f"{f} img/s" for f in FORMS)
            + " | default/ref | default/plain | online/plain | mem ref / default / online / plain (MB) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ips, mem = r["images_per_s"], r["saved_activation_mb"]
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['batch']} | {r['threads']} | {r['memory_format']} | "
            + " | ".join(f"{ips[f]:.1f}" for f in FORMS)
            + f" | {r['default_vs_reference']:.2f}x | {r['default_vs_plain']:.2f}x | {r['online_vs_plain']:.2f}x"
            + f" | {mem['reference']:.0f} / {mem['default']:.0f} / {mem['online']:.0f} / {mem['plain']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--resolutions", default="32,64")
    p.add_argument("--batches", default="64,128")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per form (median)")
    p.add_argument("--quick", action="store_true", help="dscnn_t0 and resnet20, 32 px, batch 64, 1 thread, 3 rounds")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"),
                   help="format of every form but 'reference' (auto = dscnn.memory_format's probe, which a busy "
                        "machine can mislead)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    if a.quick:
        a.models, a.resolutions, a.batches, a.threads, a.rounds = "dscnn_t0,resnet20", "32", "64", "1", 3
    pin_malloc()
    grid = [(m, int(r), int(b), int(t)) for t in a.threads.split(",") for m in a.models.split(",")
            for r in a.resolutions.split(",") for b in a.batches.split(",")]
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    env = environment(a.device, int(a.threads.split(",")[0]))
    for m, r, b, t in grid:
        rows.append(measure(m, r, b, t, a.rounds, a.device, a.memory_format))
        print(_table(rows[-1:]).splitlines()[-1], f"(load: {rows[-1]['machine_load']['describe']})", flush=True)
        # written after every row, so a run stopped by a timeout keeps what it measured
        doc = {"command": command, "rounds": a.rounds, "complete": len(rows) == len(grid),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "environment": env, "results": rows}
        out.write_text(json.dumps(doc, indent=2) + "\n")
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
