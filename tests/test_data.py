"""reparam.data: splits, datasets (digits, fashion-mnist, cifar, synthetic), images and augmentations."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reparam.core.errors import ReparamError
from reparam.data import (
    BUNDLED_IMAGES,
    DATASETS,
    DatasetSplits,
    RawDataset,
    limit_test,
    load_dataset,
    load_image,
    make_augment,
    register_dataset,
)
from reparam.data import transforms as T
from reparam.data.fashion_mnist import SYSTEM_DIR, find_fashion_mnist

torch.set_num_threads(1)


def _labels(ds) -> np.ndarray:
    return ds.tensors[1].numpy()


def _images(ds) -> torch.Tensor:
    return ds.tensors[0]


# ---------------------------------------------------------------- digits and the generic split machinery


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits", seed=0)


def test_digits_shapes_ranges_dtypes(digits):
    assert isinstance(digits, DatasetSplits)
    assert (digits.name, digits.num_classes, digits.in_channels, digits.image_size) == ("digits", 10, 1, (8, 8))
    assert digits.class_names == [str(i) for i in range(10)]
    sizes = [len(s) for s in (digits.train, digits.val, digits.test)]
    assert sum(sizes) == 1797
    assert sizes[2] == round(0.2 * 1797)
    assert sizes[1] == round(0.1 * (1797 - sizes[2]))
    for split in (digits.train, digits.val, digits.test):
        x, y = split.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.ndim == 4 and x.shape[1:] == (1, 8, 8)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    x = _images(digits.train)
    assert digits.mean == pytest.approx((float(x.mean()),), abs=1e-5)
    assert digits.std == pytest.approx((float(x.std(unbiased=False)),), abs=1e-5)


def test_splits_are_stratified_and_disjoint(digits):
    splits = {"train": digits.train, "val": digits.val, "test": digits.test}
    counts = {name: np.bincount(_labels(s), minlength=10) for name, s in splits.items()}
    total = sum(counts.values())
    for name, c in counts.items():
        expected = total * c.sum() / total.sum()
        assert np.all(np.abs(c - expected) <= 1.0), (name, c, expected)


def test_split_is_deterministic_in_seed(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.test, again.test), (digits.val, again.val)):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(_images(digits.test), _images(other.test))
    assert not torch.equal(_images(digits.val), _images(other.val))


def test_class_subset_relabels_in_given_order(digits):
    s = load_dataset("digits", classes=[7, "3"])
    assert s.num_classes == 2 and s.class_names == ["7", "3"]
    assert set(np.unique(_labels(s.train))) == {0, 1}
    assert sum(len(d) for d in (s.train, s.val, s.test)) == 179 + 183  # class sizes of 7 and 3
    assert np.bincount(np.concatenate([_labels(d) for d in (s.train, s.val, s.test)])).tolist() == [179, 183]
    with pytest.raises(ReparamError, match="unknown class 12"):
        load_dataset("digits", classes=[1, 12])
    with pytest.raises(ReparamError, match="classes=\\[\\]"):
        load_dataset("digits", classes=[])
    with pytest.raises(ReparamError, match="twice"):
        load_dataset("digits", classes=[1, 1])


def test_train_subset_count_fraction_and_errors(digits):
    n = len(digits.train)
    s = load_dataset("digits", train_subset=100)
    assert len(s.train) == 100 and len(s.val) == len(digits.val) and len(s.test) == len(digits.test)
    assert np.bincount(_labels(s.train), minlength=10).tolist() == [10] * 10  # stratified
    half = load_dataset("digits", train_subset=0.5)
    assert len(half.train) == round(0.5 * n)
    # mean/std describe the train split actually used
    assert s.mean[0] == pytest.approx(float(_images(s.train).mean()), abs=1e-5)
    for bad in (0, -3, n + 1, 1.5, "10", True):
        with pytest.raises(ReparamError, match="train_subset"):
            load_dataset("digits", train_subset=bad)


def test_resize_and_val_fraction(digits):
    s = load_dataset("digits", resize=(16, 12))
    assert s.image_size == (16, 12) and _images(s.test).shape[1:] == (1, 16, 12)
    assert 0.0 <= float(_images(s.train).min()) and float(_images(s.train).max()) <= 1.0
    assert load_dataset("digits", resize=4).image_size == (4, 4)
    with pytest.raises(ReparamError, match="resize"):
        load_dataset("digits", resize=(0, 4))
    for bad in (0, 1.0, -0.1, "0.1"):
        with pytest.raises(ReparamError, match="val_fraction"):
            load_dataset("digits", val_fraction=bad)


def test_unknown_dataset_and_option():
    with pytest.raises(ReparamError) as e:
        load_dataset("mnist-typo")
    msg = str(e.value)
    assert "unknown dataset 'mnist-typo'" in msg and "digits" in msg and "fashion-mnist" in msg
    with pytest.raises(ReparamError, match="unknown option 'sizes'.*allowed: classes, resize, size"):
        load_dataset("synthetic", sizes=8)


def test_register_dataset():
    def tiny(root, *, n: int = 40) -> RawDataset:
        x = np.arange(n * 4, dtype=np.uint8).reshape(n, 1, 2, 2)
        return RawDataset(x=x, y=np.arange(n) % 2, class_names=["a", "b"])

    register_dataset("tiny-test", tiny)
    try:
        s = load_dataset("tiny-test", n=60)
        # every image is unique (its first pixel is its index): the splits partition the data
        ids = [(_images(d)[:, 0, 0, 0] * 255 / 4).round().long().tolist() for d in (s.train, s.val, s.test)]
        assert sorted(sum(ids, [])) == list(range(60))
        assert _images(s.train).dtype == torch.float32 and float(_images(s.train).max()) <= 1.0
        with pytest.raises(ValueError):
            register_dataset("tiny-test", lambda root: tiny(root))
    finally:
        DATASETS.pop("tiny-test")


# ---------------------------------------------------------------- synthetic


def test_synthetic_options_and_determinism():
    s = load_dataset("synthetic", size=8, channels=3, num_classes=5, n_train=200, n_test=50, noise=0.1)
    assert (s.num_classes, s.in_channels, s.image_size) == (5, 3, (8, 8))
    assert len(s.train) + len(s.val) == 200 and len(s.test) == 50
    assert len(s.mean) == 3 and len(s.std) == 3
    x = _images(s.train)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # same data for another split seed: only the partition changes
    t = load_dataset("synthetic", seed=5, size=8, channels=3, num_classes=5, n_train=200, n_test=50, noise=0.1)
    assert torch.equal(_images(s.test), _images(t.test))
    # class-conditional: the nearest class mean classifies noisy test images well
    y = _labels(s.train)
    means = torch.stack([x[torch.from_numpy(y == c)].mean(0) for c in range(5)]).flatten(1)
    pred = torch.cdist(_images(s.test).flatten(1), means).argmin(1)
    assert (pred == s.test.tensors[1]).float().mean() > 0.9
    with pytest.raises(ReparamError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)


def test_limit_test_keeps_a_seeded_subset_of_the_test_split(digits):
    a, b = limit_test(digits, 50, seed=3), limit_test(digits, 50, seed=3)
    assert len(a.test) == 50 and torch.equal(_images(a.test), _images(b.test))
    assert a.train is digits.train and a.val is digits.val and len(digits.test) == 359   # original unchanged
    x, y = digits.test.tensors
    rows = {tuple(r.flatten().tolist()): int(c) for r, c in zip(x, y)}
    assert all(rows.get(tuple(r.flatten().tolist())) == int(c) for r, c in zip(*a.test.tensors))  # pairs kept
    assert not torch.equal(_images(a.test), _images(limit_test(digits, 50, seed=4).test))
    assert limit_test(digits, 10_000, seed=0) is digits
    with pytest.raises(ReparamError, match="test limit"):
        limit_test(digits, 0, seed=0)


# ---------------------------------------------------------------- fashion-mnist


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _write_fashion(folder: Path, gz: bool, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (n_train, 5, 6), dtype=np.uint8)
    xte = rng.integers(0, 256, (n_test, 5, 6), dtype=np.uint8)
    ytr, yte = np.arange(n_train) % 10, np.arange(n_test) % 10
    _write_idx(folder / "train-images-idx3-ubyte", xtr, gz)
    _write_idx(folder / "train-labels-idx1-ubyte", ytr, gz)
    _write_idx(folder / "t10k-images-idx3-ubyte", xte, gz)
    _write_idx(folder / "t10k-labels-idx1-ubyte", yte, gz)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_tiny_idx_files(tmp_path, gz):
    xtr, ytr, xte, yte = _write_fashion(tmp_path / "fashion-mnist", gz)
    for root in (tmp_path, tmp_path / "fashion-mnist"):  # parent folder or the dataset folder itself
        s = load_dataset("fashion-mnist", root=root)
        assert s.num_classes == 10 and s.class_names[0] == "T-shirt/top" and s.image_size == (5, 6)
        assert len(s.train) == 36 and len(s.val) == 4 and len(s.test) == 20
        assert torch.equal(_images(s.test), torch.from_numpy(xte[:, None]).float() / 255)
        assert torch.equal(s.test.tensors[1], torch.from_numpy(yte))


def test_fashion_mnist_env_var_missing_and_corrupt(tmp_path, monkeypatch):
    _write_fashion(tmp_path / "data" / "fashion-mnist", gz=True)
    monkeypatch.setenv("REPARAM_DATA", str(tmp_path / "data"))
    assert find_fashion_mnist() == tmp_path / "data" / "fashion-mnist"
    with pytest.raises(ReparamError) as e:
        load_dataset("fashion-mnist", root=tmp_path / "empty")
    msg = str(e.value)
    assert "\n" not in msg and "make data" in msg and "dataset-fashion-mnist" in msg and "REPARAM_DATA" in msg
    bad = tmp_path / "bad"
    _write_fashion(bad, gz=False)
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03 not idx")
    with pytest.raises(ReparamError, match="magic"):
        load_dataset("fashion-mnist", root=bad)
    short = tmp_path / "short"
    _write_fashion(short, gz=False)
    path = short / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ReparamError, match="size mismatch"):
        load_dataset("fashion-mnist", root=short)


@pytest.mark.skipif(
    not all(
        any((Path(SYSTEM_DIR) / (f + ext)).is_file() for ext in ("", ".gz"))
        for f in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    ),
    reason="Fashion-MNIST files not installed (make data)",
)
def test_fashion_mnist_real_files(monkeypatch):
    monkeypatch.delenv("REPARAM_DATA", raising=False)
    s = load_dataset("fashion-mnist", classes=[0, 9], train_subset=200)
    assert (len(s.train), len(s.val), len(s.test)) == (200, 1200, 2000)
    assert s.image_size == (28, 28) and s.class_names == ["T-shirt/top", "Ankle boot"]
    assert np.bincount(_labels(s.test)).tolist() == [1000, 1000]


# ---------------------------------------------------------------- cifar


def _cifar_dict(n: int, label_key: bytes, num_classes: int, offset: int) -> dict:
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, :1024] = 200  # red plane
    data[:, 1024:2048] = 100  # green plane
    data[:, 2048] = np.arange(n) + offset  # first blue pixel identifies the image
    return {b"data": data, label_key: [i % num_classes for i in range(n)], b"batch_label": b"batch"}


def test_cifar10_restricted_unpickler_reads_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_dict(10, b"labels", 10, 10 * i), f, protocol=2 if i % 2 else 4)
    with open(d / "test_batch", "wb") as f:
        pickle.dump(_cifar_dict(20, b"labels", 10, 0), f, protocol=5)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.2)
    assert (s.num_classes, s.in_channels, s.image_size) == (10, 3, (32, 32))
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 20)
    assert s.class_names == [f"c{i}" for i in range(10)]
    x = _images(s.test)
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], 200 / 255))
    assert torch.allclose(x[:, 1], torch.full_like(x[:, 1], 100 / 255))
    assert x[:, 2, 0, 0].mul(255).round().tolist() == list(range(20))


def test_cifar100_fine_and_coarse(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 200), ("test", 100)):
        batch = _cifar_dict(n, b"fine_labels", 100, 0)
        batch[b"coarse_labels"] = np.arange(n) % 20
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    s = load_dataset("cifar100", root=d)
    assert s.num_classes == 100 and len(s.test) == 100 and len(s.train) + len(s.val) == 200
    c = load_dataset("cifar100", root=d, coarse=True)
    assert c.num_classes == 20 and set(_labels(c.test)) == set(range(20))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_arbitrary_objects(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump(_cifar_dict(10, b"labels", 10, 0), f)
    marker = tmp_path / "pwned"
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}, f)
    with pytest.raises(ReparamError, match="refusing to unpickle .*system"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    (d / "data_batch_3").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ReparamError, match="not a CIFAR"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ReparamError, match="--data-root"):
        load_dataset("cifar10")
    with pytest.raises(ReparamError, match="not found"):
        load_dataset("cifar100", root=tmp_path)


# ---------------------------------------------------------------- images


def test_bundled_images():
    assert {"astronaut", "camera", "coffee", "chelsea", "rocket"} <= set(BUNDLED_IMAGES)
    cam = load_image("camera")
    assert cam.shape == (3, 512, 512) and cam.dtype == torch.float32
    assert torch.equal(cam[0], cam[2])  # greyscale replicated to RGB
    assert load_image("camera", mode=None).shape == (1, 512, 512)
    small = load_image("coffee", size=32, mode="L")  # 400x600: scale to cover 32x32, centre crop
    assert small.shape == (1, 32, 32) and 0.0 <= float(small.min()) and float(small.max()) <= 1.0
    assert load_image("astronaut", size=(24, 40)).shape == (3, 24, 40)
    with pytest.raises(ReparamError, match="unknown image 'astronot'; allowed: astronaut"):
        load_image("astronot")
    with pytest.raises(ReparamError, match="image mode"):
        load_image("camera", mode="CMYK")
    with pytest.raises(ReparamError, match="size"):
        load_image("camera", size=0)


def test_image_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = load_image(tmp_path / "rgb.png")
    assert x.shape == (3, 10, 12)
    assert torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert load_image(str(tmp_path / "rgb.png"), mode="L").shape == (1, 10, 12)

    grey = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert torch.equal(load_image(tmp_path / "grey.png", mode=None)[0], torch.from_numpy(grey).float() / 255)
    assert load_image(tmp_path / "grey.png").shape == (3, 9, 8)

    pal = Image.new("P", (8, 8))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1] * 32)
    pal.save(tmp_path / "pal.png")
    p = load_image(tmp_path / "pal.png", mode=None)
    assert p.shape == (3, 8, 8) and p[:, 0, 0].tolist() == [1, 0, 0] and p[:, 0, 1].tolist() == [0, 0, 1]

    deep = np.full((8, 8), 257 * 100, dtype=np.uint16)
    deep[0, 0] = 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    d = load_image(tmp_path / "deep.png", mode=None)
    assert d.shape == (1, 8, 8) and float(d[0, 0, 0]) == 1.0 and float(d[0, 1, 1]) == pytest.approx(100 / 255)

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black -> composited over white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert float(load_image(tmp_path / "rgba.png").min()) == 1.0

    Image.fromarray(rgb[:4, :7]).save(tmp_path / "tiny.png")
    with pytest.raises(ReparamError, match="7x4; at least 8x8"):
        load_image(tmp_path / "tiny.png")
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ReparamError, match="not a readable image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ReparamError, match="not found"):
        load_image(tmp_path / "missing.jpg")


# ---------------------------------------------------------------- augmentations


def test_augment_is_deterministic_and_keeps_shape():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    aug = make_augment("crop4+flip")
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert make_augment("none") is None and make_augment(None) is None and make_augment(" ") is None
    assert make_augment("shift2")(x, torch.Generator().manual_seed(0)).shape == x.shape
    for bad in ("crop", "crop0", "rotate", "flip+none", "crop4+"):
        with pytest.raises(ReparamError, match="allowed: none, cropN"):
            make_augment(bad)


def test_random_crop_is_a_zero_padded_crop():
    x = torch.rand(6, 2, 5, 5, generator=torch.Generator().manual_seed(0)) + 1  # no zeros in the image
    out = T.random_crop(x, 2, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        crops = [padded[i, :, r : r + 5, c : c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], crop) for crop in crops)
    shifted = T.random_shift(x, 2, torch.Generator().manual_seed(3))
    assert shifted.shape == x.shape and float(shifted.min()) >= 1  # edge-replicated, no zero fill


def test_flip_resize_normalize():
    x = torch.rand(4, 1, 4, 6)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(T.hflip(x, g, p=1.0), x.flip(-1)) and torch.equal(T.hflip(x, g, p=0.0), x)
    assert T.resize(x, 8).shape == (4, 1, 8, 8) and T.resize(x, (2, 3)).shape == (4, 1, 2, 3)
    n = T.normalize(x, (0.5,), (0.25,))
    assert torch.allclose(n, (x - 0.5) / 0.25)
