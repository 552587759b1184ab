"""Does online (OREPA) training rank architectures like the exact train form? (issue 12, item 4)

Samples architectures from the search space with a seeded Optuna sampler (`searchspace.space`),
trains each twice under the same short recipe (`dscnn.train.train_and_evaluate`, same seed, same
data order): ``train_form="exact"`` (the paper form, fast path) and ``train_form="online"``, and
reports Kendall's tau-b between the two accuracy lists (tau is rank-based, so it is also the tau of
the ranks), Spearman's rho, both rankings and the wall time of every run. The search may use the
online form for proxy training by default only if tau >= 0.7 (the issue's rule).

    flock /tmp/repnas-cpu-bench.lock .venv/bin/python benchmarks/online_rank_tau.py \\
        --data-dir ../shared/data/cifar10 --archs 8 --epochs 2 --train-per-class 100 --val-per-class 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import optuna
import torch

from dscnn import build_model, config_from_dict, count_params
from dscnn.data import DataConfig, load_dataset
from dscnn.environment import environment
from dscnn.latency import pin_malloc
from dscnn.train import TrainConfig, train_and_evaluate
from searchspace.space import sample

RESULTS = Path(__file__).parent / "results" / "online_rank_tau.json"
TAU_RULE = 0.7


def kendall_tau_b(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties in either list handled as in scipy.stats.kendalltau)."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            concordant += 1
        else:
            discordant += 1
    denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denom if denom else float("nan")


def ranks(values: list[float]) -> list[float]:
    """1 = best; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def sample_archs(
    count: int, seed: int, space: str, resolution: int, max_params: int, fixed: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """``count`` distinct configs from a seeded random sampler, skipping ones over ``max_params``.

    ``fixed`` pins some search-space parameters (e.g. ``{"stem_stride": 2}`` to keep CPU cost down).
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    archs: list[dict[str, Any]] = []
    while len(archs) < count:
        if fixed:
            study.enqueue_trial(fixed)
        trial = study.ask()
        config = sample(trial, space, num_classes=10, resolution=resolution)
        study.tell(trial, 0.0)
        params = count_params(build_model(config))
        if params <= max_params and json.loads(config.to_json()) not in [a["config"] for a in archs]:
            archs.append({"config": json.loads(config.to_json()), "params": params, "trial_params": trial.params})
    return archs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="cifar10 folder; default: the embedded subset")
    p.add_argument("--archs", type=int, default=8)
    p.add_argument("--space", default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-params", type=int, default=1_500_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fixed", default='{"stem_stride": 2, "width1": 16}',
                   help="search-space parameters pinned, as JSON ('{}' = all sampled); the default keeps CPU cost down")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    pin_malloc()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_config = DataConfig(name="cifar10" if a.data_dir else "embedded", data_dir=a.data_dir,
                             train_per_class=a.train_per_class, val_per_class=a.val_per_class, seed=a.seed)
    data = load_dataset(data_config)
    recipe = TrainConfig(epochs=a.epochs, batch_size=64, lr=0.1, warmup_epochs=0.5, seed=a.seed)
    load_before = os.getloadavg()
    fixed = json.loads(a.fixed) or None
    archs = sample_archs(a.archs, a.seed, a.space, data.resolution, a.max_params, fixed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, arch in enumerate(archs):
        for form in ("exact", "online"):
            model = build_model(config_from_dict(arch["config"]))
            result = train_and_evaluate(model, data, dataclasses.replace(recipe, train_form=form))
            arch[form] = {"accuracy": result.final_accuracy, "seconds": result.seconds,
                          "train_images_per_second": result.train_images_per_second}
            print(f"arch {i} {form}: acc {result.final_accuracy:.3f} in {result.seconds:.0f} s", flush=True)
        done = [x for x in archs if "online" in x]  # written after every architecture: partial runs count
        exact = [x["exact"]["accuracy"] for x in done]
        online = [x["online"]["accuracy"] for x in done]
        tau = kendall_tau_b(exact, online) if len(done) > 1 else float("nan")
        doc = {
            "command": "benchmarks/online_rank_tau.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "data": dataclasses.asdict(data_config), "recipe": dataclasses.asdict(recipe),
            "archs_done": len(done), "archs_planned": len(archs), "kendall_tau_b": tau,
            "spearman_rho": spearman(exact, online) if len(done) > 1 else float("nan"),
            "ranks_exact": ranks(exact), "ranks_online": ranks(online),
            "rule": f"online may be the search's proxy default only if tau >= {TAU_RULE} over >= 8 archs",
            "online_allowed_as_default": len(done) >= 8 and tau >= TAU_RULE, "archs": archs,
            "load_average_before": load_before, "load_average_now": os.getloadavg(),
            "environment": environment("cpu", a.threads),
        }
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"Kendall tau-b {doc['kendall_tau_b']:.3f}, Spearman rho {doc['spearman_rho']:.3f}: online "
          f"{'may' if doc['online_allowed_as_default'] else 'may NOT'} be the search's proxy default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
