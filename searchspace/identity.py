"""What a study is, so that a run can never join, or write over, a different one.

* A study's **definition** (data set, subset, input size, classes, budget, device, runtime,
  measurement settings, space, objective, proxy recipe) is stored in the study itself (a study user
  attribute) when it is created. Resuming with another definition is refused with the
  differences named, before anything is written: its trials would not be comparable.
* An output folder records which study (storage + name) it belongs to (``study.json``); a second
  study pointed at the same folder is refused instead of overwriting ``trials/`` and ``best.*``.
* Input paths are checked before any work: a ``--storage`` that is a folder or sits in a missing
  one, an ``--out`` that is a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from dscnn.checkpoint import write_text_atomic
from searchspace.config import SearchConfig

DEFINITION_ATTR = "definition"
IDENTITY_FILE = "study.json"


class SearchError(ValueError):
    """A search that cannot run as asked (paths, a study defined otherwise); one line for the user."""


def check_paths(config: SearchConfig) -> None:
    """Refuse unusable storage and output paths before anything is loaded or written."""
    if "://" not in config.storage:
        storage = Path(config.storage)
        if storage.is_dir():
            raise SearchError(f"--storage {config.storage!r} is a folder; give a journal file, e.g. {storage / 'studies.db'}")
        if not storage.absolute().parent.is_dir():
            raise SearchError(f"--storage {config.storage!r}: folder {str(storage.absolute().parent)!r} does not exist")
    out = config.out_dir
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {str(out)!r} is a file; give a folder for the study's outputs")


def definition(config: SearchConfig, num_classes: int, resolution: int) -> dict[str, Any]:
    """The settings that make two trials comparable (JSON-ready)."""
    data, train, latency = config.data, config.train, config.latency
    return {
        "dataset": data.name, "train_per_class": data.train_per_class, "val_per_class": data.val_per_class,
        "holdout_per_class": data.holdout_per_class,
        "data_seed": data.seed, "resolution": resolution, "num_classes": num_classes,
        # --budget-of: the baseline defines the study; the timing it gave is stored apart (searchspace.budget_of)
        "budget_ms": None if config.budget_of else config.budget_ms, "budget_of": config.budget_of,
        "budget_macs": config.budget_macs, "device": latency.device,
        "train_device": train.device,
        "runtime": latency.runtime, "latency_batch": latency.batch, "threads": latency.threads,
        "precision": latency.precision, "space": config.space, "pareto": config.pareto,
        "epochs": train.epochs, "batch_size": train.batch_size, "optimizer": train.optimizer, "lr": train.lr,
        "seed": config.seed,  # the sampler's and every trial's seed
    }


def check_definition(study: optuna.Study, wanted: dict[str, Any], config: SearchConfig) -> None:
    """Store ``wanted`` on a new study; refuse a study that was defined otherwise."""
    stored = study.user_attrs.get(DEFINITION_ATTR)
    if stored is None:
        study.set_user_attr(DEFINITION_ATTR, wanted)  # a new study (or one from before definitions)
        return
    differences = [f"{k}={stored.get(k)!r} (now {v!r})" for k, v in wanted.items() if stored.get(k) != v]
    if differences:
        raise SearchError(
            f"study {config.study_name!r} in {config.storage!r} was defined with {', '.join(differences)}; "
            "its trials would not be comparable: use another --study-name (or --storage) for this search"
        )


def claim_output_folder(config: SearchConfig, study_is_new: bool) -> None:
    """Record in ``out`` which study it holds; refuse a folder that holds another study's outputs.

    A folder with trial checkpoints but no record is adopted by a study that already has trials
    (written before folders recorded their study) and refused for a new one.
    """
    out = config.out_dir
    mine = {"storage": _storage_id(config.storage), "study_name": config.study_name}
    path = out / IDENTITY_FILE
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError):
            theirs = None
        if theirs != mine:
            raise SearchError(
                f"--out {str(out)!r} holds the outputs of another study ({theirs}); give this study its own --out"
            )
        return
    if study_is_new and (out / "trials").is_dir() and any((out / "trials").iterdir()):
        raise SearchError(f"--out {str(out)!r} holds trial checkpoints of an unknown study; give this study its own --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(mine, indent=2) + "\n")


def _storage_id(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).resolve())
