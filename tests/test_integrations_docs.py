"""Every Python block in docs/integrations.md is a complete script: each runs here, in a fresh
interpreter, against the real frameworks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_page_has_its_snippets():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index, tmp_path):
    env = dict(
        os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    first_line = BLOCKS[index].strip().splitlines()[0]
    assert done.returncode == 0, f"snippet {index} ({first_line}...):\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"snippet {index} printed nothing"
