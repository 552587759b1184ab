"""Stage-2 runs another study already trained under the same key (`Stage2Config.reuse_runs`).

A stage-2 run's key is everything its result depends on: architecture, seed, recipe and data
(`studies.stage2._run_key`). Training on the same device with the same library versions is
deterministic (a restored checkpoint reproduces its stored accuracies exactly), so a run stored under an
equal key in another study's ``stage2/runs`` folder is that run: copying it saves hours on a CPU. The
copy records where it came from (``reused_from``) and takes this study's label; its checkpoint is
copied when present (checkpoints are not committed; a later stage that needs one trains it again from
the key, `studies.stage2.restore_run`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from studies.plan import StudyError

__all__ = ["find_run", "reuse_run"]


def find_run(key: dict[str, Any], folders: Iterable[str | Path]) -> tuple[Path, dict[str, Any]] | None:
    """The first stored run (path, record) whose key equals ``key`` in ``folders``, in their order."""
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise StudyError(f"[stage2] reuse_runs: {folder} is not a folder")
        for path in sorted(folder.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # not a run record
            if isinstance(doc, dict) and doc.get("key") == key:
                return path, doc
    return None


def reuse_run(found: tuple[Path, dict[str, Any]], label: str, checkpoint: Path) -> dict[str, Any]:
    """This study's record of the run ``found`` in another study (``checkpoint``: where its weights go here)."""
    source, doc = found
    theirs = source.parent / str(doc.get("checkpoint", ""))
    if doc.get("checkpoint") and theirs.is_file():
        shutil.copyfile(theirs, checkpoint)
    return {**doc, "label": label, "checkpoint": checkpoint.name, "reused_from": str(source)}
