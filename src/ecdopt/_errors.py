"""Exceptions shared by the command-line tools (kept apart from ``cli`` so that running
``python -m ecdopt.cli`` and importing ``ecdopt.cli`` see the same class)."""


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""
