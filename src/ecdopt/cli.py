"""The ``ecdopt`` command.

Each sub-command lives in a module with a function ``add_parser(subparsers)`` that adds its
parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an
exit code). Only the module of the sub-command being run is imported: ``ecdopt --help`` lists
the commands from the table below without loading any of them, and ``import ecdopt`` never
loads the experiment dependencies.

Every command follows one convention (:mod:`ecdopt.experiments.cli_common`): a user mistake
ends in one line ``ecdopt CMD: error: ...`` and exit status 2; Ctrl-C ends with exit status 130
and one line saying what was saved.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn

from ecdopt._errors import CommandError

__all__ = ["COMMANDS", "VARIANTS", "CommandError", "build_parser", "main"]

# sub-command name -> (module that provides ``add_parser(subparsers)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "ecdopt.experiments.demo",
        "reduced synthetic experiments (§4.1-4.3) with a paper-vs-measured table",
    ),
    "synthetic": (
        "ecdopt.experiments.synthetic.cli",
        "the paper's synthetic experiments (§4.1-4.3)",
    ),
    "pde": (
        "ecdopt.experiments.pde.cli",
        "PDE experiment of §4.4 / App. B (nonlinear Poisson on the unit ball)",
    ),
    "train": (
        "ecdopt.experiments.vision.cli",
        "image classification with ECD and baselines (paper §4.5); train gpt: a transformer",
    ),
    "tune": (
        "ecdopt.experiments.tune.cli",
        "a worker of a shared Optuna hyperparameter sweep (SQLite/PostgreSQL storage)",
    ),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: ``ecdopt CMD: error: ...``."""

    def error(self, message: str) -> NoReturn:
        """Print one line (with a pointer to ``--help``) and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# "COMMAND ARGUMENT" -> the module whose ``add_parser`` parses that command instead (a command
# whose first argument names an experiment with options of its own)
VARIANTS: dict[str, str] = {"train gpt": "ecdopt.experiments.gpt.cli"}


def _chosen(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (its first argument that is not an option), if any;
    ``"COMMAND ARGUMENT"`` when the argument right after it names a :data:`VARIANTS` entry."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            if arg not in COMMANDS:
                return None
            variant = " ".join(argv[i : i + 2])
            return variant if variant in VARIANTS else arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with the full parser of ``command`` (only its module is imported;
    a :data:`VARIANTS` key such as ``"train gpt"`` imports that module instead); the other
    sub-commands appear in ``--help`` only."""
    parser = _Parser(
        prog="ecdopt",
        description="Energy-Conserving Descent (ECD) optimizers: experiments and tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    chosen = (command or "").split(" ")[0]
    for name, (module_name, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(VARIANTS.get(command or "", module_name)).add_parser(subparsers)
        else:  # listed in --help, never run (the real parser is built when it is chosen)
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _interrupted(command: str) -> str:
    from ecdopt.experiments.cli_common import saved_summary

    return f"ecdopt {command}: interrupted; {saved_summary()}"


#: code that must not be left half-way by Ctrl-C: a database write interrupted inside its
#: transaction keeps SQLite's lock, and the trial's final write then waits for it (minutes)
_UNINTERRUPTIBLE = ("sqlalchemy", "optuna.storages", "sqlite3", "psycopg")


def _inside_database_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(_UNINTERRUPTIBLE):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT → KeyboardInterrupt, except inside a database call: there the signal is sent
    again 50 ms later, until the call has finished."""
    if _inside_database_call(frame):
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_outside_database_calls() -> Iterator[None]:
    """Within the block, Ctrl-C never lands inside a database call (see :func:`_interrupt`)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ecdopt`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen(argv)
    label = command or "(no command)"
    try:
        try:
            args = build_parser(command).parse_args(argv)
        except SystemExit as exc:  # --help (0) or a usage error (2, its line already printed)
            return exc.code if isinstance(exc.code, int) else 2
        label = " ".join(filter(None, [command, getattr(args, "pde_command", None)]))
        with interrupts_outside_database_calls():
            return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"ecdopt {label}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (``ecdopt ... | head``): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:  # the environment refused a file operation (disk full, permissions)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ecdopt {label}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(label), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
