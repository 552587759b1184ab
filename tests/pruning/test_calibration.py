"""The latency budget corrected by measuring the table's plan whole (`pruning.calibration`), with fake timings."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import pruning.latency_table
from dscnn.latency import LatencySettings
from pruning.algorithm import PruningError
from pruning.calibration import TOLERANCE, calibrate_budget
from pruning.groups import ChannelGroup, find_groups
from pruning.latency_table import LatencyTable, build_table
from tests.pruning.test_latency_target import Small

REST_MS = 0.05
SIZE = 24  # input height = width


def _layer_ms(module: nn.Module, resolution: int) -> float:
    """A deterministic stand-in for a timing: 1 ms per 10M MACs."""
    module = getattr(module, "linear", module)  # the table times a linear layer wrapped for image inputs
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features / 1e7
    assert isinstance(module, nn.Conv2d)
    k = module.kernel_size[0] * module.kernel_size[1]
    return module.out_channels * module.in_channels // module.groups * k * resolution**2 / 1e7


def _whole_ms(model: nn.Module) -> float:
    return REST_MS + sum(_layer_ms(m, SIZE) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable]:
    monkeypatch.setattr(pruning.latency_table, "_time", lambda module, settings: _layer_ms(module, settings.resolution))
    torch.manual_seed(0)
    model = Small().eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = find_groups(model, example).groups
    table = build_table(model, groups, example, LatencySettings(resolution=SIZE), _whole_ms)
    return model, groups, example, table


@pytest.mark.parametrize("factor", [1.3, 1.1, 0.8])
def test_a_table_off_by_a_factor_is_corrected_until_the_plan_measures_just_under_the_target(
        setup: tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable], factor: float) -> None:
    model, groups, example, table = setup
    target_ms = 0.6 * table.base_ms
    calls: list[float] = []

    def measure(m: nn.Module) -> float:  # the model as measured: the table's error is ``factor``
        calls.append(factor * _whole_ms(m))
        return calls[-1]

    calibration = calibrate_budget(model, groups, example, table, target_ms, measure, rounds=6)
    assert calibration.verified and len(calibration.rounds) == len(calls)
    best = max((r for r in calibration.rounds if r.measured_ms <= target_ms), key=lambda r: r.budget_ms)
    assert best.budget_ms == calibration.budget_ms and best.measured_ms <= target_ms
    assert best.measured_ms >= target_ms * (1 - 3 * TOLERANCE)  # close to the target, not far below it
    # the budget moves against the table's error: below the target when the table is optimistic
    assert (calibration.budget_ms < target_ms) == (factor > 1)
    assert calibration.factor == pytest.approx(factor, rel=0.15)


def test_an_exact_table_needs_no_correction(
        setup: tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable]) -> None:
    model, groups, example, table = setup
    target_ms = 0.6 * table.base_ms
    calibration = calibrate_budget(model, groups, example, table, target_ms, _whole_ms)
    assert calibration.verified and calibration.rounds[0].measured_ms <= target_ms
    assert calibration.budget_ms >= target_ms


def test_a_target_out_of_reach_as_measured_is_a_pruning_error(
        setup: tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable]) -> None:
    model, groups, example, table = setup
    with pytest.raises(PruningError, match="out of reach as measured"):  # a fixed cost pruning cannot remove
        calibrate_budget(model, groups, example, table, 0.6 * table.base_ms, lambda m: 10 * table.base_ms)


def test_no_plan_under_the_target_returns_the_last_correction_unverified(
        setup: tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable]) -> None:
    model, groups, example, table = setup
    target_ms = 0.8 * table.base_ms
    calibration = calibrate_budget(model, groups, example, table, target_ms, lambda m: 2 * _whole_ms(m), rounds=1)
    assert not calibration.verified and calibration.budget_ms == pytest.approx(
        target_ms * target_ms / calibration.rounds[0].measured_ms)
    assert calibration.to_dict()["rounds"][0]["measured_ms"] > target_ms


def test_a_target_below_one_channel_per_layer_before_any_measurement_is_a_pruning_error(
        setup: tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable]) -> None:
    model, groups, example, table = setup
    with pytest.raises(PruningError, match="one channel"):
        calibrate_budget(model, groups, example, table, 1e-9, _whole_ms)


def test_the_factor_is_the_chosen_rounds(
        setup: tuple[nn.Module, tuple[ChannelGroup, ...], Tensor, LatencyTable]) -> None:
    model, groups, example, table = setup
    target_ms = 0.6 * table.base_ms
    timed = iter([0.9 * target_ms, 1.2 * target_ms])  # under (too far under: corrected), then over the target
    calibration = calibrate_budget(model, groups, example, table, target_ms, lambda m: next(timed), rounds=2)
    first, second = calibration.rounds
    assert calibration.verified and calibration.budget_ms == first.budget_ms == target_ms
    assert calibration.factor == pytest.approx(first.measured_ms / first.predicted_ms)
    assert calibration.factor != pytest.approx(second.measured_ms / second.predicted_ms)


@pytest.mark.parametrize(("flags", "expected_ms", "expected_busy"), [
    ([(True, False), (False, False)], 2.0, [False]),  # busy, retried once: the quiet timing is used
    ([(False, True), (False, False)], 2.0, [False]),  # repeats disagreed: retried too
    ([(True, False)] * 4, 1.0, [True]),  # still busy after every retry: the fastest, flagged
    ([(False, True)] * 4, 1.0, [False]),  # noisy every time: the fastest (the plan may still be stored)
    ([(False, False)], 1.0, [False]),  # trusted at once: one timing
])
def test_calibration_harness_retries_an_untrusted_timing(monkeypatch: pytest.MonkeyPatch,
                                                         flags: list[tuple[bool, bool]], expected_ms: float,
                                                         expected_busy: list[bool]) -> None:
    timings = iter(flags)
    calls: list[int] = []

    class Result:
        def __init__(self) -> None:
            calls.append(1)
            self.busy, self.noisy = next(timings)
            self.median_ms = float(len(calls))
            self.trusted = not (self.busy or self.noisy)

    monkeypatch.setattr(pruning.latency_table, "measure_latency_ms", lambda model, settings: Result())
    busy: list[bool] = []
    measure = pruning.latency_table.harness(LatencySettings(), busy=busy, untrusted_retries=3, pause_s=0.0)
    assert measure(nn.Identity()) == expected_ms
    assert busy == expected_busy and len(calls) == len(flags)
