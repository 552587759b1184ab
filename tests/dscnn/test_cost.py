"""dscnn.cost and dscnn.measure_cache: hand-checked MACs, deploy counts, cache hits and keys, busy results."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import onnxruntime as ort
import pytest
from torch import nn

from dscnn import (
    DeployCost,
    LatencyResult,
    LatencySettings,
    MeasureCache,
    count_macs,
    create_model,
    deploy_copy,
    machine_load,
    measure_deploy_cost,
)
from dscnn import cost as cost_mod
from dscnn.latency import BusyMachineWarning
from dscnn.machine_load import LoadReading
from dscnn.measure_cache import architecture_key, default_cache_path

FAST = LatencySettings(resolution=32, warmup=1, runs=2, repeats=1)


def conv_stack(width: int = 8) -> nn.Sequential:
    """32x32 input: 3x3 conv 3->w, depthwise 3x3 stride 2, 1x1 w->16, flatten, linear 16*16*16 -> 10."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width),
        nn.Conv2d(width, 16, 1), nn.Flatten(), nn.Linear(16 * 16 * 16, 10),
    )


def tiny_repvgg() -> nn.Module:
    return create_model("repvgg_a0", resolution=32, num_classes=10, depths=(1, 1, 2, 1, 1),
                        width_multipliers=(0.25, 0.25))


def test_macs_of_a_conv_stack_equal_the_formula() -> None:
    w = 8
    expected = (w * 3 * 9 * 32 * 32  # C_out * C_in/groups * k*k * H_out * W_out
                + w * 1 * 9 * 16 * 16  # depthwise, stride 2
                + 16 * w * 16 * 16  # 1x1
                + 16 * 16 * 16 * 10)  # linear
    cost = measure_deploy_cost(conv_stack(w), FAST, time_latency=False)
    assert cost.macs == expected
    n_params = sum(p.numel() for p in conv_stack(w).parameters())
    assert cost.params_train == cost.params_deploy == n_params
    assert cost.latency is None and cost.macs_per_s is None and cost.speedup is None
    with pytest.raises(ValueError, match="not measured"):
        _ = cost.latency_ms


def test_repvgg_deploy_cost() -> None:
    model = tiny_repvgg().train()
    cost = measure_deploy_cost(model, FAST, time_train_form=True)
    deploy = deploy_copy(model)
    assert model.training, "the caller's model is left as it was"
    assert cost.params_deploy == sum(p.numel() for p in deploy.parameters()) < cost.params_train
    assert cost.macs == count_macs(deploy, 32) > 0
    assert cost.latency is not None and cost.train_latency is not None
    assert cost.latency_ms > 0 and cost.speedup == pytest.approx(cost.train_latency.median_ms / cost.latency_ms)
    assert cost.macs_per_s == pytest.approx(cost.macs * 1000 / cost.latency_ms)
    assert cost.arch_key == architecture_key(deploy)
    record = json.loads(json.dumps(cost.to_dict()))
    assert record["macs"] == cost.macs and record["latency"]["median_ms"] == cost.latency_ms


def _counting(monkeypatch: pytest.MonkeyPatch, median_ms: float = 5.0, noisy: bool = False) -> list[int]:
    calls: list[int] = []

    def fake(model: nn.Module, settings: LatencySettings) -> LatencyResult:
        calls.append(1)
        return LatencyResult(median_ms, median_ms, median_ms, (median_ms,), settings.batch * 1000 / median_ms,
                             None, settings.runs * settings.repeats, noisy, runtime=settings.runtime)

    monkeypatch.setattr(cost_mod, "measure_latency_ms", fake)
    return calls


def test_cache_hits_skip_measurement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _counting(monkeypatch)
    path = tmp_path / "latency.sqlite"
    first = measure_deploy_cost(conv_stack(), FAST, cache=MeasureCache(path))
    assert len(calls) == 1
    # another process opening the same file: a fresh MeasureCache object, a freshly built model
    second = measure_deploy_cost(conv_stack(), FAST, cache=MeasureCache(path))
    assert len(calls) == 1, "an identical deploy graph must not be timed twice"
    assert second.latency == first.latency and len(MeasureCache(path)) == 1
    measure_deploy_cost(conv_stack(), FAST.replace(batch=2), cache=MeasureCache(path))  # other settings
    measure_deploy_cost(conv_stack(width=6), FAST, cache=MeasureCache(path))  # a "pruned" width
    assert len(calls) == 3 and len(MeasureCache(path)) == 3
    MeasureCache(path).clear()
    assert len(MeasureCache(path)) == 0


def test_noisy_results_are_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _counting(monkeypatch, noisy=True)
    cache = MeasureCache(tmp_path / "c.sqlite")
    measure_deploy_cost(conv_stack(), FAST, cache=cache)
    measure_deploy_cost(conv_stack(), FAST, cache=cache)
    assert len(calls) == 2 and len(cache) == 0


def test_busy_results_are_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the real measurement, with the load reading simulated: other processes used 60% of the machine
    monkeypatch.setattr(machine_load, "default_probe", lambda threads: _Reading(LoadReading(0.6, 1.0, 1.0)))
    cache = MeasureCache(tmp_path / "c.sqlite")
    with pytest.warns(BusyMachineWarning, match="busy machine"):
        cost = measure_deploy_cost(conv_stack(), FAST, cache=cache)
    assert cost.busy and cost.load == 0.6 and cost.runtime == "eager" and len(cache) == 0
    assert cost.to_dict()["busy"] is True and cost.to_dict()["latency"]["busy"] is True
    monkeypatch.setattr(machine_load, "default_probe", lambda threads: _Reading(LoadReading(0.0, 1.0, 1.0)))
    quiet = measure_deploy_cost(conv_stack(), FAST, cache=cache)
    assert not quiet.busy and len(cache) == 1
    (entry,) = cache.entries()
    assert entry.value["busy"] is False and entry.value["load"] == 0.0 and entry.settings == FAST


class _Reading:
    def __init__(self, reading: LoadReading) -> None:
        self.reading = reading

    def stop(self) -> LoadReading:
        return self.reading


def test_cache_key_differs_by_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = {r: MeasureCache.key("arch", FAST.replace(runtime=r)) for r in ("eager", "compile", "onnxruntime")}
    assert len(set(keys.values())) == 3
    calls = _counting(monkeypatch)
    cache = MeasureCache(tmp_path / "c.sqlite")
    eager = measure_deploy_cost(conv_stack(), FAST, cache=cache)
    onnx = measure_deploy_cost(conv_stack(), FAST.replace(runtime="onnxruntime"), cache=cache)
    assert len(calls) == 2 and len(cache) == 2, "an eager entry never answers for onnxruntime"
    assert (eager.runtime, onnx.runtime) == ("eager", "onnxruntime")
    assert {e.settings.runtime for e in cache.entries()} == {"eager", "onnxruntime"}
    # the runtime's version is in the key: another onnxruntime release is another entry
    monkeypatch.setattr(ort, "__version__", "0.0-test")
    assert MeasureCache.key("arch", FAST.replace(runtime="onnxruntime")) != keys["onnxruntime"]


def test_entries_record_how_to_rebuild_the_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _counting(monkeypatch)
    cache = MeasureCache(tmp_path / "c.sqlite")
    measure_deploy_cost(tiny_repvgg(), FAST, cache=cache)
    (entry,) = cache.entries()
    assert entry.source is not None and entry.source["config"]["family"] == "repvgg"


def test_cache_files_from_before_sources_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the schema before entries recorded a source
        conn.execute("CREATE TABLE latency (key TEXT PRIMARY KEY, arch TEXT, settings TEXT, hardware TEXT, "
                     "value TEXT NOT NULL, created REAL)")
        conn.execute("INSERT INTO latency VALUES ('k', 'a', '{\"device\": \"cpu\"}', 'h', '{}', 0)")
    cache = MeasureCache(path)
    assert len(cache) == 1 and cache.entries()[0].source is None


def test_architecture_key_tracks_structure_not_weights() -> None:
    a, b = tiny_repvgg(), tiny_repvgg()  # independent random weights, same architecture
    assert architecture_key(deploy_copy(a)) == architecture_key(deploy_copy(b))
    assert architecture_key(a) != architecture_key(deploy_copy(a))  # train form is another graph
    pruned = deploy_copy(a)
    conv = pruned.stages[4][0].conv  # narrow the last block's fused conv: config unchanged, widths not
    pruned.stages[4][0].conv = nn.Conv2d(conv.in_channels, conv.out_channels // 2, 3, 2, 1)
    assert pruned.config == a.config and architecture_key(pruned) != architecture_key(deploy_copy(a))
    strided = conv_stack()
    strided[2] = nn.Conv2d(8, 8, 3, stride=1, padding=1, groups=8)  # same shapes, other stride
    assert architecture_key(strided) != architecture_key(conv_stack())


def test_cache_location_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REPNAS_CACHE", str(tmp_path / "x"))  # the folder of every cache, data sets too
    assert default_cache_path() == tmp_path / "x" / "latency.sqlite"
    assert MeasureCache().path.parent.is_dir()
    from dscnn.data.cache import cache_dir

    assert cache_dir() == tmp_path / "x" / "datasets"  # one variable, no collision between the two
    monkeypatch.delenv("REPNAS_CACHE")
    assert default_cache_path().name == "latency.sqlite" and ".cache" in default_cache_path().parts


def test_an_unusable_cache_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dscnn.measure_cache import CacheUnusable

    monkeypatch.setenv("REPNAS_CACHE", str(tmp_path / "old.sqlite"))  # the variable's meaning before it was a folder
    with pytest.raises(CacheUnusable, match="names a file"):
        default_cache_path()
    (tmp_path / "folder.sqlite").mkdir()
    with pytest.raises(CacheUnusable, match="is not usable"):
        MeasureCache(tmp_path / "folder.sqlite")


def test_deploy_cost_record_is_plain_data() -> None:
    lat = LatencyResult(2.0, 1.9, 2.1, (1.9, 2.0, 2.1), 500.0, None, 300, False)
    cost = DeployCost("k", 10, 8, 1000, lat, LatencyResult.from_dict(lat.to_dict()))
    assert cost.macs_per_s == 1000 * 500.0 and cost.speedup == 1.0
    record = json.loads(json.dumps(cost.to_dict()))
    assert LatencyResult.from_dict(record["latency"]) == lat and record["speedup"] == 1.0
