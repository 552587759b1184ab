"""`searchspace.config`: the one place search settings are validated, merged and defaulted."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import search
from dscnn.data import DataConfig
from dscnn.train import TrainConfig
from searchspace import RayConfig, SearchConfig, default_of, read_study_table


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"budget_ms": -1.0}, "budget_ms must be a positive number of milliseconds"),
        ({"budget_ms": math.inf}, "budget_ms must be a positive number of milliseconds"),
        ({"budget_macs": math.nan}, "budget_macs must be a positive MAC count"),
        ({"trials": 0}, "trials must be >= 1"),
        ({"study_name": "../x"}, "study_name must be a plain name"),
        ({"space": "nope"}, "space must be one of"),
        ({"baselines": ("resnet1000",)}, "baselines unknown: resnet1000"),
        ({"timeout_s": 0.0}, "timeout_s must be a positive number of seconds"),
    ],
)
def test_the_library_config_validates_itself(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchConfig(**fields)  # type: ignore[arg-type]


def test_from_mapping_merges_tables_later_wins_and_routes_each_key() -> None:
    study = {"budget_ms": 3.0, "epochs": 2, "dataset": "cifar10", "data_dir": "/d", "threads": 2, "seed": 7}
    config = SearchConfig.from_mapping(study, {"epochs": 4, "device": "cpu", "budget_flops": "50M", "trials": None})
    assert config.budget_ms == 3.0 and config.budget_macs == 50e6 and config.trials == 20  # None = not given
    assert config.train == TrainConfig(epochs=4, seed=7, device="cpu")
    assert config.data == DataConfig("cifar10", "/d")
    assert (config.latency.threads, config.latency.device, config.seed) == (2, "cpu", 7)
    assert config.ray is None
    assert SearchConfig.from_mapping({"device": "cpu", "train_device": "cpu"}).train.device == "cpu"
    with pytest.raises(ValueError, match="--device cuda: no CUDA GPU") if not torch.cuda.is_available() else nullcontext():
        SearchConfig.from_mapping({"device": "cpu", "train_device": "cuda"})  # a CPU budget, GPU training
    ray = SearchConfig.from_mapping({"backend": "ray", "concurrency": 3, "device": "cpu"}).ray
    assert ray == RayConfig(concurrency=3)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"budget_mss": 1}, "unknown setting.*budget_mss"),
        ({"budget_ms": -2}, "--budget-ms must be a positive"),
        ({"timeout": -1}, "--timeout must be a positive number of seconds"),
        ({"concurrency": 2}, "--concurrency needs --backend ray"),
        ({"backend": "spark"}, "--backend must be one of"),
        ({"budget_flops": "lots"}, "--budget-flops: cannot parse 'lots'"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"lr": math.nan}, "--lr must be a finite number"),
        ({"lr": math.inf}, "--lr must be a finite number"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"budget_ms": math.inf}, "--budget-ms must be a finite number"),
    ],
)
def test_from_mapping_names_the_setting_as_the_user_wrote_it(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchConfig.from_mapping({"device": "cpu"}, table)


def test_config_round_trips_through_json_dict() -> None:
    config = SearchConfig.from_mapping({"device": "cpu", "no_baselines": True, "budget_ms": 2})
    assert config.baselines == () and config.to_dict()["budget_ms"] == 2


def test_defaults_come_from_the_dataclasses_and_reach_the_help() -> None:
    assert default_of("trials") == SearchConfig().trials
    assert default_of("epochs") == TrainConfig().epochs
    assert default_of("latency_batch") == 1 and default_of("concurrency") == RayConfig().concurrency
    text = search.build_parser().format_help()
    assert f"(default: {TrainConfig().epochs})" in text and f"(default: {SearchConfig().trials})" in text


def test_study_table_is_the_top_level_or_the_search_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flat, chain = tmp_path / "a.toml", tmp_path / "b.toml"
    flat.write_text("budget_ms = 2.0\n")
    chain.write_text('[search]\nbudget_ms = 4.0\n[retrain]\nepochs = 1\n')
    assert read_study_table(flat) == {"budget_ms": 2.0} and read_study_table(chain) == {"budget_ms": 4.0}
    chain.write_text("budget_ms = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        read_study_table(chain)


def test_baselines_flag_and_study_list_choose_the_enqueued_models(tmp_path: Path) -> None:
    config = search.config_from_args(["--device", "cpu", "--baselines", "fasternet_t0_w0.5, dscnn_t0_w0.5"])
    assert config.baselines == ("fasternet_t0_w0.5", "dscnn_t0_w0.5")
    study = tmp_path / "s.toml"
    study.write_text('baselines = ["falconnet"]\n')
    assert search.config_from_args(["--study", str(study), "--device", "cpu"]).baselines == ("falconnet",)
    assert search.config_from_args(["--device", "cpu", "--baselines", ""]).baselines == ()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baselines", "resnet1000"], "baselines unknown: resnet1000"),
        (["--baselines", "falconnet,falconnet"], "names a baseline twice"),
        (["--baselines", "falconnet", "--no-baselines"], "give one"),
    ],
)
def test_bad_baselines_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        search.config_from_args(["--device", "cpu", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
