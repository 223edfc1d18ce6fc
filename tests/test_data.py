"""Tests for autoprune.data: real digits and Fashion-MNIST, IDX parsing, splits, loaders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.data import DATASETS, FASHION_MNIST_ROOT, load_data, read_idx
from autoprune.errors import AutopruneError

IDX_STEMS = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)


@pytest.fixture
def fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, optionally with a forced magic."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, n_train: int = 12, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)
    for stem, array in zip(IDX_STEMS, arrays):
        write_idx(root / f"{stem}.gz", array)


def test_registry_lists_loaders() -> None:
    assert DATASETS.names() == ["digits", "fashion_mnist", "mnist", "cifar10", "imagefolder"]


def test_digits_shapes_classes_and_range() -> None:
    b = load_data("digits")
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64
    assert (b.num_train, b.num_val, b.num_test) == (1294, 144, 359)
    assert b.num_train + b.num_val + b.num_test == 1797
    assert float(b.train_x.min()) == 0.0 and float(b.train_x.max()) == 1.0
    assert set(b.val_y.tolist()) == set(range(10))


def test_split_is_deterministic_per_seed_and_test_fixed() -> None:
    a, same, other = load_data("digits", seed=1), load_data("digits", seed=1), load_data("digits", seed=2)
    assert torch.equal(a.val_indices, same.val_indices) and torch.equal(a.train_x, same.train_x)
    assert not torch.equal(a.val_indices, other.val_indices)
    assert torch.equal(a.test_x, other.test_x) and torch.equal(a.test_y, other.test_y)


def test_splits_disjoint_and_sized() -> None:
    b = load_data("digits", val_fraction=0.25, seed=3)
    train, val = set(b.train_indices.tolist()), set(b.val_indices.tolist())
    assert not train & val and len(train | val) == 1438
    assert b.num_val == round(0.25 * 1438)
    rows = lambda x: {r.numpy().tobytes() for r in x}  # noqa: E731
    assert not rows(b.val_x) & rows(b.test_x) and not rows(b.train_x) & rows(b.test_x)


def test_train_subset_is_seeded_and_from_training_rows() -> None:
    full = load_data("digits", seed=0)
    sub = load_data("digits", seed=0, train_subset=100)
    assert sub.num_train == 100 and sub.num_val == full.num_val
    assert set(sub.train_indices.tolist()) <= set(full.train_indices.tolist())
    assert torch.equal(sub.train_indices, load_data("digits", seed=0, train_subset=100).train_indices)
    assert not torch.equal(sub.train_indices, load_data("digits", seed=1, train_subset=100).train_indices)
    with pytest.raises(AutopruneError, match=r"data.train_subset: 5000 exceeds"):
        load_data("digits", train_subset=5000)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.1"])
def test_bad_val_fraction(fraction: object) -> None:
    with pytest.raises(AutopruneError, match=r"^x.yaml: data.val_fraction"):
        load_data("digits", val_fraction=fraction, where="x.yaml: ")  # type: ignore[arg-type]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(AutopruneError, match=r"data.name: unknown dataset 'digit'.*valid: digits, fashion_mnist"):
        load_data("digit")


def test_bad_args_name_data_args() -> None:
    with pytest.raises(AutopruneError, match=r"^s: data.args: 'digits'"):
        load_data("digits", args={"size": 3}, where="s: ")


@pytest.mark.skipif(
    not Path(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package() -> None:
    b = load_data("fashion_mnist", val_fraction=0.1, train_subset=500)
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert (b.num_train, b.num_val, b.num_test) == (500, 6000, 10000)
    assert 0.0 <= float(b.test_x.min()) and float(b.test_x.max()) <= 1.0
    assert torch.bincount(b.test_y).tolist() == [1000] * 10


def test_idx_parser_reads_synthetic_files(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    images = read_idx(tmp_path / "train-images-idx3-ubyte.gz", magic=2051)
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    b = load_data("mnist", root=str(tmp_path), val_fraction=0.25, args={"download": False})
    assert b.input_shape == (1, 28, 28) and (b.num_train, b.num_val, b.num_test) == (9, 3, 4)
    expected = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)
    rows = torch.cat([b.train_indices, b.val_indices]).argsort()
    assert torch.equal(torch.cat([b.train_x, b.val_x])[rows], expected)


def test_idx_bad_magic_number(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4), magic=2051)
    with pytest.raises(AutopruneError, match=r"t10k-labels-idx1-ubyte.gz has magic number 2051, expected 2049"):
        load_data("fashion_mnist", root=str(tmp_path))


def test_idx_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(struct.pack(">IIII", 2051, 2, 28, 28) + b"\0" * 10)
    with pytest.raises(AutopruneError, match=r"truncated"):
        read_idx(path, magic=2051)


def test_missing_idx_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match=rf"MNIST files not found in {tmp_path}.*train-images-idx3-ubyte.gz"):
        load_data("mnist", root=str(tmp_path), args={"download": False})
    with pytest.raises(AutopruneError, match=r"apt-get install dataset-fashion-mnist"):
        load_data("fashion_mnist", root=str(tmp_path))


def test_missing_cifar10_root(tmp_path: Path) -> None:
    match = rf"^data.root: CIFAR-10 not usable in {tmp_path}.*cifar-10-batches-py"
    with pytest.raises(AutopruneError, match=match):
        load_data("cifar10", root=str(tmp_path))


def test_imagefolder_single_folder_carves_test(tmp_path: Path) -> None:
    from PIL import Image

    for c, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (20, 12), (c * 200, i * 20, 0)).save(tmp_path / cls / f"{i}.png")
    b = load_data("imagefolder", root=str(tmp_path), val_fraction=0.25, args={"image_size": 8})
    assert b.input_shape == (3, 8, 8) and b.num_classes == 2
    assert (b.num_train + b.num_val, b.num_test) == (16, 4)


def test_user_function_dict_without_root(fixtures_on_path: None) -> None:
    b = load_data("user_data:load", args={"n": 60}, val_fraction=0.2)
    assert b.input_shape == (5,) and b.num_classes == 3
    assert (b.num_train, b.num_val, b.num_test) == (48, 12, 10)
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64


def test_user_function_tuple_with_root(fixtures_on_path: None) -> None:
    b = load_data("user_data:load_tuple", root="/anywhere")
    assert b.input_shape == (1, 4, 4) and b.num_classes == 2 and b.num_test == 6


@pytest.mark.parametrize(
    ("name", "match"),
    [("user_data:bad_labels", r"train_y has labels 0..19, outside 0..1"),
     ("user_data:bad_dtype", r"train_x must be floating point"),
     ("user_data:bad_shape", r"must return \(train_x, train_y, test_x, test_y, num_classes\)"),
     ("user_data:nope", r"has no attribute 'nope'"),
     ("no_such_pkg_xyz.data:load", r"cannot import module 'no_such_pkg_xyz.data'")],
)
def test_malformed_user_dataset(fixtures_on_path: None, name: str, match: str) -> None:
    with pytest.raises(AutopruneError, match=rf"^w: data.name: .*{match}"):
        load_data(name, where="w: ")


def test_user_function_without_root_rejects_root(fixtures_on_path: None) -> None:
    with pytest.raises(AutopruneError, match=r"data.root: 'user_data:load' takes no 'root'"):
        load_data("user_data:load", root="/data")


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_covers_split_exactly_once(shuffle: bool) -> None:
    b = load_data("digits")
    loader = b.loader("val", 32, shuffle=shuffle, seed=5)
    batches = list(loader)
    assert len(batches) == len(loader) == 5 and [len(y) for _, y in batches] == [32, 32, 32, 32, 16]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    order = [b.val_x.flatten(1).tolist().index(row) for row in xs.flatten(1).tolist()]
    assert sorted(order) == list(range(b.num_val)) and torch.equal(ys, b.val_y[order])
    assert (order != sorted(order)) == shuffle


def test_shuffled_loader_is_seeded_and_varies_per_epoch() -> None:
    b = load_data("digits")
    first = [y.tolist() for _, y in b.loader("train", 100, shuffle=True, seed=1)]
    again = b.loader("train", 100, shuffle=True, seed=1)
    assert [y.tolist() for _, y in again] == first
    assert [y.tolist() for _, y in again] != first


def test_calibration_batches_come_from_train() -> None:
    b = load_data("digits")
    batches = b.calibration_batches(3, 16, seed=0)
    assert [x.shape for x, _ in batches] == [(16, 1, 8, 8)] * 3
    train_rows = {r.numpy().tobytes() for r in b.train_x}
    assert all(r.numpy().tobytes() in train_rows for x, _ in batches for r in x)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(batches, b.calibration_batches(3, 16, seed=0)))


def test_fingerprint_stable_and_sensitive() -> None:
    a = load_data("digits", seed=0)
    assert a.fingerprint() == load_data("digits", seed=0).fingerprint()
    assert a.fingerprint() != load_data("digits", seed=1).fingerprint()
    a.test_x = a.test_x.clone()
    a.test_x[0, 0, 0, 0] += 0.5
    assert a.fingerprint() != load_data("digits", seed=0).fingerprint()
