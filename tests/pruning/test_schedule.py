"""ResRep's mask schedule is derived from the training schedule, or refused / warned about with numbers."""

from __future__ import annotations

import warnings

import pytest

import dscnn
from pruning.algorithm import PruningError
from pruning.resrep import ResRep, ResRepConfig
from pruning.resrep.schedule import plan_schedule
from tests.pruning.test_resrep import X
from tests.pruning.tiny import tiny_deploy


def test_published_knobs_on_the_readme_schedule_would_mask_almost_everything_at_once() -> None:
    plan, warning = plan_schedule(200, 4, steps=780, warmup_steps=78, channels=3310)
    assert plan.capacity == 12 and warning is not None
    assert "3 mask update(s)" in warning and "3310" in warning and "--mask-interval 1 --granularity 7" in warning


def test_derived_knobs_reach_the_target_gradually() -> None:
    plan, warning = plan_schedule(None, None, steps=780, warmup_steps=78, channels=3310)
    assert warning is None and plan.derived == ("mask_interval", "granularity")
    assert plan.capacity >= 3310 and plan.updates >= 500 and plan.granularity <= 8
    long, _ = plan_schedule(None, None, steps=200_000, warmup_steps=1000, channels=500)
    assert (long.interval, long.granularity) == (200, 4)  # the published pair where it fits
    medium, _ = plan_schedule(None, None, steps=2000, warmup_steps=100, channels=500)
    assert medium.granularity == 4 and medium.interval < 200 and medium.capacity >= 500
    one, warning = plan_schedule(5, None, steps=100, warmup_steps=0, channels=90)  # explicit interval kept
    assert one.interval == 5 and one.capacity >= 90 and warning is None


def test_too_short_a_schedule_is_refused_with_the_numbers() -> None:
    with pytest.raises(PruningError, match=r"3 training steps with 1 of warm-up .*\(about 40 channels"):
        plan_schedule(None, None, steps=3, warmup_steps=1, channels=40)


def test_prepare_derives_the_knobs_and_warns_about_explicit_ones() -> None:
    model = tiny_deploy("resnet20")
    target = 0.5 * dscnn.count_macs(model, 32)
    resrep = ResRep()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resrep.prepare(model, target, X, steps_per_epoch=10, epochs=3)
    assert resrep.schedule is not None and resrep.schedule.capacity >= resrep.schedule.channels > 0
    assert resrep.summary()["mask_schedule"]["interval"] == resrep.schedule.interval
    with pytest.warns(UserWarning, match="cannot reach the FLOPs target gradually"):
        ResRep(ResRepConfig(mask_interval=200, granularity=4)).prepare(tiny_deploy("resnet20"), target, X,
                                                                        steps_per_epoch=10, epochs=3)
