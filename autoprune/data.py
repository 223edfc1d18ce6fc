"""Datasets held in memory as tensors, with deterministic train/validation/test splits.

The search trains and evaluates many small models on the same data, so each dataset is
parsed once into float32/int64 tensors and batched from memory (no ``DataLoader`` workers).

A dataset is named in ``data.name``: a loader of :data:`DATASETS` (``digits``,
``fashion_mnist``, ``mnist``, ``cifar10``, ``imagefolder``) or ``package.module:function``.
A loader returns the raw ``(train_x, train_y, test_x, test_y, num_classes)``; inputs are
float32 shaped ``(N, C, H, W)`` for images (scaled to [0, 1]) or ``(N, D)`` for flat data,
labels int64 in ``[0, num_classes)``. :func:`load_data` then carves a validation split off
the training data with the study seed (stratified, so every class keeps its share) and can
keep a seeded subset of the remaining training examples. The test split is never touched by
the seed: datasets without an official test split carve it with the fixed seed 0.

The search only ever looks at ``val`` (the ``accuracy`` metric); ``test`` is reserved for
``test_accuracy`` of exported or re-checked policies. Tensors in a :class:`DataBundle` are
meant to be read-only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from autoprune.errors import AutopruneError
from autoprune.models import accepted_keywords, import_callable
from autoprune.registry import Registry

RawData = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]
DatasetLoader = Callable[..., Any]

DATASETS: Registry[DatasetLoader] = Registry("dataset")

SPLITS = ("train", "val", "test")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
MNIST_ROOT = "~/.cache/autoprune/mnist"
CIFAR10_ROOT = "~/.cache/autoprune/cifar10"
TEST_CARVE_SEED = 0
_RAW_KEYS = ("train_x", "train_y", "test_x", "test_y", "num_classes")
_CACHE_SIZE = 4
_raw_cache: OrderedDict[str, RawData] = OrderedDict()


class BatchLoader:
    """Iterates ``(x, y)`` batches of one split from memory; ``len()`` is the batch count.

    Every example appears exactly once per pass; the last batch may be smaller. With
    ``shuffle`` each pass draws a new permutation from a generator seeded once, so epoch
    orders differ from each other but the whole sequence is fixed by the seed.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AutopruneError(f"data.batch_size: must be a positive integer, got {batch_size!r}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self._generator = torch.Generator().manual_seed(seed) if shuffle else None

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.y), self.batch_size
        if self._generator is None:
            for start in range(0, n, bs):
                yield self.x[start:start + bs], self.y[start:start + bs]
            return
        order = torch.randperm(n, generator=self._generator)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            yield self.x[idx], self.y[idx]


@dataclass(repr=False)
class DataBundle:
    """One dataset's three splits in memory, plus what a model builder needs to know.

    ``*_x`` are float32 ``(N, *input_shape)``, ``*_y`` int64 ``(N,)``. ``train_indices``
    and ``val_indices`` say which rows of the loader's full training set went where (for
    checking and reproducing splits).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    train_indices: torch.Tensor | None = field(default=None)
    val_indices: torch.Tensor | None = field(default=None)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def size(self, split: str) -> int:
        """Number of examples in ``split``."""
        return len(self.split(split)[1])

    @property
    def num_train(self) -> int:
        return self.size("train")

    @property
    def num_val(self) -> int:
        return self.size("val")

    @property
    def num_test(self) -> int:
        return self.size("test")

    def loader(
        self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> BatchLoader:
        """A re-iterable in-memory batch iterator over ``split`` (see :class:`BatchLoader`)."""
        x, y = self.split(split)
        return BatchLoader(x, y, batch_size, shuffle, seed)

    def calibration_batches(
        self, n_batches: int, batch_size: int, seed: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` seeded random batches from the TRAIN split (for data-aware scorers).

        Examples repeat only if more are asked for than the train split holds.
        """
        n = self.num_train
        need = n_batches * batch_size
        generator = torch.Generator().manual_seed(seed)
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(need / n))])
        return [
            (self.train_x[idx], self.train_y[idx])
            for idx in order[:need].split(batch_size)
        ]

    def fingerprint(self) -> str:
        """sha256 hex over the name, shapes, class count and the bytes of every split.

        Identical data gives an identical fingerprint across processes; any change to the
        splits (seed, ``val_fraction``, subset, the files) changes it. Keys the dense cache.
        """
        digest = hashlib.sha256()
        head = {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes}
        digest.update(json.dumps(head, sort_keys=True).encode())
        for split in SPLITS:
            for tensor in self.split(split):
                t = tensor.detach().cpu().contiguous()
                digest.update(f"{split}:{t.dtype}:{tuple(t.shape)};".encode())
                digest.update(t.numpy().data)
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (
            f"DataBundle(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, train={self.num_train}, val={self.num_val}, "
            f"test={self.num_test})"
        )


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..N-1`` into ``(kept, taken)`` with ``round(fraction * N)`` taken.

    Each class gives its share (largest-remainder rounding); which examples is drawn from
    ``numpy.random.default_rng(seed)``, stable across platforms and versions. Both index
    tensors are sorted int64.
    """
    y = labels.numpy()
    n = len(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = fraction * counts
    quota = np.floor(exact).astype(np.int64)
    extra = int(round(fraction * n)) - int(quota.sum())
    if extra > 0:
        quota[np.argsort(-(exact - quota), kind="stable")[:extra]] += 1
    taken = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    mask = np.zeros(n, dtype=bool)
    mask[np.concatenate(taken)] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Parse an IDX file (``.gz`` or plain) into a numpy array of its stored shape.

    The header is two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of
    dimensions, then each dimension as a big-endian uint32. ``magic`` (2051 for MNIST
    images, 2049 for labels) checks the first four bytes exactly. A wrong magic number, a
    truncated body or an unreadable file raises :class:`AutopruneError` naming the file.
    """
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise AutopruneError(f"data.root: cannot read IDX file {path}: {exc}") from exc
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found is None or raw[0] or raw[1] or raw[2] not in types or (magic is not None and found != magic):
        expected = f"{magic}" if magic is not None else "an IDX header"
        raise AutopruneError(f"data.root: {path} has magic number {found}, expected {expected}")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(types[raw[2]])
    count = math.prod(dims)
    if len(raw) != 4 + 4 * ndim + count * dtype.itemsize:
        raise AutopruneError(f"data.root: {path} is truncated or has trailing bytes for shape {dims}")
    return np.frombuffer(raw, dtype, count, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(dirs: Sequence[Path], stem: str) -> Path | None:
    """The first of ``<dir>/<stem>.gz`` or ``<dir>/<stem>`` that exists."""
    for d in dirs:
        for candidate in (d / f"{stem}.gz", d / stem):
            if candidate.is_file():
                return candidate
    return None


def _idx_files(root: Path, folder: str) -> dict[str, Path] | None:
    """Paths of the four MNIST-format files under ``root`` (or ``root/raw``,
    ``root/<folder>/raw`` as torchvision lays them out); None if any is missing."""
    dirs = [root, root / "raw", root / folder / "raw"]
    stems = {
        "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
    }
    found = {key: _find_file(dirs, stem) for key, stem in stems.items()}
    return None if any(p is None for p in found.values()) else found  # type: ignore[return-value]


def load_idx_dataset(files: Mapping[str, Path], num_classes: int = 10) -> RawData:
    """Read MNIST-format IDX images/labels into [0, 1] float32 ``(N, 1, H, W)`` and int64."""
    out: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_x"], magic=2051)
        labels = read_idx(files[f"{split}_y"], magic=2049)
        if len(images) != len(labels):
            raise AutopruneError(
                f"data.root: {files[f'{split}_x']} has {len(images)} images but "
                f"{files[f'{split}_y']} has {len(labels)} labels"
            )
        x = images.astype(np.float32)
        x /= 255.0
        out[f"{split}_x"] = torch.from_numpy(x).unsqueeze(1)
        out[f"{split}_y"] = torch.from_numpy(labels.astype(np.int64))
    return out["train_x"], out["train_y"], out["test_x"], out["test_y"], num_classes


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)


@DATASETS.register("digits")
def load_digits(root: str | None = None) -> RawData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), offline.

    Images are ``(N, 1, 8, 8)`` scaled from 0..16 to [0, 1]. There is no official test
    split, so a stratified 20% is carved with the fixed seed 0. ``root`` is ignored.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = stratified_split(y, 0.2, TEST_CARVE_SEED)
    return x[train], y[train], x[test], y[test], 10


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: str | None = None) -> RawData:
    """Fashion-MNIST from its four IDX ``.gz`` files: ``(N, 1, 28, 28)`` in [0, 1], 10 classes.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``); ``root/raw`` and ``root/FashionMNIST/raw`` are searched too.
    """
    path = Path(root or FASHION_MNIST_ROOT).expanduser()
    files = _idx_files(path, "FashionMNIST")
    if files is None:
        raise AutopruneError(
            f"data.root: Fashion-MNIST files not found in {path} (expected {_IDX_NAMES}); "
            "install them with 'apt-get install dataset-fashion-mnist' or set data.root"
        )
    return load_idx_dataset(files)


@DATASETS.register("mnist")
def load_mnist(root: str | None = None, *, download: bool = True) -> RawData:
    """MNIST from its four IDX files: ``(N, 1, 28, 28)`` in [0, 1], 10 classes.

    ``root`` defaults to ``~/.cache/autoprune/mnist``; ``root/raw`` and ``root/MNIST/raw``
    are searched too. Missing files are fetched with torchvision's downloader into
    ``root/MNIST/raw`` unless ``download: false``.
    """
    path = Path(root or MNIST_ROOT).expanduser()
    files = _idx_files(path, "MNIST")
    problem = ""
    if files is None and download:
        try:
            from torchvision.datasets import MNIST

            MNIST(str(path), train=True, download=True)
        except Exception as exc:  # offline, or a mirror problem
            problem = f"; download failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        files = _idx_files(path, "MNIST")
    if files is None:
        raise AutopruneError(
            f"data.root: MNIST files not found in {path}, {path / 'raw'} or {path / 'MNIST' / 'raw'} "
            f"(expected {_IDX_NAMES}){problem}; copy the four files there or set data.root"
        )
    return load_idx_dataset(files)


@DATASETS.register("cifar10")
def load_cifar10(root: str | None = None, *, download: bool = False) -> RawData:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10``: ``(N, 3, 32, 32)`` in [0, 1].

    ``root`` (default ``~/.cache/autoprune/cifar10``) must hold ``cifar-10-batches-py/``
    as extracted from ``cifar-10-python.tar.gz``; ``download: true`` fetches it.
    """
    from torchvision.datasets import CIFAR10

    path = Path(root or CIFAR10_ROOT).expanduser()
    try:
        train = CIFAR10(str(path), train=True, download=download)
        test = CIFAR10(str(path), train=False, download=download)
    except Exception as exc:  # not found, corrupted or download failure
        raise AutopruneError(
            f"data.root: CIFAR-10 not usable in {path} ({str(exc).strip()[:120]}); expected "
            "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) extracted from "
            "cifar-10-python.tar.gz there, or set data.args.download: true with internet access"
        ) from exc

    def convert(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    return (*convert(train), *convert(test), 10)


@DATASETS.register("imagefolder")
def load_imagefolder(
    root: str | None = None,
    *,
    image_size: int | Sequence[int] = 32,
    grayscale: bool = False,
    test_fraction: float = 0.2,
) -> RawData:
    """Images from class subfolders (``torchvision.datasets.ImageFolder``), held in memory.

    ``root`` holds ``train/`` and ``test/`` (each with one folder per class, the same class
    names in both) or just the class folders, from which a stratified ``test_fraction`` is
    carved with seed 0. Images are resized to ``image_size`` (an int or ``[h, w]``) and
    scaled to [0, 1]; RGB ``(N, 3, H, W)`` or ``grayscale`` ``(N, 1, H, W)``. Meant for small
    datasets: everything is decoded up front.
    """
    from torchvision import datasets, transforms

    if root is None:
        raise AutopruneError("data.root: imagefolder needs data.root, a folder of class folders")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    steps = [transforms.Resize(size)]
    if grayscale:
        steps.append(transforms.Grayscale(1))
    transform = transforms.Compose([*steps, transforms.ToTensor()])

    def read(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        try:
            ds = datasets.ImageFolder(str(folder), transform=transform)
        except (OSError, RuntimeError) as exc:
            raise AutopruneError(f"data.root: cannot read image folder {folder}: {exc}") from exc
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), ds.classes

    base = Path(root).expanduser()
    if (base / "train").is_dir() and (base / "test").is_dir():
        train_x, train_y, classes = read(base / "train")
        test_x, test_y, test_classes = read(base / "test")
        if test_classes != classes:
            raise AutopruneError(
                f"data.root: {base / 'test'} has classes {test_classes}, but {base / 'train'} has {classes}"
            )
        return train_x, train_y, test_x, test_y, len(classes)
    if not 0 < test_fraction < 1:
        raise AutopruneError(f"data.args.test_fraction: must be in (0, 1), got {test_fraction!r}")
    x, y, classes = read(base)
    train, test = stratified_split(y, test_fraction, TEST_CARVE_SEED)
    return x[train], y[train], x[test], y[test], len(classes)


def validate_raw(result: Any, source: str) -> RawData:
    """Check a loader's result and return it as float32/int64 tensors.

    Accepts the 5-tuple ``(train_x, train_y, test_x, test_y, num_classes)`` or a dict with
    those keys; arrays may be numpy. Inputs must be floating point, at least 2-D, finite,
    with the same per-sample shape in train and test; labels 1-D integers in
    ``[0, num_classes)``, one per input. Problems raise :class:`AutopruneError` naming
    ``source``.
    """
    if isinstance(result, Mapping):
        missing = [k for k in _RAW_KEYS if k not in result]
        if missing:
            raise AutopruneError(f"{source}: the returned dict lacks {', '.join(missing)}")
        result = tuple(result[k] for k in _RAW_KEYS)
    if not isinstance(result, (tuple, list)) or len(result) != 5:
        raise AutopruneError(
            f"{source}: must return (train_x, train_y, test_x, test_y, num_classes) or a dict "
            f"with those keys, got {type(result).__name__}"
        )
    *arrays, num_classes = result
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise AutopruneError(f"{source}: num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    tensors: list[torch.Tensor] = []
    for key, value in zip(_RAW_KEYS, arrays):
        try:
            tensors.append(torch.as_tensor(value))
        except Exception as exc:  # not array-like
            raise AutopruneError(f"{source}: {key} is not array-like ({type(value).__name__})") from exc
    train_x, train_y, test_x, test_y = tensors
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if not x.is_floating_point() or x.dim() < 2:
            raise AutopruneError(
                f"{source}: {split}_x must be floating point shaped (N, ...), got {x.dtype} {tuple(x.shape)}"
            )
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise AutopruneError(
                f"{source}: {split}_y must be 1-D integer labels, got {y.dtype} {tuple(y.shape)}"
            )
        if len(x) != len(y) or len(y) == 0:
            raise AutopruneError(f"{source}: {split}_x has {len(x)} rows and {split}_y {len(y)}; need equal, > 0")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise AutopruneError(
                f"{source}: {split}_y has labels {int(y.min())}..{int(y.max())}, outside 0..{num_classes - 1}"
            )
        if not bool(torch.isfinite(x).all()):
            raise AutopruneError(f"{source}: {split}_x contains NaN or infinite values")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise AutopruneError(
            f"{source}: train_x samples are {tuple(train_x.shape[1:])} but test_x samples are "
            f"{tuple(test_x.shape[1:])}"
        )
    return (train_x.float(), train_y.long(), test_x.float(), test_y.long(), num_classes)


def _load_raw(name: str, root: str | None, args: dict[str, Any], where: str) -> RawData:
    """The validated raw data of ``name``; built-ins are cached per process."""
    source = f"data.name: {name!r}"
    if name in DATASETS:
        loader, cache = DATASETS.get(name), True
    elif ":" in name:
        loader, cache = import_callable(name, key="data.name", where=where), False
    else:
        raise AutopruneError(f"{where}data.name: {DATASETS.unknown_message(name)}; or package.module:function")
    key = json.dumps([name, root, args], sort_keys=True, default=repr)
    if cache and key in _raw_cache:
        _raw_cache.move_to_end(key)
        return _raw_cache[key]
    if "root" in args:
        raise AutopruneError(f"{where}data.args.root: give the folder as data.root instead")
    call_kwargs = dict(args)
    if cache or accepted_keywords(loader, ["root"]):
        call_kwargs["root"] = root
    elif root is not None:
        raise AutopruneError(f"{where}data.root: {name!r} takes no 'root' argument; leave data.root out")
    try:
        result = loader(**call_kwargs)
    except AutopruneError as exc:
        raise AutopruneError(f"{where}{exc}") from exc
    except (TypeError, ValueError) as exc:
        raise AutopruneError(f"{where}data.args: {name!r}: {exc}") from exc
    try:
        raw = validate_raw(result, source)
    except AutopruneError as exc:
        raise AutopruneError(f"{where}{exc}") from exc
    if cache:
        _raw_cache[key] = raw
        while len(_raw_cache) > _CACHE_SIZE:
            _raw_cache.popitem(last=False)
    return raw


def clear_cache() -> None:
    """Forget the datasets parsed so far in this process."""
    _raw_cache.clear()


def load_data(
    name: str,
    *,
    root: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    args: Mapping[str, Any] | None = None,
    where: str = "",
) -> DataBundle:
    """Load dataset ``name`` and split it into train/val/test.

    The validation split is a stratified ``val_fraction`` of the loader's training data,
    drawn with ``seed`` (same seed, same split; another seed, another split). With
    ``train_subset`` only that many of the remaining training examples are kept, chosen with
    ``seed`` too. The test split is the loader's, untouched. ``root`` and ``args`` go to
    the loader. User functions ``package.module:function`` are called as
    ``function(root=root, **args)``, or with ``**args`` only when they take no ``root``.
    Problems raise :class:`AutopruneError` prefixed with ``where``.
    """
    if not isinstance(name, str) or not name:
        raise AutopruneError(f"{where}data.name: must be a non-empty string, got {name!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise AutopruneError(f"{where}data.val_fraction: must be a number in (0, 1), got {val_fraction!r}")
    if train_subset is not None and (isinstance(train_subset, bool) or not isinstance(train_subset, int)
                                     or train_subset < 1):
        raise AutopruneError(f"{where}data.train_subset: must be a positive integer, got {train_subset!r}")
    if args is not None and not isinstance(args, Mapping):
        raise AutopruneError(f"{where}data.args: must be a mapping, got {type(args).__name__}")
    raw = _load_raw(name, root, dict(args or {}), where)
    train_x, train_y, test_x, test_y, num_classes = raw

    n = len(train_y)
    n_val = round(val_fraction * n)
    if n_val < 1 or n_val >= n:
        raise AutopruneError(
            f"{where}data.val_fraction: {val_fraction} of {n} training examples leaves an empty split"
        )
    train_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    if train_subset is not None:
        if train_subset > len(train_idx):
            raise AutopruneError(
                f"{where}data.train_subset: {train_subset} exceeds the {len(train_idx)} training "
                "examples left after the validation split"
            )
        pick = np.random.default_rng([seed, 1]).choice(len(train_idx), train_subset, replace=False)
        train_idx = train_idx[torch.from_numpy(np.sort(pick))]
    return DataBundle(
        name=name,
        train_x=train_x[train_idx], train_y=train_y[train_idx],
        val_x=train_x[val_idx], val_y=train_y[val_idx],
        test_x=test_x.clone(), test_y=test_y.clone(),
        input_shape=tuple(int(v) for v in train_x.shape[1:]),
        num_classes=num_classes,
        train_indices=train_idx, val_indices=val_idx,
    )

