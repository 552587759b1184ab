"""Checkpoints round-trip in both forms and fail loudly on anything else."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dscnn
from dscnn import CheckpointError, load_checkpoint, save_checkpoint
from tests.contracts import randomize_bn

TINY = {"resolution": 32, "num_classes": 10, "width_multipliers": (0.25, 0.25), "depths": (1, 1, 2, 1, 1)}


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    m = dscnn.create_model("repvgg_a0", **TINY)
    randomize_bn(m)  # non-default BN state, so a load that skipped buffers would show
    return m.eval()


def _outputs(m: nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_roundtrip(model: nn.Module, tmp_path: Path, form: str) -> None:
    if form == "deploy":
        dscnn.reparameterize_model(model)
    metrics = {"top1": 91.25, "epochs": 3, "history": [1.5, 0.75]}
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, metrics=metrics, extra={"seed": 7})
    loaded, info = load_checkpoint(path)
    assert info.form == form and dscnn.is_deploy_form(loaded) == (form == "deploy")
    assert info.config == model.config and info.metrics == metrics and info.extra == {"seed": 7}
    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert not list(tmp_path.glob("sub/.*.tmp"))  # the atomic write left no temporary file


def test_deploy_checkpoint_matches_train_checkpoint(model: nn.Module, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "train.pt", model)
    save_checkpoint(tmp_path / "deploy.pt", dscnn.deploy_copy(model))
    train, _ = load_checkpoint(tmp_path / "train.pt")
    deploy, _ = load_checkpoint(tmp_path / "deploy.pt")
    y, y_deploy = _outputs(train), _outputs(deploy)
    assert (y - y_deploy).abs().max() <= 1e-5 * y.abs().max()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(path)


def test_foreign_torch_file(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a repnas checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def _edit_payload(src: Path, dst: Path, **config_edits: object) -> Path:
    payload = torch.load(src, weights_only=True)
    payload = copy.deepcopy(payload)
    payload["config"].update(config_edits)
    torch.save(payload, dst)
    return dst


def test_state_does_not_match_config(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", model)
    edited = _edit_payload(path, tmp_path / "wider.pt", width_multipliers=[0.5, 0.25])
    with pytest.raises(CheckpointError, match="does not match the architecture.*shape mismatch"):
        load_checkpoint(edited)
    deeper = _edit_payload(path, tmp_path / "deeper.pt", depths=[1, 1, 2, 2, 1])
    with pytest.raises(CheckpointError, match="missing: stages.3.1"):
        load_checkpoint(deeper)


def test_unknown_family_or_field(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(CheckpointError, match="cannot rebuild.*unknown model family 'nope'"):
        load_checkpoint(_edit_payload(path, tmp_path / "fam.pt", family="nope"))
    with pytest.raises(CheckpointError, match="cannot rebuild.*unknown field.*colour"):
        load_checkpoint(_edit_payload(path, tmp_path / "field.pt", colour="red"))


def test_only_registry_models(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="only registry models"):
        save_checkpoint(tmp_path / "m.pt", nn.Linear(2, 2))


def _channel_pruned(name: str, **overrides: object) -> nn.Module:
    """A deploy model with a few channels removed from every prunable group (residual and depthwise)."""
    from pruning import find_groups, remove_channels

    torch.manual_seed(0)
    model = dscnn.reparameterize_model(dscnn.create_model(name, resolution=32, num_classes=10, **overrides))
    x = torch.zeros(1, 3, 32, 32)
    groups = find_groups(model, x).groups
    return remove_channels(model, groups, {g.root: range(0, g.size, 3) for g in groups}, x).eval()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("resnet20", {"widths": (8, 16, 32)}), ("dscnn_t0", {"widths": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "head_dim": 32})],
)
def test_pruned_deploy_roundtrip(tmp_path: Path, name: str, overrides: dict[str, object]) -> None:
    pruned = _channel_pruned(name, **overrides)
    fresh = dscnn.reparameterize_model(dscnn.create_model(name, resolution=32, num_classes=10, **overrides))
    assert any(p.shape != q.shape for p, q in zip(pruned.state_dict().values(), fresh.state_dict().values()))
    path = save_checkpoint(tmp_path / "pruned.pt", pruned, metrics={"macs": 1}, pruned=True)
    loaded, info = load_checkpoint(path)
    assert info.pruned and info.form == "deploy" and info.metrics == {"macs": 1}
    shapes = {k: v.shape for k, v in loaded.state_dict().items()}
    assert shapes == {k: v.shape for k, v in pruned.state_dict().items()}
    depthwise = [m for m in loaded.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert torch.equal(_outputs(loaded), _outputs(pruned))


def test_pruned_checkpoint_config_describes_the_pruned_model(tmp_path: Path) -> None:
    overrides = {"widths": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "head_dim": 32}
    pruned = _channel_pruned("dscnn_t0", **overrides)
    unpruned = dscnn.create_model("dscnn_t0", resolution=32, num_classes=10, **overrides).config
    _, info = load_checkpoint(save_checkpoint(tmp_path / "p.pt", pruned, pruned=True))
    convs = {n: (m.out_channels, m.in_channels) for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    assert info.config.pruned_layers and all(convs[n] == (o, i) for n, o, i in info.config.pruned_layers
                                             if n in convs)
    assert info.config.arch_hash() != unpruned.arch_hash()
    assert info.config.replace(pruned_layers=()).arch_hash() == unpruned.arch_hash()
    rebuilt = dscnn.build_model(dscnn.config_from_dict(json.loads(info.config.to_json())))  # JSON round trip
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


def test_pruned_model_needs_the_pruned_flag(tmp_path: Path) -> None:
    pruned = _channel_pruned("resnet20", widths=(8, 16, 32))
    with pytest.raises(CheckpointError, match="shape mismatch"):  # unflagged: the usual clear error
        load_checkpoint(save_checkpoint(tmp_path / "plain.pt", pruned))
    with pytest.raises(CheckpointError, match="must be in deploy form"):
        save_checkpoint(tmp_path / "train.pt", dscnn.create_model("resnet20"), pruned=True)
    assert not (tmp_path / "train.pt").exists()


def test_pruned_checkpoint_with_foreign_kernel_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "p.pt", _channel_pruned("resnet20", widths=(8, 16, 32)), pruned=True)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["stem.0.conv.weight"] = torch.zeros(4, 3, 5, 5)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="stem.0.conv: stored kernel"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("drop, form, message", [("form", None, "incomplete: no form"),
                                                  ("state_dict", None, "incomplete: no state_dict"),
                                                  (None, "half", "unknown form 'half'")])
def test_incomplete_or_unknown_form_is_a_clear_error(tmp_path: Path, drop: str | None, form: str | None,
                                                     message: str) -> None:
    model = dscnn.create_model("resnet20")
    path = dscnn.save_checkpoint(tmp_path / "c.pt", model)
    payload = torch.load(path, weights_only=True)
    if drop:
        del payload[drop]
    if form:
        payload["form"] = form
    torch.save(payload, path)
    with pytest.raises(dscnn.CheckpointError, match=message):
        dscnn.load_checkpoint(path)
