"""Every ```python block of docs/jax.md marked ``<!-- test: run -->`` runs, each in its own
namespace, in a fresh interpreter (so JAX's global settings start from their defaults)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "jax.md"
MARKED = re.compile(r"<!-- test: run -->\s*\n```python\n(.*?)\n```", re.DOTALL)

RUNNER = textwrap.dedent(
    """
    import json, sys
    for i, block in enumerate(json.load(sys.stdin)):
        print(f"--- block {i}", flush=True)
        exec(compile(block, f"docs/jax.md block {i}", "exec"), {"__name__": "__main__"})
    """
)


def test_marked_blocks_run() -> None:
    import json

    blocks = MARKED.findall(DOC.read_text())
    assert len(blocks) == 3  # quick start, Flax NNX digits, vmap ensemble
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(blocks),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "particles near c1" in done.stdout
