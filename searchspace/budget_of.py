"""A latency budget given as a hand-designed model's latency: ``--budget-of dscnn_t0_w0.5``.

A user's question is often "the most accurate model at no more latency than the one I ship now", and
on a shared machine an absolute number drifts: a budget written in milliseconds on Monday cuts the
same models differently on a day the machine runs 2x slower. With ``budget_of`` the search times the
named baseline's deploy form once when the study starts, on the target device, and that timing is the
budget of every trial; it is stored in the study (`BUDGET_OF_ATTR`), so a resumed or parallel worker uses
the same number, and the baseline's own trial records that very timing (it is at the budget by
definition). A resume times the reference once more and warns when the machine's speed has moved
since (the stored number stays the budget, so the trials already judged by it stay comparable). Stage
2 of a study draws the line again at the baseline's side-by-side latency (`studies.stage2`), so which
models fit is decided between models timed in one run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optuna
from torch import nn

import dscnn
from dscnn.timing_retry import retry_until
from searchspace.baselines import get_baseline
from searchspace.config import SearchConfig
from searchspace.identity import SearchError
from searchspace.objective import TrialCost

__all__ = ["BUDGET_OF_ATTR", "DRIFT_FACTOR", "REFERENCE_PAUSE_S", "REFERENCE_RETRIES", "reference_cost", "resolve_budget"]

BUDGET_OF_ATTR = "budget_of"  # study user attribute: {"baseline": name, "cost": TrialCost as a dict}
REFERENCE_RETRIES = 3  # timings of the reference on a busy or noisy machine before giving up / taking the fastest
REFERENCE_PAUSE_S = 30.0  # between those timings (a busy spell usually passes)
DRIFT_FACTOR = 1.2  # a timing of one graph this far from an earlier one: the machine's speed moved


def resolve_budget(config: SearchConfig, study: optuna.Study, measure: Callable[[nn.Module], TrialCost],
                   num_classes: int, resolution: int, say: Callable[[str], None] = print) -> SearchConfig:
    """``config`` with ``budget_ms`` set to the budget reference's latency (stored in ``study``, else
    measured now with ``measure`` and stored); ``config`` itself without ``budget_of``. Call under
    the study's lock, so two workers starting together time it once. A resume or a later worker times
    the reference once more, only to warn when the machine's speed moved (`DRIFT_FACTOR`)."""
    if config.budget_of is None:
        return config
    stored = study.user_attrs.get(BUDGET_OF_ATTR)
    if stored is not None and stored.get("baseline") != config.budget_of:
        raise SearchError(f"study {config.study_name!r} has the latency budget of {stored.get('baseline')!r}, not "
                          f"{config.budget_of!r}: use another --study-name for another budget")
    model = dscnn.build_model(get_baseline(config.budget_of).config(num_classes=num_classes, resolution=resolution))
    if stored is not None:  # a resume or another worker: the stored number stays the budget; is today's speed alike?
        _check_speed(config.budget_of, TrialCost(**stored["cost"]), measure(model), say)
    else:
        cost = _trusted_timing(model, measure, config.budget_of, say)
        if config.budget_macs is not None and cost.macs > config.budget_macs:
            raise SearchError(f"--budget-of {config.budget_of} has {cost.macs / 1e6:.1f}M MACs, over --budget-flops "
                              f"{config.budget_macs / 1e6:.1f}M: the model that defines the latency budget would be "
                              "infeasible itself; raise --budget-flops or take another --budget-of")
        stored = {"baseline": config.budget_of, "cost": dataclasses.asdict(cost)}
        study.set_user_attr(BUDGET_OF_ATTR, stored)
        say(f"latency budget: {config.budget_of} times {cost.latency_ms:.3f} ms on {cost.device} ({cost.runtime})")
    return dataclasses.replace(config, budget_ms=float(stored["cost"]["latency_ms"]))


def reference_cost(study: optuna.Study) -> tuple[str, TrialCost] | None:
    """The budget reference's name and the timing that made the budget, if the study has one."""
    stored: dict[str, Any] | None = study.user_attrs.get(BUDGET_OF_ATTR)
    return None if stored is None else (str(stored["baseline"]), TrialCost(**stored["cost"]))


def _check_speed(name: str, stored: TrialCost, now: TrialCost, say: Callable[[str], None]) -> None:
    """Warn when the reference times more than `DRIFT_FACTOR` away from the timing that set the budget
    (a busy timing is not judged): new trials are timed at today's speed but judged by the stored line."""
    ratio = now.latency_ms / stored.latency_ms
    if now.busy or 1 / DRIFT_FACTOR <= ratio <= DRIFT_FACTOR:
        return
    more = "fewer" if ratio > 1 else "more"
    say(f"warning: latency budget: {name} times {now.latency_ms:.3f} ms now and {stored.latency_ms:.3f} ms when this "
        f"study's budget was set: the machine runs {ratio:.2f}x as slow, so {more} new trials fit the stored "
        f"{stored.latency_ms:.3f} ms than would have then; resume when it runs at that speed, or start a new study "
        "(another --study-name and --out) for a budget of today's speed")


def _trusted_timing(model: nn.Module, measure: Callable[[nn.Module], TrialCost], name: str,
                    say: Callable[[str], None]) -> TrialCost:
    """The first timing neither busy nor noisy; else the fastest that was not busy. All busy: an error (the
    budget of the whole study would be a busy machine's number)."""
    def retrying(cost: TrialCost, attempt: int) -> None:
        say(f"latency budget: {name} timed {cost.latency_ms:.3f} ms on a {'busy' if cost.busy else 'noisy'} "
            f"machine; timing again in {REFERENCE_PAUSE_S:g} s ({attempt - 1}/{REFERENCE_RETRIES})")

    timings = retry_until(lambda: measure(model), lambda c: not (c.busy or c.noisy), REFERENCE_RETRIES,
                          REFERENCE_PAUSE_S, retrying)
    if not (timings[-1].busy or timings[-1].noisy):
        return timings[-1]
    quiet = [c for c in timings if not c.busy]
    if not quiet:
        raise SearchError(f"--budget-of {name}: the machine was busy in all {REFERENCE_RETRIES} timings of {name}, "
                          "so the budget would be a busy machine's number; run the search when the machine is quiet")
    fastest = min(quiet, key=lambda c: c.latency_ms)
    say(f"warning: latency budget: {name}'s timings were noisy in all {REFERENCE_RETRIES} tries; the fastest, "
        f"{fastest.latency_ms:.3f} ms, is the budget")
    return fastest
