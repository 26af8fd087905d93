"""The one convention every ``ecdopt`` sub-command follows, and the helpers that implement it.

- ``--json FILE``: the results, strict JSON (no NaN or infinity: ``null``, and the top-level
  field ``non_finite`` names each such value and what it was), written atomically (a temporary
  file in the same folder, then a rename) and, for long commands, after every finished piece.
- ``--out DIR``: plots and other files; optional (no plots when absent).
- ``--seed S``: 0 ≤ S < 2**63.
- ``--progress`` / ``--no-progress`` (default: progress bars when stderr is a terminal) and
  ``-q`` / ``--quiet`` (no bars, no per-item lines).
- Numbers are checked by argparse types with ranges (:func:`int_type`, :func:`float_type`,
  :func:`hyperparameter_type`), so a bad value ends like any other usage error.
- Output paths are checked (folders created, writability tested) before any work starts
  (:func:`check_outputs`).
- A user mistake raises :class:`~ecdopt._errors.CommandError`: one line
  ``ecdopt CMD: error: ...``, exit status 2. Ctrl-C ends with exit status 130 and one line saying
  which files hold the results so far (every file written through :func:`write_json` or
  registered with :func:`note_saved`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ecdopt._errors import CommandError

__all__ = [
    "SEED_MAX",
    "ResultsFile",
    "add_common_options",
    "add_output_options",
    "add_progress_options",
    "add_seed_option",
    "check_device",
    "check_json_path",
    "check_out_dir",
    "check_outputs",
    "float_type",
    "hyperparameter_type",
    "int_type",
    "log_function",
    "note_saved",
    "progress_bar",
    "saved_summary",
    "seed_type",
    "show_progress",
    "strict_json",
    "write_json",
]

#: the largest seed accepted (seeds are 0 ≤ seed < 2**63)
SEED_MAX = 2**63 - 1


# --------------------------------------------------------------------------------------------
# argparse types with ranges
# --------------------------------------------------------------------------------------------


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    def num(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {num(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {num(high)}")
    return " and ".join(parts)


def int_type(
    low: int | None = None, high: int | None = None, *, allowed: str | None = None
) -> Callable[[str], int]:
    """An argparse ``type``: an integer with ``low <= value <= high`` (either bound optional);
    ``allowed`` replaces the range's wording in the error message."""
    if allowed is None:
        bounds = _range_text(low, high, False, False)
        allowed = "an integer" + (" " + bounds if bounds else "")

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def float_type(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the range (``*_open``: bound excluded)."""
    bounds = _range_text(low, high, low_open, high_open)
    allowed = "a finite number" + (" " + bounds if bounds else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def hyperparameter_type(name: str) -> Callable[[str], float | int]:
    """An argparse ``type`` for the optimizer hyperparameter ``name`` with its registry range."""
    from ecdopt.experiments.registry import HYPERPARAMETERS, check_hyperparameter

    spec = HYPERPARAMETERS[name]

    def parse(text: str) -> float | int:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.allowed()}, got {text!r}") from None
        try:
            return check_hyperparameter(name, value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.allowed()}, got {text}") from None

    parse.__name__ = spec.kind.__name__
    return parse


seed_type = int_type(0, SEED_MAX, allowed="an integer 0 <= S < 2**63")


# --------------------------------------------------------------------------------------------
# the common options
# --------------------------------------------------------------------------------------------


def add_output_options(
    parser: argparse.ArgumentParser,
    *,
    json_help: str = "write the results here (JSON)",
    out_help: str = "write plots (PNG) into this folder (default: no plots)",
) -> None:
    """``--json FILE`` and ``--out DIR`` (both optional)."""
    parser.add_argument("--json", type=_path("file"), default=None, metavar="FILE", help=json_help)
    parser.add_argument("--out", type=_path("folder"), default=None, metavar="DIR", help=out_help)


def _path(what: str) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"the {what} name is empty")
        return Path(text)

    parse.__name__ = what
    return parse


def add_seed_option(
    parser: argparse.ArgumentParser, *, default: int | None = 0, help: str = "random seed"
) -> None:
    """``--seed S`` with 0 ≤ S < 2**63."""
    parser.add_argument(
        "--seed", type=seed_type, default=default, metavar="S", help=f"{help} (0 <= S < 2**63)"
    )


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` and ``-q`` / ``--quiet``."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars and no per-item lines"
    )


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    seed_default: int | None = 0,
    seed_help: str = "random seed",
    json_help: str = "write the results here (JSON)",
    out_help: str = "write plots (PNG) into this folder (default: no plots)",
) -> None:
    """All of the convention's options: ``--json``, ``--out``, ``--seed``, progress."""
    add_output_options(parser, json_help=json_help, out_help=out_help)
    add_seed_option(parser, default=seed_default, help=seed_help)
    add_progress_options(parser)


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: never with ``--quiet``, else ``--progress`` or a tty."""
    if getattr(args, "quiet", False):
        return False
    chosen = getattr(args, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "step") -> Any:
    """A tqdm bar on stderr (a disabled one that still counts when ``enabled`` is false)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True
    )


def log_function(args: argparse.Namespace) -> Callable[[str], None]:
    """``print`` (flushed) unless ``--quiet``."""
    if getattr(args, "quiet", False):
        return lambda _line: None
    return lambda line: print(line, flush=True)


def check_device(text: str, option: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` when that device exists; ``CommandError`` for
    anything else (unknown names, ``meta``, or a device type the experiments do not run on)."""
    import torch

    if text == "auto":
        return text
    allowed = "auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CommandError(f"{option} {text!r} is not a device; use {allowed}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"{option} {text}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise CommandError(f"{option} {text}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise CommandError(
            f"{option} {text}: {device.type} devices are not supported; use {allowed}"
        )
    return text


# --------------------------------------------------------------------------------------------
# output paths
# --------------------------------------------------------------------------------------------


def _probe_folder(folder: Path, option: str, path: Path) -> None:
    """Create ``folder`` (with parents) and prove it writable by creating a file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ecdopt-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CommandError(f"{option} {path}: cannot write into {folder}: {reason}") from None


def check_json_path(path: Path | str | None, option: str = "--json") -> Path | None:
    """Check a results file before any work: a regular file (or a new one) in a writable
    folder, which is created. Returns the path (None stays None)."""
    if path is None:
        return None
    if str(path).strip() == "":
        raise CommandError(f"{option}: the file name is empty")
    path = Path(path).expanduser()
    if path.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise CommandError(f"{option} {path} is not a regular file; give a file name")
    _probe_folder(path.parent, option, path)
    return path


def check_out_dir(path: Path | str | None, option: str = "--out") -> Path | None:
    """Check an output folder before any work: created if missing, writable."""
    if path is None:
        return None
    if str(path).strip() == "":
        raise CommandError(f"{option}: the folder name is empty")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {path} exists and is not a folder")
    _probe_folder(path, option, path)
    return path


def check_outputs(args: argparse.Namespace) -> None:
    """Check (and normalise in place) ``args.json`` and ``args.out`` when present."""
    if hasattr(args, "json"):
        args.json = check_json_path(args.json)
    if hasattr(args, "out"):
        args.out = check_out_dir(args.out)


# --------------------------------------------------------------------------------------------
# strict, atomic, incremental JSON
# --------------------------------------------------------------------------------------------


def _finite_copy(obj: Any, where: str, found: dict[str, str]) -> Any:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        found[where or "."] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, Mapping):
        return {
            str(k): _finite_copy(v, f"{where}.{k}" if where else str(k), found)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_finite_copy(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return _finite_copy(obj.tolist(), where, found)
    raise TypeError(f"cannot write {type(obj).__name__} at {where or 'the top'} as JSON")


def strict_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` that is strict JSON: every NaN or ±infinity becomes ``null`` and is
    named in the top-level field ``non_finite`` (``{"path.to[0].value": "nan"}``)."""
    found: dict[str, str] = {}
    clean = _finite_copy(dict(doc), "", found)
    clean.pop("non_finite", None)
    if found:
        clean["non_finite"] = found
    return clean


_SAVED: list[str] = []


def note_saved(where: Path | str) -> None:
    """Record that ``where`` (a file, or a description such as a database) holds results, for
    the Ctrl-C message."""
    if str(where) not in _SAVED:
        _SAVED.append(str(where))


def saved_summary() -> str:
    """``results so far in A, B`` or ``nothing was saved`` (for the Ctrl-C line)."""
    if not _SAVED:
        return "nothing was saved"
    return "results so far in " + ", ".join(_SAVED)


def write_json(path: Path | str, doc: Mapping[str, Any], *, option: str = "--json") -> Path:
    """Write ``doc`` as strict JSON (:func:`strict_json`) to ``path`` atomically: readers see
    the old file or the new one, never half of one. ``CommandError`` names the file on failure."""
    path = Path(path)
    text = json.dumps(strict_json(doc), indent=1, allow_nan=False) + "\n"
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise CommandError(f"{option} {path}: cannot write: {exc.strerror or exc}") from None
    note_saved(path)
    return path


class ResultsFile:
    """The results of one command, rewritten (atomically) each time a piece is finished.

    ``path`` None: nothing is written (the document is still kept in :attr:`doc`).
    """

    def __init__(self, path: Path | str | None, doc: Mapping[str, Any] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.doc: dict[str, Any] = dict(doc or {})

    def update(self, **fields: Any) -> None:
        """Set top-level fields and write the file."""
        self.doc.update(fields)
        self.write()

    def write(self) -> None:
        """Write the current document (no-op without a path)."""
        if self.path is not None:
            write_json(self.path, self.doc)
