"""Byte-level text corpora available offline, split into train / validation / test.

- ``stdlib`` (default): the Python standard library's own source, the ``*.py`` files of the
  running interpreter's ``sysconfig.get_paths()["stdlib"]`` folder, read as bytes (UTF-8 text,
  one token per byte: 256 tokens). Left out: ``site-packages``/``dist-packages`` (not the
  standard library), the test suites (``test``/``tests`` folders), ``idlelib``, ``lib2to3``,
  ``turtledemo``, ``__pycache__`` and the machine-generated ``_sysconfigdata*`` files. The
  files are taken in sorted order of their relative POSIX paths; each goes whole into one
  split by the CRC-32 of that path: remainder 0 of 20 → validation, 1 → test, else train
  (about 90 / 5 / 5 %). The split of a file never depends on which other files exist, so a
  file is held out in every Python version that has it; the corpus itself is the running
  Python's (the results record its version, file count and SHA-256).
- ``--data FILE``: any file, read as bytes; the first 90 % is train, the next 5 % validation,
  the last 5 % test (contiguous, so no window straddles two splits).

Training batches are windows of ``context + 1`` bytes at uniformly drawn offsets of the train
split; held-out losses use fixed, evenly spaced windows of the validation and test splits.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "EXCLUDED_DIRS",
    "Corpus",
    "DataError",
    "corpus_from_file",
    "eval_windows",
    "load_corpus",
    "sample_batch",
    "split_of",
    "stdlib_files",
    "stdlib_root",
]

#: folders of the standard library left out of the corpus
EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "__pycache__",
    }
)
_SPLIT_MODULUS = 20


class DataError(ValueError):
    """A corpus that cannot be used (missing file, too small for the context)."""


@dataclass(frozen=True)
class Corpus:
    """The three splits as uint8 tensors of bytes, with where they came from."""

    train: Tensor
    val: Tensor
    test: Tensor
    source: str
    description: dict

    def check_context(self, context: int) -> None:
        """Raise :class:`DataError` unless every split holds a window of ``context + 1``."""
        for name in ("train", "val", "test"):
            size = len(getattr(self, name))
            if size < context + 1:
                raise DataError(
                    f"the {name} split of {self.source} has {size} bytes, fewer than the "
                    f"{context + 1} of one window (context {context} + 1); use more text"
                )


def stdlib_root() -> Path:
    """The folder of the running Python's standard library source."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[str]:
    """The corpus's files: relative POSIX paths of the standard library's ``*.py`` files, sorted,
    without :data:`EXCLUDED_DIRS` and ``_sysconfigdata*``."""
    root = stdlib_root() if root is None else root
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if EXCLUDED_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
            continue
        if path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def split_of(relative_path: str) -> str:
    """``"val"``, ``"test"`` or ``"train"``: the split a standard-library file goes to."""
    bucket = zlib.crc32(relative_path.encode("utf-8")) % _SPLIT_MODULUS
    return {0: "val", 1: "test"}.get(bucket, "train")


def _as_tensor(data: bytes) -> Tensor:
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def load_stdlib(root: Path | None = None) -> Corpus:
    """The standard-library corpus (module docstring)."""
    root = stdlib_root() if root is None else root
    files = stdlib_files(root)
    if not files:
        raise DataError(f"no Python source files found in the standard library folder {root}")
    parts: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
    digest = hashlib.sha256()
    for rel in files:
        text = (root / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + text)
        parts[split_of(rel)].append(text)
    joined = {name: b"".join(chunks) for name, chunks in parts.items()}
    return Corpus(
        train=_as_tensor(joined["train"]),
        val=_as_tensor(joined["val"]),
        test=_as_tensor(joined["test"]),
        source="stdlib",
        description={
            "kind": "stdlib",
            "python": sys.version.split()[0],
            "files": len(files),
            "files_per_split": {k: len(v) for k, v in parts.items()},
            "bytes": {k: len(v) for k, v in joined.items()},
            "sha256": digest.hexdigest(),
        },
    )


def corpus_from_file(path: str | Path) -> Corpus:
    """Any file as bytes: first 90 % train, next 5 % validation, last 5 % test."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"--data {path}: cannot read: {exc.strerror or exc}") from None
    n = len(data)
    a, b = (n * 90) // 100, (n * 95) // 100
    return Corpus(
        train=_as_tensor(data[:a]),
        val=_as_tensor(data[a:b]),
        test=_as_tensor(data[b:]),
        source=str(path),
        description={
            "kind": "file",
            "path": str(path),
            "bytes": {"train": a, "val": b - a, "test": n - b},
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )


def load_corpus(data: str | Path | None = None) -> Corpus:
    """``data`` None: the standard-library corpus; else the file ``data``."""
    return load_stdlib() if data is None else corpus_from_file(data)


def sample_batch(
    split: Tensor, batch_size: int, context: int, generator: torch.Generator
) -> Tensor:
    """``batch_size`` windows of ``context + 1`` bytes at uniform offsets (int64, CPU)."""
    starts = torch.randint(0, len(split) - context, (batch_size,), generator=generator)
    offsets = torch.arange(context + 1)
    return split[starts[:, None] + offsets].long()


def eval_windows(split: Tensor, count: int, context: int) -> Tensor:
    """``count`` windows of ``context + 1`` bytes at evenly spaced offsets (fewer if the split is
    short: never overlapping more than needed). Deterministic."""
    last = len(split) - context - 1
    count = max(1, min(count, last // (context + 1) + 1))
    starts = torch.linspace(0, last, count).round().long()
    return split[starts[:, None] + torch.arange(context + 1)].long()
