"""python -m dscnn.bench: table, JSON with environment, clear errors for bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dscnn import bench, list_models
from dscnn.external import TORCHVISION_MODELS, create_bench_model, deploy_function, list_bench_models

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
                                         "repeats": 1, "in_channels": 3}
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
