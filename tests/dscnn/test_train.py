"""Proxy training: per-epoch reporting, learning, determinism, divergence, pruning, augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch
from torch import Tensor, nn

from dscnn.data import DataConfig, ImageDataset, load_dataset
from dscnn.data.augment import prepare_batch, random_crop_flip
from dscnn.train import TrainConfig, TrainingDiverged, train_and_evaluate

FAST = TrainConfig(epochs=2, batch_size=32, lr=0.05, eval_batch_size=256)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ImageDataset:
    """400 train / 200 val images of the embedded CIFAR-10 subset."""
    cache = tmp_path_factory.mktemp("cache")
    return load_dataset(DataConfig(train_per_class=40, val_per_class=20, cache_dir=str(cache)))


class TinyNet(nn.Module):
    """A small conv net; records the input sizes it sees."""

    def __init__(self, num_classes: int = 10, resolution: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        if resolution is not None:
            self.config = SimpleNamespace(resolution=resolution)  # like the registry models
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)
        self.input_sizes: set[int] = set()

    def forward(self, x: Tensor) -> Tensor:
        self.input_sizes.add(x.shape[-1])
        return self.head(self.body(x))


def test_trains_reports_each_epoch_and_learns(data: ImageDataset) -> None:
    reported: list[tuple[int, float]] = []
    result = train_and_evaluate(TinyNet(), data, FAST, on_epoch=lambda e, a: reported.append((e, a)))
    assert [e for e, _ in reported] == [0, 1]
    assert tuple(a for _, a in reported) == result.val_accuracies
    assert all(0.0 <= a <= 1.0 for a in result.val_accuracies)
    assert result.train_losses[1] < result.train_losses[0] < 2.31  # starts near ln(10), then drops
    assert result.best_accuracy > 0.13  # chance is 0.10 on 200 balanced images
    assert result.resolution == 32 and result.train_images_per_second > 0 and result.seconds > 0
    assert result.to_dict()["final_accuracy"] == result.val_accuracies[-1]


def test_cpu_training_pins_malloc_first(data: ImageDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on the CPU pins glibc's malloc thresholds first (`dscnn.allocator`, issue 12)."""
    import dscnn.train

    calls: list[bool] = []

    def spy() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(dscnn.train, "pin_malloc", spy)
    train_and_evaluate(TinyNet(), data, TrainConfig(epochs=1, batch_size=64, lr=0.05))
    assert calls == [True]
    # another device leaves the host heap alone ("meta" stands in for a GPU: training stops at once)
    monkeypatch.setattr(dscnn.train, "resolve_device", lambda name: torch.device("meta"))
    with pytest.raises(NotImplementedError, match="meta"):
        train_and_evaluate(TinyNet(), data, TrainConfig(epochs=1, batch_size=64, lr=0.05))
    assert calls == [True]


def test_pin_malloc_takes_on_glibc() -> None:
    import platform

    from dscnn.allocator import pin_malloc

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert pin_malloc() is True and pin_malloc() is True  # idempotent


def test_deterministic_on_cpu(data: ImageDataset) -> None:
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    first, second = (train_and_evaluate(TinyNet(), data, config) for _ in range(2))
    assert first.train_losses == second.train_losses and first.val_accuracies == second.val_accuracies
    third = train_and_evaluate(TinyNet(), data, TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=1))
    assert third.train_losses != first.train_losses


def test_nan_loss_raises_training_diverged(data: ImageDataset) -> None:
    class NaNNet(TinyNet):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * float("nan")

    with pytest.raises(TrainingDiverged, match="epoch 0, step 0") as info:
        train_and_evaluate(NaNNet(), data, FAST)
    assert (info.value.epoch, info.value.step) == (0, 0)
    with pytest.raises(TrainingDiverged):
        train_and_evaluate(TinyNet(), data, TrainConfig(epochs=1, batch_size=32, lr=1e30))


def test_pruned_callback_propagates_and_stops_training(data: ImageDataset) -> None:
    calls: list[int] = []

    def prune(epoch: int, accuracy: float) -> None:
        calls.append(epoch)
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        train_and_evaluate(TinyNet(), data, TrainConfig(epochs=3, batch_size=64), on_epoch=prune)
    assert calls == [0]  # raised after the first epoch; no further epoch ran


def test_leaves_the_callers_rng_alone(data: ImageDataset) -> None:
    model = TinyNet()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_and_evaluate(model, data, TrainConfig(epochs=1, batch_size=128))
    assert torch.equal(torch.rand(3), expected)


def test_resizes_to_the_model_resolution_with_adamw(data: ImageDataset) -> None:
    model = TinyNet(resolution=16)
    result = train_and_evaluate(model, data, TrainConfig(epochs=1, batch_size=128, optimizer="adamw", lr=1e-3))
    assert model.input_sizes == {16} and result.resolution == 16
    model = TinyNet(resolution=16)
    train_and_evaluate(model, data, TrainConfig(epochs=1, batch_size=128, resolution=40))  # explicit wins
    assert model.input_sizes == {40}


def test_crop_and_flip_are_per_image_windows_of_the_padded_batch() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, 2, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    found = set()
    for i in range(len(images)):
        windows = {
            (y, x, flip)
            for y in range(5) for x in range(5) for flip in (False, True)
            if torch.equal(out[i], (lambda w: w.flip(2) if flip else w)(padded[i, :, y : y + 8, x : x + 8]))
        }
        assert windows, f"image {i} is not a (flipped) window of its padded input"
        found |= windows
    assert len({w[:2] for w in found}) > 5 and {w[2] for w in found} == {False, True}  # offsets vary per image
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator()), images)


def test_prepare_batch_normalises() -> None:
    images = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    mean, std = torch.full((1, 3, 1, 1), 100.0), torch.full((1, 3, 1, 1), 4.0)
    assert torch.allclose(prepare_batch(images, mean, std, 4), torch.full((2, 3, 4, 4), 7.0))
    assert prepare_batch(images, mean, std, 2).shape == (2, 3, 2, 2)


def test_bad_train_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="valid: sgd, adamw"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="epochs must be > 0"):
        TrainConfig(epochs=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda_with_data_on_the_gpu(data: ImageDataset) -> None:
    on_gpu = data.to("cuda")
    assert on_gpu.to("cuda") is on_gpu  # already there: no copy
    result = train_and_evaluate(TinyNet(), on_gpu, TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cuda"))
    assert result.train_losses[1] < result.train_losses[0] and all(0 <= a <= 1 for a in result.val_accuracies)
