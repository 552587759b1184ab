"""The README's first command, run as a new user runs it: wall time, peak memory, the answer it prints.

    python benchmarks/quickstart.py [--json benchmarks/results/quickstart.json]

Runs `QUICKSTART` (the search part of the README's set-up command; the install is not timed) in a
fresh temporary folder, so no earlier study, cache or output is reused, and records the wall time,
the peak RSS of the search process, the load average before and after (a number taken on a busy
machine says so), the best searched and every baseline accuracy from the study itself, and whether
the issue's goals hold (<= 300 s, best searched >= 45% top-1). A test keeps README and `QUICKSTART`
identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: exactly what README's first set-up command runs after the install
QUICKSTART = "search.py --budget-ms 10 --budget-flops 45M --trials 4 --epochs 4 --baselines resnet20,fasternet_t0_w0.5"
GOAL_SECONDS = 300.0
GOAL_ACCURACY = 0.45


def run_quickstart(python: str = sys.executable) -> dict[str, Any]:
    """Run the command in a fresh folder; its outputs are read back from the study it wrote."""
    with tempfile.TemporaryDirectory(prefix="repnas-quickstart-") as folder:
        argv = shlex.split(QUICKSTART)
        argv[0] = str(ROOT / argv[0])
        env = {**os.environ, "REPNAS_CACHE": str(Path(folder) / "cache")}  # a new user's: nothing measured or decoded
        load_before = os.getloadavg()
        started = time.perf_counter()
        done = subprocess.run([python, *argv], cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        load_after = os.getloadavg()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode != 0:
            raise SystemExit(f"the quick start failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        rows = _rows(Path(folder) / "studies.db")
    searched = [r for r in rows if not r["baseline"] and r["accuracy"] is not None]
    best = max(searched, key=lambda r: r["accuracy"]) if searched else None
    return {
        "command": f"python {QUICKSTART}", "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb),
        "load_average_before": load_before, "load_average_after": load_after,
        # 1-minute averages: the run itself loads the machine, and a job that ended just before still shows
        "load_average_note": "1-minute load averages; the run's own 2 threads are in the 'after' value",
        "trials": rows, "best_searched": best,
        "goals": {"seconds_le_300": seconds <= GOAL_SECONDS,
                  "best_searched_ge_45pct": bool(best and best["accuracy"] >= GOAL_ACCURACY)},
        "stdout_tail": done.stdout[-3000:],
    }


def _rows(storage: Path) -> list[dict[str, Any]]:
    import optuna

    from searchspace.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="repnas", storage=open_storage(str(storage)))
    return [{"trial": t.number, "baseline": t.user_attrs.get("baseline"), "state": t.state.name,
             "accuracy": t.user_attrs.get("accuracy") if t.state.name == "COMPLETE" else None,
             "latency_ms": t.user_attrs.get("latency_ms"), "macs": t.user_attrs.get("macs"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None}
            for t in study.trials]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "quickstart.json"))
    args = parser.parse_args(argv)
    result = run_quickstart()
    print(f"{result['command']}\n{result['seconds']:.0f} s, peak RSS {result['peak_rss_mb']} MB, 1-min load average "
          f"{result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f} (the run's own threads "
          "count in the second)")
    print("| trial | baseline | state | top-1 | latency ms | seconds |\n|---|---|---|---|---|---|")
    for r in result["trials"]:
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
        lat = f"{r['latency_ms']:.2f}" if r["latency_ms"] is not None else "-"
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        print(f"| {r['trial']} | {r['baseline'] or '-'} | {r['state']} | {acc} | {lat} | {secs} |")
    print(f"goals: {result['goals']}")
    Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
