"""Re-time a finished study's best trial and its baselines side by side, and train baselines the
study did not train, with the study's exact data and proxy training.

A study's latencies were taken one trial at a time, sometimes on a busy machine; this puts the
contenders in one run, alternating, so their ratios are comparable. Nothing in the study changes.

    OMP_NUM_THREADS=1 python benchmarks/study_baselines.py --study studies/cifar10_cpu.toml \
        --train dscnn_t0_w0.5,fasternet_t0_w0.5 --json studies/cifar10_cpu/baselines_rerun.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna

import dscnn
from dscnn.data import load_dataset
from dscnn.environment import environment
from dscnn.latency import measure_latency_ms
from dscnn.train import train_and_evaluate
from searchspace import SearchConfig, read_study_table, report
from searchspace.baselines import BASELINES, get_baseline
from searchspace.storage import open_storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="the study definition search.py ran")
    parser.add_argument("--train", default="", help="comma list of baselines to train with the study's proxy training")
    parser.add_argument("--json", required=True, help="where the results go")
    args = parser.parse_args(argv)
    config = SearchConfig.from_mapping(read_study_table(args.study))
    study = optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))
    best = report.best_row(report.trial_rows(study))
    data = load_dataset(config.data)
    contenders = {label: b.config(num_classes=data.num_classes, resolution=data.resolution) for label, b in BASELINES.items()}
    if best is not None and best.arch:
        contenders[best.label] = dscnn.config_from_dict(json.loads(best.arch))
    settings = config.latency.replace(resolution=data.resolution)
    models = {label: dscnn.deploy_copy(dscnn.build_model(c)) for label, c in contenders.items()}
    latency: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(3):  # alternate so machine drift hits every model alike
        for label, model in models.items():
            latency[label].append(measure_latency_ms(model, settings.replace(repeats=1)).median_ms)
    rows = {label: {"latency_ms": sorted(v)[1], "latency_repeats_ms": v, "budget_ms": config.budget_ms}
            for label, v in latency.items()}
    for label in filter(None, args.train.split(",")):
        model = dscnn.build_model(get_baseline(label).config(num_classes=data.num_classes, resolution=data.resolution))
        result = train_and_evaluate(model, data, config.train, progress=True)
        rows[label]["accuracy"] = result.final_accuracy
    if best is not None:
        rows[best.label]["accuracy"] = best.accuracy
    for label, row in rows.items():
        print(f"{label:22s} {row['latency_ms']:7.3f} ms  accuracy {row.get('accuracy', '-')}")
    Path(args.json).write_text(json.dumps({"rows": rows, "settings": settings.to_dict(),
                                           "environment": environment(settings.device, settings.threads)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
