"""Export to ONNX / TorchScript: every family round-trips exactly and the CLI fails loudly on bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from torch import nn
from torchvision.io import write_png

import dscnn
from dscnn import CheckpointError
from dscnn.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
from dscnn.export.cli import main
from dscnn.export.onnx_graph import find_parallel_branches
from dscnn.export.run import ExportConfig, run_export
from tests.contracts import randomize_bn

# Small overrides per family so each export takes well under a second; a family missing here is
# still exported (at its default widths), so a new family cannot escape the test.
TINY: dict[str, dict[str, Any]] = {
    "repvgg": {"width_multipliers": (0.25, 0.25), "depths": (1, 1, 2, 1, 1)},
    "dscnn": {"widths": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "head_dim": 64},
    "falconnet": {"widths": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "head_dim": 64},
    "fasternet": {"embed_dim": 8, "depths": (1, 1, 1, 1), "head_dim": 64},
    "resnet_cifar": {"depth": 8, "widths": (8, 16, 32)},
}


def _families() -> dict[str, str]:
    """family -> its first registered model name."""
    out: dict[str, str] = {}
    for name in dscnn.list_models():
        out.setdefault(dscnn.create_model(name, num_classes=10, resolution=32).config.family, name)
    return out


FAMILIES = _families()


def _tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = dscnn.create_model(FAMILIES[family], num_classes=10, resolution=32, **TINY.get(family, {}))
    randomize_bn(model)  # non-trivial BN statistics: a wrong fold could not pass by luck
    return model.eval()


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"random": torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_match(family: str, tmp_path: Path) -> None:
    model = _tiny(family)
    deployed = dscnn.deploy_copy(model)
    keys = set(model.state_dict())
    path = export_onnx(model, tmp_path / "m.onnx", resolution=32)  # fuses a copy on the way
    assert set(model.state_dict()) == keys  # the caller's model is untouched
    report = verify_onnx(deployed, path, _inputs())  # batch 2 through a graph traced at batch 1
    assert report.ok, report.problems
    assert report.batchnorm_nodes == 0 and report.branches == ()
    assert report.checks[0].max_rel_error <= 1e-5 and report.node_types["Conv"] > 0
    assert verify_onnx(model, path, _inputs()).ok  # end to end: ORT(deploy) vs PyTorch(train form)
    ts = export_torchscript(model, tmp_path / "m.ts", resolution=32)
    assert all(c.max_rel_error <= 1e-5 for c in verify_torchscript(deployed, ts, _inputs(3)))


def test_unfused_graph_is_flagged(tmp_path: Path) -> None:
    model = _tiny("repvgg")
    path = export_onnx(model, tmp_path / "train.onnx", resolution=32, fuse=False)
    report = verify_onnx(model, path, _inputs())
    assert report.checks[0].max_rel_error <= 1e-5  # numerically fine, structurally not deployable
    # every BN module shows: the exporter must not fold conv+BN pairs behind the check's back
    assert report.batchnorm_nodes == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert report.branches and not report.ok
    assert any("BatchNormalization" in p for p in report.problems)


class _Sum(nn.Module):
    """``a(x) + b(x)`` or ``a(x) + x`` (b=None): parallel branches versus a residual."""

    def __init__(self, a: nn.Module, b: nn.Module | None) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + (x if self.b is None else self.b(x))


@pytest.mark.parametrize(("second", "branches"), [
    (lambda: nn.Conv2d(4, 4, 1), 1),  # 3x3 + 1x1, same stride and groups: mergeable (docs/design.md rule 2)
    (lambda: None, 0),  # residual a(x) + x: allowed
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 1, stride=2), nn.Upsample(scale_factor=2)), 0),  # other stride
    (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2), 0),  # SCConv-like grouped + dense pair: kept by design
])
def test_branch_definition(second: Any, branches: int, tmp_path: Path) -> None:
    module = _Sum(nn.Conv2d(4, 4, 3, padding=1), second())
    path = export_onnx(module, tmp_path / "m.onnx", resolution=8, in_channels=4, fuse=False)
    assert len(find_parallel_branches(onnx.load(str(path)))) == branches


def _save(tmp_path: Path, model: nn.Module, name: str = "m.pt") -> Path:
    return dscnn.save_checkpoint(tmp_path / name, model)


def _real_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(2)
    for i, size in enumerate((40, 32, 48)):  # different sizes: resized and centre-cropped to 32
        write_png(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g), str(folder / f"{i}.png"))
    return tmp_path / "images"


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_cli_train_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _save(tmp_path, _tiny("dscnn"))
    out = tmp_path / "out"
    code = main([str(ckpt), "--onnx", str(out / "m.onnx"), "--torchscript", str(out / "m.ts"),
                 "--real-data", str(_real_dir(tmp_path)), "--warmup", "1", "--runs", "3", "--repeats", "1",
                 "--json", str(out / "report.json")])
    assert code == 0 and "all checks passed" in capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    assert doc["ok"] and doc["form"] == "train" and doc["resolution"] == 32
    assert [c["inputs"] for c in doc["onnx"]["checks"]] == ["random", "real"]
    assert doc["onnx"]["checks"][1]["batch"] == 3
    assert doc["onnx"]["batchnorm_nodes"] == 0 and doc["onnx"]["branches"] == []
    assert doc["onnx"]["onnx_latency"]["median_ms"] > 0 and doc["onnx"]["torch_latency"]["median_ms"] > 0
    assert all(c["max_rel_error"] <= 1e-5 for c in doc["torchscript"]["checks"])


def test_cli_deploy_and_pruned_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned = dscnn.create_model("resnet20", depth=8, widths=(8, 16, 32), mid_widths=(3, 5, 11))
    randomize_bn(pruned)
    for name, model in (("deploy.pt", dscnn.deploy_copy(_tiny("repvgg"))), ("pruned.pt", pruned)):
        ckpt = _save(tmp_path, model, name)
        doc = run_export(ExportConfig(str(ckpt), onnx=str(tmp_path / f"{name}.onnx"), num_real=0, latency=None)).to_dict()
        assert doc["ok"], doc["problems"]


def test_cli_bad_checkpoints(tmp_path: Path) -> None:
    good = _save(tmp_path, _tiny("repvgg"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    payload = torch.load(good, weights_only=True)
    payload["form"] = "deploy"  # train-form weights claiming the deploy form
    wrong_form = tmp_path / "wrong_form.pt"
    torch.save(payload, wrong_form)
    cases = {tmp_path / "missing.pt": "does not exist", truncated: "truncated or not a checkpoint",
             foreign: "not a repnas checkpoint", text: "truncated or not a checkpoint",
             wrong_form: "does not match the architecture"}
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main([str(path), "--onnx", str(tmp_path / "x.onnx"), "--no-latency", "--num-real", "0"])
        assert message in str(exit_info.value.code), path
        with pytest.raises(CheckpointError, match=message):
            run_export(ExportConfig(str(path), onnx=str(tmp_path / "x.onnx"), num_real=0, latency=None))
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("args", [["--onnx", "m.pt"], ["--onnx", "a.onnx", "--opset", "3"],
                                  ["--onnx", "a.onnx", "--resolution", "-1"]])
def test_cli_bad_flags(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["m.pt", *args])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_real_data_folder_errors(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, _tiny("resnet_cifar"))
    for folder, message in ((tmp_path / "nope", "is not a folder"), (tmp_path, "holds no image files")):
        with pytest.raises(ValueError, match=message):
            run_export(ExportConfig(str(ckpt), onnx=str(tmp_path / "m.onnx"), real_data=str(folder), latency=None))


class _Gate(nn.Module):
    """SCConv-SRU-like hard threshold on a gate, and logits far smaller than the activations."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.gate, self.value, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        self.threshold = threshold
        with torch.no_grad():  # channels 0 and 1 sit within float32 rounding of the threshold
            self.gate.weight.zero_()
            self.gate.bias.copy_(torch.tensor([1e-8, -1e-8, 1.0, -1.0]))
            self.value.bias.fill_(10.0)  # large activations ...
            self.head.weight.mul_(1e-3)  # ... tiny logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))
        y = torch.where(g > self.threshold, torch.ones_like(g), g) * self.value(x)
        return self.head(y.mean((2, 3)))


def _runtime(model: nn.Module) -> Any:
    """Another float32 runtime: runs ``model`` in float32 and reports its comparisons, as onnxruntime does."""
    from dscnn.export.decisions import recorded_decisions

    def run(x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        with torch.inference_mode(), recorded_decisions() as decisions:
            return model(x).numpy(), list(decisions)

    return run


def test_flips_within_rounding_of_a_threshold_pass_when_nothing_else_does() -> None:
    """A runtime deciding near-threshold gates otherwise than PyTorch and float64 (as MLAS did in issue 17)."""
    from dscnn.export.files import _compare

    model = _Gate().eval()
    other = _Gate(threshold=0.5 - 2**-25).eval()  # one float32 ulp below: decides the -1e-8 channel otherwise
    other.load_state_dict(model.state_dict())
    check, = _compare(model, _runtime(other), _inputs())
    assert check.max_rel_error > 1e-3  # far from PyTorch's logits, relatively: tiny logits, a real jump
    assert check.passed() and check.decisions_flipped > 0 and check.fp64_abs_error < 1e-7
    wrong = _Gate(threshold=0.8).eval()  # a wrong gate: sigmoid(1) = 0.73 is decided otherwise
    wrong.load_state_dict(model.state_dict())
    check, = _compare(model, _runtime(wrong), _inputs())
    assert not check.passed() and "decided otherwise" in check.problem()


def _tiny_logits() -> nn.Module:
    model = _tiny("resnet_cifar")
    with torch.no_grad():
        model.get_classifier().weight.mul_(1e-4)  # logits ~1e-4 of the features: float32 noise is 1e-3 of them
        model.get_classifier().bias.zero_()
    return dscnn.deploy_copy(model)


def test_tiny_logits_pass_and_real_bugs_still_fail(tmp_path: Path) -> None:
    model = _tiny_logits()
    path = export_onnx(model, tmp_path / "m.onnx", resolution=32, fuse=False)
    assert verify_onnx(model, path, _inputs()).ok
    proto = onnx.load(str(path))
    logits = verify_onnx(model, path, _inputs()).checks[0]
    for label, tamper in (("classifier bias", _shift_last_bias), ("a conv bias", _shift_conv_bias)):
        broken = onnx.load(str(path))
        tamper(broken)
        onnx.save(broken, str(tmp_path / "broken.onnx"))
        check = verify_onnx(model, tmp_path / "broken.onnx", _inputs()).checks[0]
        assert not check.passed(), label
    assert logits.allowed_abs_error > 0 and proto.graph.node


def _initializer(proto: onnx.ModelProto, name: str) -> tuple[Any, Any]:
    from onnx import numpy_helper

    init = next(i for i in proto.graph.initializer if i.name == name)
    return init, numpy_helper.to_array(init).copy()


def _replace(init: Any, array: Any) -> None:
    from onnx import numpy_helper

    init.CopyFrom(numpy_helper.from_array(array, init.name))


def _shift_last_bias(proto: onnx.ModelProto) -> None:
    """The classifier's bias off by 10% of the largest logit (~1e-5 absolute)."""
    gemm = next(n for n in reversed(proto.graph.node) if n.op_type in ("Gemm", "Add", "MatMul"))
    name = next(i for i in gemm.input if any(init.name == i for init in proto.graph.initializer)
                and len(_initializer(proto, i)[1].shape) == 1)
    init, bias = _initializer(proto, name)
    bias[0] += 1e-5
    _replace(init, bias)


def _shift_conv_bias(proto: onnx.ModelProto) -> None:
    """One conv bias off by 1e-3 of its own magnitude: a fold that is almost right."""
    conv = [n for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 2][2]
    init, bias = _initializer(proto, conv.input[2])
    bias += 1e-3 * abs(bias).max()
    _replace(init, bias)


def test_dropped_batchnorm_fails(tmp_path: Path) -> None:
    model = _tiny("repvgg")
    dropped = dscnn.deploy_copy(model)
    convs = [m for m in dropped.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():  # a BN "folded" as the identity: kernel and bias left as the bare conv's
        convs[1].weight.mul_(1.0 / 1.3)
        convs[1].bias.zero_()
    path = export_onnx(dropped, tmp_path / "m.onnx", resolution=32, fuse=False)
    report = verify_onnx(model, path, _inputs())
    assert not report.ok and "from the float64 reference" in report.problems[0]


def test_failed_export_leaves_no_file_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import dscnn.export.run as run_module

    ckpt = _save(tmp_path, _tiny("resnet_cifar"), "ckpt.pt")
    assert main([str(ckpt), "--no-latency", "--num-real", "0"]) == 0  # no --onnx: beside the checkpoint
    assert (tmp_path / "ckpt.onnx").is_file() and "all checks passed" in capsys.readouterr().out
    (tmp_path / "ckpt.onnx").unlink()
    real = run_module.verify_onnx

    def failing(*args: Any, **kwargs: Any) -> Any:
        report = real(*args, **kwargs)
        return dataclasses.replace(report, branches=("2 parallel Conv nodes (a, b) read 'x' and are summed",))

    monkeypatch.setattr(run_module, "verify_onnx", failing)
    assert main([str(ckpt), "--torchscript", str(tmp_path / "m.ts"), "--onnx", str(tmp_path / "m.onnx"),
                 "--no-latency", "--num-real", "0"]) == 1
    assert "nothing written" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no file, no temp
