"""The ``ecdopt`` command.

Each experiment module registers its own sub-command through a function
``add_parser(subparsers)`` that adds a parser and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code). Modules are imported lazily so that
``ecdopt --help`` stays fast and ``import ecdopt`` never loads the experiment dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ecdopt._errors import CommandError

__all__ = ["CommandError", "build_parser", "main"]

# sub-command name -> module that provides ``add_parser(subparsers)``
_COMMANDS: dict[str, str] = {
    "demo": "ecdopt.experiments.demo",
    "synthetic": "ecdopt.experiments.synthetic",
    "pde": "ecdopt.experiments.pde_cli",
    "train": "ecdopt.experiments.vision_cli",
    "tune": "ecdopt.experiments.tune_cli",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="ecdopt",
        description="Energy-Conserving Descent (ECD) optimizers: experiments and tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a sub-command whose module is not there yet
            if exc.name == module_name:
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ecdopt`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"ecdopt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
