"""python -m dscnn.bench: table, JSON with environment, runtimes side by side, --recheck, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from dscnn import bench, list_models, machine_load
from dscnn.external import TORCHVISION_MODELS, create_bench_model, deploy_function, list_bench_models
from dscnn.machine_load import LoadReading
from dscnn.measure_cache import MeasureCache

FAST = ["--resolution", "16", "--runs", "2", "--warmup", "1", "--repeats", "1", "--num-classes", "10"]


def test_cli_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res" / "out.json"
    assert bench.main(["--models", "repvgg_a0,mobilenet_v3_small", *FAST, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for text in ("repvgg_a0", "mobilenet_v3_small", "Latency deploy", "Speedup", "FLOPS", "fvcore"):
        assert text in table
    doc = json.loads(out.read_text())
    assert [m["name"] for m in doc["models"]] == ["repvgg_a0", "mobilenet_v3_small"]
    assert doc["config"]["settings"] == {"device": "cpu", "batch": 1, "resolution": 16, "threads": 1,
                                         "precision": "fp32", "channels_last": False, "warmup": 1, "runs": 2,
                                         "repeats": 1, "in_channels": 3, "runtime": "eager"}
    env = doc["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == 1 and env["cpu_model"]
    for m in doc["models"]:
        assert m["macs"] > 0 and m["latency"]["median_ms"] > 0 and m["train_latency"]["median_ms"] > 0
        assert m["macs_per_s"] == pytest.approx(m["macs"] * m["latency"]["throughput_ips"])
    repvgg = doc["models"][0]
    assert repvgg["params_deploy"] < repvgg["params_train"]


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "batch must be an integer >= 1"),
    (["--repeats", "0"], "repeats must be an integer >= 1"),
    (["--models", "repvgg_a0,nope"], "unknown model 'nope'"),
    (["--models", ","], "no models given"),
    (["--precision", "fp16"], "GPU-only"),
    (["--num-classes", "0"], "num-classes"),
    (["--runtime", "tensorrt"], "unknown runtime 'tensorrt'; valid runtimes: eager, compile, cudagraph, onnxruntime"),
    (["--runtime", "eager,cudagraph"], "runtime 'cudagraph' needs device cuda"),
    (["--runtime", "onnxruntime", "--channels-last"], "fp32 NCHW"),
    (["--throughput-batch", "32,x"], "comma list of integers"),
    (["--throughput-precision", "bf16"], "GPU-only"),
    (["--recheck", "--study-name", "x"], "--study-name needs --study"),
])
def test_bad_options_fail_clearly(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_gpu_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--models", "repvgg_a0"])
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_runtimes_side_by_side_and_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rt.json"
    argv = ["--models", "repvgg_a0", "--runtime", "eager,onnxruntime", "--throughput-batch", "2", "--no-train-form",
            *FAST, "--json", str(out)]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    for text in ("eager", "onnxruntime", "b2 fp32", "img/s"):  # headers wrap: the JSON is checked below
        assert text in table
    doc = json.loads(out.read_text())
    assert doc["runtimes"] == ["eager", "onnxruntime"] and doc["environment"]["onnxruntime"]
    assert "uptime" in doc["environment"] and len(doc["environment"]["load_average"]) == 3
    (m,) = doc["models"]
    assert m["runtimes"]["onnxruntime"]["runtime"] == "onnxruntime" and m["runtimes"]["eager"]["runtime"] == "eager"
    assert m["runtime_ratios"]["eager"] == 1.0 and m["runtime_ratios"]["onnxruntime"] > 0
    assert {"busy", "load", "runtime"} <= set(m) and isinstance(m["runtimes"]["onnxruntime"]["busy"], bool)
    (t,) = m["throughput"]
    assert (t["batch"], t["precision"]) == (2, "fp32") and t["macs_per_s"] == pytest.approx(m["macs"] * t["images_per_s"])


def test_all_runtimes_lists_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = bench.parse_args(["--models", "repvgg_a0", "--runtime", "all", *FAST])
    assert config.runtime_list[0] == "eager" and "onnxruntime" in config.runtime_list
    assert "cudagraph" in config.skipped_runtimes and "cudagraph" not in config.runtime_list


def test_recheck_re_times_cached_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "c.sqlite"
    with mock.patch.object(machine_load, "default_probe", lambda threads: _Quiet()):
        assert bench.main(["--models", "repvgg_a0", "--no-train-form", *FAST, "--cache", str(cache)]) == 0
        assert len(MeasureCache(cache)) == 1
        out = tmp_path / "recheck.json"
        assert bench.main(["--recheck", "--cache", str(cache), "--json", str(out)]) == 0
    assert "recheck of" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert row["label"] == "repvgg_a0" and row["new"]["median_ms"] > 0 and row["drift"] is not None
    assert row["old_busy"] is False and row["skipped"] == ""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--recheck", "--cache", str(tmp_path / "none.sqlite")])
    assert exit_info.value.code == 2


class _Quiet:
    def stop(self) -> LoadReading:
        return LoadReading(0.0, 1.0, 1.0)


def test_model_selection() -> None:
    assert bench.resolve_models("repvgg_*,repvgg_a0") == tuple(list_models("repvgg_*"))
    everything = bench.resolve_models("all")
    assert set(TORCHVISION_MODELS) <= set(everything) and set(list_models()) <= set(everything)
    assert list_bench_models() == list(everything)


def test_external_models_fold_bn_and_match() -> None:
    model = create_bench_model("mobilenet_v3_small", num_classes=10).eval()  # weights=None: no download
    deploy = deploy_function("mobilenet_v3_small")(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original keeps its BN"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(deploy(x), y, rtol=0, atol=1e-5 * y.abs().max().item())
    with pytest.raises(ValueError, match="no config overrides"):
        create_bench_model("resnet18", depths=(1,))


def test_recheck_re_times_a_studys_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from dscnn import create_model

    path = str(tmp_path / "studies.db")
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    study.set_user_attr("definition", {"device": "cpu", "latency_batch": 1, "resolution": 16, "threads": 1,
                                       "precision": "fp32", "runtime": "eager"})
    arch = create_model("repvgg_a0", resolution=16, num_classes=10, depths=(1, 1, 1, 1, 1),
                        width_multipliers=(0.25, 0.25)).config.to_json()
    for _ in range(2):  # the same architecture twice (a repeated baseline): timed once
        trial = study.ask()
        trial.set_user_attr("arch", arch)
        trial.set_user_attr("latency_ms", 1.0)
        study.tell(trial, 0.5)
    out = tmp_path / "recheck.json"
    with mock.patch.object(machine_load, "default_probe", lambda threads: _Quiet()):
        assert bench.main(["--recheck", "--study", path, "--study-name", "s", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["label"] == "trial 0, 1" and row["new"]["median_ms"] > 0 and row["old_ms"] == 1.0
    assert row["new"]["runtime"] == "eager" and row["old_busy"] is None
