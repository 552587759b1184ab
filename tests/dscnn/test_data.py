"""Data loading: every on-disk layout, subsets, the cache, clear errors, the embedded set."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, write_png

import dscnn.data.load as data_module
from dscnn.data import DATASETS, DataConfig, DataError, load_dataset
from dscnn.data.cifar import CIFAR10_CLASSES

# The fixtures write images with torchvision 0.29's (deprecated, still working) encoders.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPNAS_DATA", raising=False)


def _image(label: int, index: int, size: int = 32, channels: int = 3) -> torch.Tensor:
    """A flat-coloured image whose pixels encode (label, index), exactly recoverable from a PNG."""
    return torch.full((channels, size, size), 10 * label + index, dtype=torch.uint8)


def _png_tree(split_dir: Path, classes: Sequence[str], per_class: int, size: int = 32) -> None:
    for label, name in enumerate(classes):
        (split_dir / name).mkdir(parents=True)
        for i in range(per_class):
            write_png(_image(label, i, size), str(split_dir / name / f"{i:04d}.png"))


def _cifar_tree(root: Path, classes: Sequence[str] = CIFAR10_CLASSES) -> Path:
    _png_tree(root / "train", classes, 2)
    _png_tree(root / "test", classes, 1)
    return root


def _tiny_imagenet(root: Path) -> Path:
    wnids = ["n03", "n01", "n02"]  # created unsorted: labels must follow sorted order
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(2):
            colour = _image(int(wnid[-1]), k, 64)
            channels = 1 if (wnid, k) == ("n02", 1) else 3  # one greyscale JPEG, as in the original
            (folder / f"{wnid}_{k}.JPEG").write_bytes(encode_jpeg(colour[:channels]).numpy().tobytes())
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n02", "n03", "n01", "n02"]):
        (root / "val" / "images" / f"val_{i}.JPEG").write_bytes(encode_jpeg(_image(1, i, 64)).numpy().tobytes())
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def test_cifar_image_tree_found_under_a_parent_folder(tmp_path: Path) -> None:
    _cifar_tree(tmp_path / "data" / "cifar10")
    ds = load_dataset(DataConfig("cifar10", data_dir=str(tmp_path / "data")))
    assert ds.class_names == CIFAR10_CLASSES and ds.num_classes == 10 and ds.resolution == 32
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.val_images.shape == (10, 3, 32, 32)
    assert ds.train_labels.tolist() == [c for c in range(10) for _ in range(2)]
    # pixels come back exactly and belong to their label: value = 10 * label + index
    assert ds.train_images[:, 0, 0, 0].tolist() == [10 * c + i for c in range(10) for i in range(2)]


def test_cifar_npz_is_transposed_from_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 4, 9])
    np.savez(tmp_path / "c.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    ds = load_dataset(DataConfig("cifar10", data_dir=str(tmp_path / "c.npz")))
    assert torch.equal(ds.train_images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.train_labels.tolist() == y.tolist() and ds.val_labels.tolist() == [0, 1]


def test_cifar_torchvision_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [3, 7]}
        (root / name).write_bytes(pickle.dumps(batches[name]))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    monkeypatch.setenv("REPNAS_DATA", str(tmp_path))  # found through the environment variable
    ds = load_dataset(DataConfig("cifar10"))
    assert ds.train_images.shape == (10, 3, 32, 32) and ds.class_names == CIFAR10_CLASSES
    red_of_first = batches["data_batch_1"][b"data"][0, :1024].reshape(32, 32)  # rows are channel-planar
    assert np.array_equal(ds.train_images[0, 0].numpy(), red_of_first)
    assert ds.val_labels.tolist() == [3, 7]


class _RunsCode:
    """Unpickling this calls a function: the shape of every code-running pickle."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (self.target,))  # type: ignore[attr-defined]


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batch = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(batch)
    hostile = _RunsCode()
    hostile.target = str(tmp_path / "pwned")  # type: ignore[attr-defined]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10, b"x": hostile}))
    with pytest.raises(DataError, match=r"refused to load pathlib.*Path.touch|refused to load"):
        load_dataset(DataConfig("cifar10", data_dir=str(tmp_path)))
    assert not (tmp_path / "pwned").exists()  # nothing ran


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    _tiny_imagenet(tmp_path / "tiny-imagenet-200")
    ds = load_dataset(DataConfig("tiny-imagenet", data_dir=str(tmp_path)))
    assert ds.class_names == ("n01", "n02", "n03") and ds.resolution == 64
    assert ds.train_images.shape == (6, 3, 64, 64)
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.val_labels.tolist() == [1, 2, 0, 1]  # from val_annotations.txt, by sorted wnid
    grey = ds.train_images[3].int()  # n02_1 was stored greyscale: replicated to RGB
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_imagefolder_and_resolution(tmp_path: Path) -> None:
    _png_tree(tmp_path / "train", ["b", "a"], 2, size=24)
    _png_tree(tmp_path / "val", ["b", "a"], 1, size=24)
    ds = load_dataset(DataConfig("imagefolder", data_dir=str(tmp_path), resolution=16))
    assert ds.class_names == ("a", "b") and ds.train_images.shape == (4, 3, 16, 16)
    # "a" was written second (colours 10 + i) but is label 0: sorted folder names; flat colours survive resizing
    assert ds.train_images[:, 0, 8, 8].tolist() == [10, 11, 0, 1]


def test_class_balanced_seeded_subset() -> None:
    first = load_dataset(DataConfig(train_per_class=7, val_per_class=3, seed=1))
    again = load_dataset(DataConfig(train_per_class=7, val_per_class=3, seed=1))
    other = load_dataset(DataConfig(train_per_class=7, val_per_class=3, seed=2))
    assert first.train_labels.bincount().tolist() == [7] * 10
    assert first.val_labels.bincount().tolist() == [3] * 10
    assert torch.equal(first.train_images, again.train_images)
    assert not torch.equal(first.train_images, other.train_images)


def test_second_load_comes_from_cache_and_edits_invalidate_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _cifar_tree(tmp_path / "c")
    config = DataConfig("cifar10", data_dir=str(root))
    first = load_dataset(config)
    assert len(list((tmp_path / "cache" / "datasets").glob("cifar10-*.npz"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_module, "decode_all", no_decoding)
    cached = load_dataset(config)
    assert torch.equal(cached.train_images, first.train_images) and cached.class_names == first.class_names
    write_png(_image(0, 9), str(root / "train" / "airplane" / "0009.png"))  # the data changed
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(config)


def test_embedded_default_is_a_balanced_cifar10_subset() -> None:
    ds = load_dataset(DataConfig())
    assert DataConfig().name == "embedded" and ds.class_names == CIFAR10_CLASSES
    assert ds.train_images.shape == (5000, 3, 32, 32) and ds.val_images.shape == (2000, 3, 32, 32)
    assert ds.train_labels.bincount().tolist() == [500] * 10
    assert ds.val_labels.bincount().tolist() == [200] * 10
    mean, std = ds.channel_stats  # real CIFAR-10 pixels: official means 0.491, 0.482, 0.447
    assert np.allclose(mean, (0.491, 0.482, 0.447), atol=0.01) and all(0.2 < s < 0.3 for s in std)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: embedded, cifar10, cifar100, tiny-imagenet, imagefolder"):
        DataConfig("mnist")
    assert DATASETS == ("embedded", "cifar10", "cifar100", "tiny-imagenet", "imagefolder")


@pytest.mark.parametrize("name", ["cifar10", "tiny-imagenet", "imagefolder"])
def test_missing_or_wrong_data_names_layout_and_flag(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="--data-dir.*REPNAS_DATA"):
        load_dataset(DataConfig(name))  # no folder given at all
    with pytest.raises(DataError, match="does not exist.*--data-dir"):
        load_dataset(DataConfig(name, data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match=r"Expected .*train/.*--data-dir"):
        load_dataset(DataConfig(name, data_dir=str(tmp_path)))  # exists but empty


def test_malformed_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has 3 classes, not 10"):
        load_dataset(DataConfig("cifar10", data_dir=str(_cifar_tree(tmp_path / "three", ["a", "b", "c"]))))
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError, match="lacks x_test, y_test"):
        load_dataset(DataConfig("cifar10", data_dir=str(tmp_path / "bad.npz")))
    tiny = _tiny_imagenet(tmp_path / "tiny")
    with (tiny / "val" / "val_annotations.txt").open("a") as fh:
        fh.write("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt:5"):
        load_dataset(DataConfig("tiny-imagenet", data_dir=str(tiny)))
    broken = _cifar_tree(tmp_path / "broken")
    (broken / "test" / "cat" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode .*cat/0000.png"):
        load_dataset(DataConfig("cifar10", data_dir=str(broken)))


def test_mixed_sizes_need_a_resolution(tmp_path: Path) -> None:
    _png_tree(tmp_path / "train", ["a"], 1, size=24)
    _png_tree(tmp_path / "val", ["a"], 1, size=20)
    with pytest.raises(DataError, match="set a resolution"):
        load_dataset(DataConfig("imagefolder", data_dir=str(tmp_path)))
    assert load_dataset(DataConfig("imagefolder", data_dir=str(tmp_path), resolution=20)).resolution == 20


def test_holdout_validation_comes_from_train_and_the_test_split_is_apart() -> None:
    plain = load_dataset(DataConfig(train_per_class=20, val_per_class=0))
    data = load_dataset(DataConfig(train_per_class=20, holdout_per_class=5, test_per_class=3))
    assert len(data.val_labels) == 50 and len(data.train_labels) == 150 and len(data.test_labels) == 30
    assert data.has_test and not plain.has_test
    train_rows = {bytes(x.numpy()) for x in plain.train_images}
    assert {bytes(x.numpy()) for x in data.val_images} <= train_rows  # validation held out of the train split
    assert not {bytes(x.numpy()) for x in data.val_images} & {bytes(x.numpy()) for x in data.train_images}
    test_rows = {bytes(x.numpy()) for x in plain.val_images}
    assert {bytes(x.numpy()) for x in data.test_images} <= test_rows  # the data set's own held-out split
    assert torch.equal(data.split("test")[1], data.test_labels)
    with pytest.raises(ValueError, match="no test split"):
        plain.split("test")
    with pytest.raises(ValueError, match="not both"):
        DataConfig(holdout_per_class=5, val_per_class=5)
    with pytest.raises(DataError, match="leaves a class without training images"):
        load_dataset(DataConfig(train_per_class=5, holdout_per_class=5))


def test_a_cache_folder_that_cannot_be_written_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _cifar_tree(tmp_path / "c")
    blocker = tmp_path / "latency.sqlite"  # REPNAS_CACHE's old meaning: a file, not the folder of the caches
    blocker.write_text("")
    monkeypatch.setenv("REPNAS_CACHE", str(blocker))
    with pytest.raises(DataError, match="cannot be written.*REPNAS_CACHE"):
        load_dataset(DataConfig("cifar10", data_dir=str(root)))


def test_test_view_puts_the_test_split_in_the_validation_slot() -> None:
    plain = load_dataset(DataConfig(train_per_class=6, val_per_class=2))
    with pytest.raises(DataError, match="no test split"):
        plain.test_view()
    held = load_dataset(DataConfig(train_per_class=6, holdout_per_class=2, test_per_class=3))
    view = held.test_view()
    assert torch.equal(view.val_labels, held.test_labels) and torch.equal(view.val_images, held.test_images)
    assert torch.equal(view.train_labels, held.train_labels) and len(held.val_labels) == 20  # original untouched
