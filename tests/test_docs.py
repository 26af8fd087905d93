"""The documentation runs as written: README.md and docs/*.md.

Convention for fenced code blocks (any file, any author):

- ```` ```python run ```` / ```` ```bash run ````: the block is run as written (Python with this
  interpreter, shell with ``bash -e``), in an empty temporary folder, with ``ecdopt`` on PATH;
- ```` ```python run-smoke ```` / ```` ```bash run-smoke ````: the block is run at a smoke size.
  In shell blocks every ``ecdopt`` command gets its sub-command's smoke options appended
  (:data:`SMOKE_OPTIONS`); in any block, an HTML comment on the line just before the fence,
  ``<!-- smoke: OLD => NEW; OLD2 => NEW2 -->``, lists text replacements made first (``\\n`` in
  them is a newline).

A block without ``run`` is only read (synopses, outputs, recipes for a cluster). Besides,
every ``ecdopt`` command line in the docs (fenced blocks and inline code) must parse with the
real parser, so no documented command exits for a missing or unknown option.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

#: appended to each ``ecdopt`` command of a ``run-smoke`` shell block
SMOKE_OPTIONS: dict[str, list[str]] = {
    "demo": ["--smoke"],
    "synthetic": ["--smoke"],
    "pde": ["--smoke"],
    "train": ["--epochs", "1", "--search-epochs", "1", "--trials", "2", "--runs", "1"],
    "tune": ["--steps", "20", "--epochs", "1"],
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    flags: tuple[str, ...]
    code: str
    replacements: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        start, lang, flags = i, m.group(1), tuple(m.group(2).split())
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = lines[start - 1].strip() if start else ""
        reps: list[tuple[str, str]] = []
        smoke = re.fullmatch(r"<!--\s*smoke:(.*)-->", prev)
        if smoke:
            for part in smoke.group(1).split(";"):
                if "=>" in part:
                    old, new = (s.strip().replace("\\n", "\n") for s in part.split("=>", 1))
                    reps.append((old, new))
        out.append(Block(path, start + 1, lang, flags, "\n".join(lines[i + 1 : j]), tuple(reps)))
        i = j + 1
    return out


ALL_BLOCKS = [b for p in DOCS for b in _blocks(p)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if {"run", "run-smoke"} & set(b.flags)]


def _smoke_shell(code: str) -> str:
    """Each ``ecdopt`` command (continuation lines joined) with its smoke options appended,
    before a trailing ``&`` or comment."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", code).splitlines():
        words = line.split()
        if "ecdopt" in words[:3]:
            sub = words[words.index("ecdopt") + 1] if len(words) > words.index("ecdopt") + 1 else ""
            extra = " ".join(SMOKE_OPTIONS.get(sub, []))
            m = re.match(r"^(.*?)(\s+&)?(\s+#.*)?$", line)
            assert m is not None
            line = f"{m.group(1)} {extra}{m.group(2) or ''}{m.group(3) or ''}"
        out.append(line)
    return "\n".join(out)


def test_the_docs_have_blocks_marked_to_run() -> None:
    files = {b.path.name for b in RUN_BLOCKS}
    assert {"README.md", "synthetic.md", "tuning.md", "distributed.md", "vision.md"} <= files
    for b in ALL_BLOCKS:  # a misspelt marker would silently skip a block
        assert not set(b.flags) - {"run", "run-smoke"}, (b.id, b.flags)


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_marked_block_runs(block: Block, tmp_path: Path) -> None:
    code = block.code
    for old, new in block.replacements:
        assert old in code, f"{block.id}: smoke replacement {old!r} not found"
        code = code.replace(old, new)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    if block.lang == "python":
        argv = [sys.executable, "-c", code]
    elif block.lang in ("bash", "sh", "shell"):
        if "run-smoke" in block.flags:
            code = _smoke_shell(code)
        argv = ["bash", "-e", "-c", code]
    else:
        pytest.fail(f"{block.id}: cannot run a {block.lang!r} block")
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (
        f"{block.id}\n{code}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
    )


# --------------------------------------------------------------------------------------------
# every documented command parses


def _command_lines() -> list[tuple[str, str]]:
    """(where, command) for every ``ecdopt`` command in fenced blocks and inline code."""
    found = []
    for path in DOCS:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        for b in _blocks(path):
            if b.lang not in ("", "bash", "sh", "shell", "console"):
                continue  # ```text: a synopsis
            joined = re.sub(r"\\\n\s*", " ", b.code)
            for k, line in enumerate(joined.splitlines()):
                found.append((f"{rel}:{b.line + k + 1}", line))
        for m in re.finditer(r"(?<!`)`(ecdopt [^`]*--[^`]+)`", text):  # with an option
            found.append((f"{rel}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)))
    commands = []
    for where, line in found:
        line = re.sub(r"^\s*\$\s*", "", line)
        line = re.sub(r"(\s+#.*|\s+&)$", "", line).strip()
        line = re.sub(r"^(\w+=\S+\s+)+", "", line)  # VAR=value prefixes
        if not line.startswith("ecdopt "):
            continue
        if "[" in line or "..." in line or "…" in line or "--help" in line:
            continue  # a synopsis, an elided line
        commands.append((where, line.replace("\\|", "|")))
    return commands


def _alternatives(line: str) -> list[list[str]]:
    """``a|b`` in a word stands for two commands (the README table's shorthand)."""
    variants: list[list[str]] = [[]]
    for word in shlex.split(line)[1:]:
        options = word.split("|") if "|" in word else [word]
        variants = [[*v, o] for v in variants for o in options]
    return variants


def test_every_documented_command_parses() -> None:
    cases = [(where, argv) for where, line in _command_lines() for argv in _alternatives(line)]
    assert len(cases) > 20  # the extraction works
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from ecdopt.cli import _chosen, build_parser
        bad = []
        for where, argv in json.load(sys.stdin):
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    build_parser(_chosen(argv)).parse_args(argv)
            except SystemExit:
                bad.append([where, " ".join(argv), err.getvalue().strip()])
        json.dump(bad, sys.stdout)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps(cases),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    bad = json.loads(out.stdout)
    assert not bad, "\n".join(f"{w}: ecdopt {c}\n    {e}" for w, c, e in bad)


# --------------------------------------------------------------------------------------------
# the docs stand alone


def test_docs_cite_no_private_files_or_machine_paths() -> None:
    code = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    sources = [*DOCS, *code]  # help(BBI) included: the docstrings stand alone too
    pattern = re.compile(r"design\.md|\.\./shared|(?<![\w.~])/(?:tmp|work|root)/")
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_readme_starts_with_the_two_commands_and_shows_every_install() -> None:
    readme = (ROOT / "README.md").read_text()
    first = _blocks(ROOT / "README.md")[0].code.splitlines()
    assert [line.split()[:2] for line in first] == [["make", "demo"], ["make", "test"]]
    for text in (
        "pip install .",
        'pip install ".[experiments]"',
        'pip install "ecdopt[experiments] @ git+',
    ):
        assert text in readme, text
    for path in DOCS:  # ecdopt is not on a package index: no bare `pip install ecdopt[...]`
        assert not re.search(
            r"pip install ['\"]?ecdopt\[[^\]]*\]['\"]?(?!\s*@)", path.read_text()
        ), path
