"""Write a study's comparison report: the best searched architecture vs the hand-designed baselines.

    python -m studies.compare --study studies/cifar10_cpu.toml

Reads the finished study from its storage (nothing is re-run) and writes ``report.md`` and
``comparison.json`` into the study's output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import optuna

from searchspace import SearchConfig, read_study_table, report
from searchspace.budget_of import reference_cost
from searchspace.storage import open_storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="the study definition (TOML) that search.py ran")
    args = parser.parse_args(argv)
    try:
        config = SearchConfig.from_mapping(read_study_table(args.study), {"device": "cpu"})
    except ValueError as exc:
        parser.error(str(exc))
    try:
        study = optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))
    except KeyError:
        parser.error(f"no study {config.study_name!r} in {config.storage!r}: run `python search.py --study {args.study}` first")
    rows = report.trial_rows(study)
    best, baselines = report.baseline_comparison(rows)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    data = config.data
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    lines = [
        f"# Study `{config.study_name}`",
        "",
        f"Data: {data.name} ({data.train_per_class or 'all'} train / {data.val_per_class or 'all'} val images per class), "
        f"{config.train.epochs} proxy epochs per trial, batch {config.train.batch_size}, optimizer {config.train.optimizer}, "
        f"lr {config.train.lr}.",
        f"Budget: {_budget_text(config, study)} deploy-form latency on {config.latency.device} "
        f"(batch {config.latency.batch}, {config.latency.threads} thread(s)); space `{config.space}`; "
        f"{len(rows)} trials: {', '.join(f'{n} {s}' for s, n in sorted(states.items()))}.",
        "FLOPs = fvcore multiply-accumulates of the deploy form at batch 1.",
        "",
        "## Best searched architecture vs the baselines that fit the budget",
        "",
        report.markdown_table(([best] if best else []) + sorted(baselines, key=lambda r: -(r.accuracy or 0))),
        "",
    ]
    if best is not None:
        beaten = [b.label for b in baselines if (best.accuracy or 0) > (b.accuracy or 0)]
        lines += [f"The best searched trial ({best.label}) beats {len(beaten)} of {len(baselines)} trained baselines"
                  f"{': ' + ', '.join(beaten) if beaten else ''}.", "", "Architecture:", "", f"```json\n{best.arch}\n```", ""]
    over = [r for r in rows if r.is_baseline and r.feasible is False]
    if over:
        lines.append("Baselines over the budget (measured, not trained): " + ", ".join(
            f"{r.label} ({r.latency_ms:.2f} ms)" for r in over) + ".")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "comparison.json").write_text(json.dumps(
        {"best": asdict(best) if best else None, "baselines": [asdict(b) for b in baselines],
         "search_config": config.to_dict()}, indent=2, default=str))
    print((out / "report.md").read_text())
    return 0


def _budget_text(config: SearchConfig, study: optuna.Study) -> str:
    reference = reference_cost(study) if config.budget_of else None
    if reference is not None:
        return f"{reference[1].latency_ms:.3f} ms (the latency of {reference[0]}, timed when the search started)"
    return "no" if config.budget_ms is None else f"{config.budget_ms} ms"


if __name__ == "__main__":
    sys.exit(main())
