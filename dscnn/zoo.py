"""Model zoo report: params and MACs of every registry model, beside the papers' numbers.

``python -m dscnn.zoo [--json PATH] [--models PATTERN]``. FLOPs/MACs follow docs/design.md section 0:
multiply-accumulates counted by fvcore on the deploy form at batch 1 (fvcore also counts one op per
input element of the global average pool, so a paper's pure conv+FC count is a hair lower).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dscnn._registry import create_model, list_models
from dscnn.blocks.refco import RefCO
from dscnn.complexity import count_macs, count_params, deploy_copy
from dscnn.models.base import ClassifierModel, resolve_stem_stride
from dscnn.repmix_sweep import repmix_sweep, sweep_lines

CONVENTION = "MACs = fvcore multiply-accumulates of the deploy form, batch 1 (docs/design.md section 0)"


@dataclass(frozen=True)
class PaperCount:
    """A published count and the setting it was measured in."""

    params: float  # parameters
    params_form: str  # "train" or "deploy": which of our two counts the paper's number is
    macs: float | None  # multiply-accumulates, None when not given
    source: str  # where the number comes from
    resolution: int = 224
    num_classes: int = 1000


# The only place paper numbers live. DSCNN's table does not say which form its params are; its
# RepMiX ablation (docs/design.md 2.1) counts the train form, so we compare against that.
PAPER_COUNTS: dict[str, PaperCount] = {
    "dscnn_t0": PaperCount(3.7e6, "train", 0.32e9, "DSCNN Table 1"),
    "dscnn_t1": PaperCount(7.38e6, "train", 0.89e9, "DSCNN Table 1"),
    "dscnn_t2": PaperCount(14.19e6, "train", 1.90e9, "DSCNN Table 1"),
    "dscnn_s": PaperCount(29.1e6, "train", 4.38e9, "DSCNN Table 1"),
    "fasternet_t0": PaperCount(3_905_500, "train", 335_422_720, "FasterNet (conv+FC MACs)"),
    "fasternet_t1": PaperCount(7_595_368, "train", 850.5e6, "FasterNet (conv+FC MACs)"),
    "fasternet_t2": PaperCount(14_982_888, "train", 1_904.3e6, "FasterNet (conv+FC MACs)"),
    "repvgg_a0": PaperCount(8_309_384, "deploy", 1.361e9, "RepVGG official"),
    "repvgg_a1": PaperCount(12_789_864, "deploy", 2.364e9, "RepVGG official"),
    "repvgg_b0": PaperCount(14_339_048, "deploy", 3.058e9, "RepVGG official"),
    "resnet20": PaperCount(0.27e6, "train", 40.55e6, "He et al. 2016, option-A shortcuts", 32, 10),
    "resnet56": PaperCount(0.85e6, "train", 125.49e6, "He et al. / ResRep, option-A shortcuts", 32, 10),
}


@cache
def _counts(name: str, resolution: int | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Counts of model ``name`` at its default config, or at the given resolution/classes."""
    overrides = {k: v for k, v in (("resolution", resolution), ("num_classes", num_classes)) if v is not None}
    model = create_model(name, **overrides)
    assert isinstance(model, ClassifierModel)
    config = model.config
    deployed = deploy_copy(model)
    stem = getattr(config, "stem_stride", None)
    counts = {
        "resolution": config.resolution,
        "num_classes": config.num_classes,
        "stem_stride": None if stem is None else resolve_stem_stride(stem, config.resolution),
        "params_train": count_params(model),
        "params_deploy": count_params(deployed),
        "macs_deploy": count_macs(deployed, config.resolution),
        "config": config.to_dict(),
    }
    refcos = {f"{m.in_channels}->{m.out_channels}": m.kernel for m in model.modules() if isinstance(m, RefCO)}
    if refcos:
        counts["refco_kernels"] = refcos  # the window K each RefCO width pair uses
    return counts


def _counts_at(name: str, default: dict[str, Any], resolution: int, num_classes: int) -> dict[str, Any]:
    """`_counts` at a setting, reusing the default-config counts when that is the same setting."""
    if (default["resolution"], default["num_classes"]) == (resolution, num_classes):
        return default
    return _counts(name, resolution, num_classes)


def _rel_diff(ours: float, paper: float | None) -> float | None:
    return None if paper is None else (ours - paper) / paper


def zoo_row(name: str) -> dict[str, Any]:
    """One report row: default-config counts, counts at 224/1000 classes, and the paper's numbers."""
    default = _counts(name)
    at_224 = _counts_at(name, default, 224, 1000)
    row: dict[str, Any] = {"model": name, **default}
    row.update({f"{k}_224": at_224[k] for k in ("params_train", "params_deploy", "macs_deploy")})
    paper = PAPER_COUNTS.get(name)
    row["paper"] = None if paper is None else asdict(paper)
    if paper is not None:
        ours = _counts_at(name, default, paper.resolution, paper.num_classes)
        row["params_rel_diff"] = _rel_diff(ours[f"params_{paper.params_form}"], paper.params)
        row["macs_rel_diff"] = _rel_diff(ours["macs_deploy"], paper.macs)
    return row


def _fmt(value: float | None, scale: float, digits: int = 3) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.2%}"


def render(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print ``rows`` as a rich table (at least 150 columns wide, so pipes and logs do not wrap)."""
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    table = Table(
        title="repnas model zoo",
        caption=f"{CONVENTION}. Params in M, MACs in G; paper params are (t)rain or (d)eploy form.",
    )
    headers = ("model", "res", "stem", "params train", "params deploy", "MACs", "MACs @224",
               "paper params", "diff", "paper MACs", "diff ")
    for header in headers:
        table.add_column(header, justify="left" if header == "model" else "right", no_wrap=True)
    for r in rows:
        paper = r["paper"] or {}
        table.add_row(
            r["model"], str(r["resolution"]), str(r["stem_stride"] or "-"),
            _fmt(r["params_train"], 1e6), _fmt(r["params_deploy"], 1e6),
            _fmt(r["macs_deploy"], 1e9, 4), _fmt(r["macs_deploy_224"], 1e9, 4),
            f"{_fmt(paper['params'], 1e6)} ({paper['params_form'][0]})" if paper else "",
            _pct(r.get("params_rel_diff")),
            _fmt(paper["macs"], 1e9, 4) if paper else "",
            _pct(r.get("macs_rel_diff")),
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dscnn.zoo", description=f"Params and MACs of every registry model. {CONVENTION}."
    )
    parser.add_argument("--models", metavar="PATTERN", help="glob over registry names, e.g. 'dscnn_*'")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    names = list_models(args.models)
    if not names:
        parser.error(f"no registry model matches {args.models!r}; registered: {', '.join(list_models())}")
    rows = [zoo_row(name) for name in names]
    render(rows)
    report: dict[str, Any] = {"convention": CONVENTION, "models": rows}
    for r in rows:
        if "refco_kernels" in r:
            pairs = ", ".join(f"{k}: K={v}" for k, v in r["refco_kernels"].items())
            print(f"{r['model']} RefCO windows (C_in->C_out: K): {pairs}")
    if "dscnn_t0" in names:  # the model DSCNN's Table 6 sweeps
        report["repmix_sweep"] = repmix_sweep("dscnn_t0")
        print("\n".join(sweep_lines(report["repmix_sweep"])))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
