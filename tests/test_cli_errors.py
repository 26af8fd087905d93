"""Every user mistake through the real ``ecdopt`` entry point: one line ``ecdopt CMD: error:
...``, exit status 2, no traceback, no work done and nothing lost; Ctrl-C: exit status 130 and
one line naming what was saved.

The argument mistakes run in ONE subprocess that calls the console script's function
(``ecdopt.cli:main``) once per command line (a fresh interpreter per case would spend most of
the suite importing torch); what needs a real process of its own (signals, locks, timings) runs
the ``ecdopt`` executable.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ecdopt.experiments.vision import CHECKPOINT_FORMAT
from ecdopt.experiments.vision import data as D

pytestmark = pytest.mark.xdist_group("cli")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
_SCRIPT = Path(sys.executable).with_name("ecdopt")
#: the console script when installed (as ``make install`` does), else the same function
ECDOPT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ecdopt.cli"]

_BATCH = textwrap.dedent(
    """
    import contextlib, io, json, os, sys
    from ecdopt.cli import main
    results = []
    for argv, env in json.load(sys.stdin):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except BaseException as exc:  # a crash: reported as such
                import traceback
                code, err = "crash", io.StringIO(traceback.format_exc())
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        results.append([code, out.getvalue(), err.getvalue()])
    json.dump(results, sys.stdout)
    """
)


def _batch(cases: list[tuple[list[str], dict]], cwd: Path) -> list[tuple[object, str, str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _BATCH],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout)]


def _ecdopt(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ECDOPT, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env={**ENV, **env},
    )  # fmt: skip


def _assert_one_line(code: object, stderr: str, command: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[0].startswith(f"ecdopt {command}: error: "), lines[0]
    assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------------------------
# fixtures: bad data and bad checkpoints on disk


def _write_mnist(folder: Path, **arrays: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=6).astype(np.uint8)
    base = {"train_images": images, "train_labels": labels, "test_images": images,
            "test_labels": labels}  # fmt: skip
    for key, stem in D.MNIST_FILES.items():
        D.write_idx(folder / (stem + ".gz"), arrays.get(key, base[key]))
    return folder


def _corrupt_gzip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    corrupt = _write_mnist(root / "corrupt")
    for name in ("train-images-idx3-ubyte.gz",):
        big = np.zeros((400, 28, 28), dtype=np.uint8)
        big[:, ::3] = 200
        D.write_idx(corrupt / name, big)
        _corrupt_gzip(corrupt / name)
    paths = {
        "corrupt": corrupt,
        "negative": _write_mnist(root / "neg", train_labels=np.array([0, -1, 2, 3, 4, 5], np.int8)),
        "float": _write_mnist(root / "flt", test_labels=np.array([0, 3.7, 2, 3, 4, 5], ">f4")),
        "tiny": _write_mnist(root / "tiny", train_images=np.zeros((6, 5, 5), np.uint8)),
        "empty": _write_mnist(
            root / "empty",
            test_images=np.zeros((0, 28, 28), np.uint8),
            test_labels=np.zeros(0, np.uint8),
        ),
        "file": root / "a-file",
        "ckpt": root / "ck",
    }
    paths["file"].write_text("x")
    # checkpoints beside --json ck/r.json: run 0's file is r-run0.pt
    paths["ckpt"].mkdir()
    (paths["ckpt"] / "garbage-run0.pt").write_bytes(b"\x80\x04garbage that is no checkpoint")
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1}, paths["ckpt"] / "tagged-run0.pt")
    return paths


# --------------------------------------------------------------------------------------------
# argument mistakes (one subprocess for all of them)

_TRAIN = ["train", "digits", "--optimizer"]
_PDE = ["pde", "train", "--smoke"]
_TUNE = ["tune", "ackley", "--optimizer", "sgdm", "--study", "s", "--heartbeat", "0"]


def _mistakes(p: dict[str, Path], tmp: Path) -> list[tuple[list[str], dict, str, str]]:
    """(argv, environment, command label, fragment of the one-line error)."""
    db = f"sqlite:///{tmp / 'ro.db'}"
    ro = f"sqlite:///file:{tmp / 'ro.db'}?mode=ro&uri=true"
    return [
        # train: values the optimizers reject
        ([*_TRAIN, "bbi", "--lr", "-1"], {}, "train", "--lr: expected a finite number > 0"),
        ([*_TRAIN, "bbi", "--lr", "nan"], {}, "train", "--lr: expected a finite number > 0"),
        ([*_TRAIN, "bbi", "--extra-energy", "-1"], {}, "train", "--extra-energy: expected"),
        (
            [*_TRAIN, "bbi", "--bounce-period", "0"],
            {},
            "train",
            "--bounce-period: expected an integer >= 1",
        ),
        (
            [*_TRAIN, "bbi", "--n-bounces", "-1"],
            {},
            "train",
            "--n-bounces: expected an integer >= 0",
        ),
        ([*_TRAIN, "sgdm", "--lr", "-1"], {}, "train", "--lr: expected"),
        (
            [*_TRAIN, "sgdm", "--momentum", "-0.5"],
            {},
            "train",
            "--momentum: expected a finite number >= 0 and < 1",
        ),
        (
            [*_TRAIN, "sgdm", "--protocol", "grid", "--grid", "lr=nan"],
            {},
            "train",
            "--grid: expected a finite number > 0",
        ),
        (
            [*_TRAIN, "bbi", "--protocol", "grid", "--grid", "bounce_period=0.5"],
            {},
            "train",
            "--grid: expected an integer >= 1, got 0.5",
        ),
        (
            [*_TRAIN, "bbi", "--protocol", "grid", "--grid", "bounce_period=1.5"],
            {},
            "train",
            "got 1.5",
        ),
        ([*_TRAIN, "bbi", "--grid", "speed=1"], {}, "train", "unknown hyperparameter 'speed'"),
        (
            [*_TRAIN, "sgdm", "--protocol", "optuna", "--trials", "0"],
            {},
            "train",
            "--trials: expected an integer >= 1",
        ),
        ([*_TRAIN, "sgdm", "--epochs", "0"], {}, "train", "--epochs: expected an integer >= 1"),
        (
            [*_TRAIN, "sgdm", "--seed", "-1"],
            {},
            "train",
            "--seed: expected an integer 0 <= S < 2**63",
        ),
        ([*_TRAIN, "sgdm", "--seed", str(2**63)], {}, "train", "--seed"),
        ([*_TRAIN, "sgdm", "--device", "meta"], {}, "train", "meta devices are not supported"),
        ([*_TRAIN, "sgdm", "--device", "mps"], {}, "train", "mps devices are not supported"),
        ([*_TRAIN, "sgdm", "--device", "xpu"], {}, "train", "xpu devices are not supported"),
        ([*_TRAIN, "sgdm", "--device", "foo"], {}, "train", "'foo' is not a device"),
        (
            [*_TRAIN, "sgdm", "--threads", "100000"],
            {},
            "train",
            "--threads: expected an integer >= 1",
        ),
        # train: output paths, checked before the data is even loaded
        ([*_TRAIN, "sgdm", "--json", str(p["file"] / "r.json")], {}, "train", "cannot write into"),
        (
            [*_TRAIN, "sgdm", "--json", "/dev/full"],
            {},
            "train",
            "--json /dev/full is not a regular file",
        ),
        ([*_TRAIN, "sgdm", "--json", str(tmp)], {}, "train", "is a folder"),
        ([*_TRAIN, "sgdm", "--json", ""], {}, "train", "--json: the file name is empty"),
        ([*_TRAIN, "sgdm", "--out", str(p["file"])], {}, "train", "is not a folder"),
        # train: checkpoints that cannot be resumed
        (
            [
                *_TRAIN,
                "sgdm",
                "--resume",
                "--json",
                str(p["ckpt"] / "garbage.json"),
                "--epochs",
                "1",
            ],
            {},
            "train",
            "not a checkpoint that can be read safely",
        ),
        (
            [
                *_TRAIN,
                "sgdm",
                "--resume",
                "--json",
                str(p["ckpt"] / "tagged.json"),
                "--epochs",
                "1",
            ],
            {},
            "train",
            "incomplete checkpoint",
        ),
        # train: bad MNIST data
        (
            ["train", "mnist", "--optimizer", "sgdm", "--data", str(p["corrupt"])],
            {},
            "train",
            "cannot read",
        ),
        (
            ["train", "mnist", "--optimizer", "sgdm", "--data", str(p["negative"])],
            {},
            "train",
            "labels outside 0-9",
        ),
        (
            ["train", "mnist", "--optimizer", "sgdm", "--data", str(p["float"])],
            {},
            "train",
            "non-integer labels",
        ),
        (
            ["train", "mnist", "--optimizer", "sgdm", "--data", str(p["tiny"])],
            {},
            "train",
            "5×5 images",
        ),
        (
            ["train", "mnist", "--optimizer", "sgdm", "--data", str(p["empty"])],
            {},
            "train",
            "holds no images",
        ),
        # pde
        ([*_PDE, "--extra-energy", "-1"], {}, "pde train", "--extra-energy: expected"),
        ([*_PDE, "--bounce-period", "0"], {}, "pde train", "--bounce-period: expected"),
        ([*_PDE, "--n-bounces", "-2"], {}, "pde train", "--n-bounces: expected"),
        ([*_PDE, "--bounce-patience", "0"], {}, "pde train", "--bounce-patience: expected"),
        ([*_PDE, "--device", "foo"], {}, "pde train", "'foo' is not a device"),
        ([*_PDE, "--device", "meta"], {}, "pde train", "meta devices are not supported"),
        ([*_PDE, "--shift", "1e300"], {}, "pde train", "--shift: expected a finite number >= -100"),
        (["pde", "solutions", "--shift", "1e300"], {}, "pde solutions", "--shift: expected"),
        (
            [*_PDE, "--tolerance", "nan"],
            {},
            "pde train",
            "--tolerance: expected a finite number > 0",
        ),
        ([*_PDE, "--seed", "-3"], {}, "pde train", "--seed"),
        ([*_PDE, "--json", str(tmp)], {}, "pde train", "is a folder"),
        ([*_PDE, "--json", ""], {}, "pde train", "empty"),
        ([*_PDE, "--out", str(p["file"])], {}, "pde train", "is not a folder"),
        (
            ["pde", "solutions", "--json", str(p["file"] / "x.json")],
            {},
            "pde solutions",
            "cannot write into",
        ),
        (
            [*_PDE, "--optimizer", "sgdm", "--extra-energy", "1"],
            {},
            "pde train",
            "applies to bbi/ecdsep only",
        ),
        # synthetic
        (
            ["synthetic", "ackley", "--ackley-b", "nan"],
            {},
            "synthetic",
            "--ackley-b: expected a finite number > 0",
        ),
        (
            ["synthetic", "occupation", "--particles", "-3"],
            {},
            "synthetic",
            "--particles: expected an integer >= 1",
        ),
        (
            ["synthetic", "occupation", "--time", "0"],
            {},
            "synthetic",
            "--time: expected a finite number > 0",
        ),
        (
            ["synthetic", "zakharov", "--dim", "100000000000"],
            {},
            "synthetic",
            "--dim: expected an integer >= 1 and <= 100000",
        ),
        (["synthetic", "zakharov", "--dim", "1e11"], {}, "synthetic", "--dim: expected an integer"),
        (["synthetic", "ackley", "--seed", "-1"], {}, "synthetic", "--seed"),
        (["synthetic", "ackley", "--seed", str(2**64)], {}, "synthetic", "--seed"),
        (
            ["synthetic", "ackley", "--starts", "100000", "--repeats", "1000"],
            {},
            "synthetic",
            "over the limit",
        ),
        (["synthetic", "ackley", "--json", str(tmp)], {}, "synthetic", "is a folder"),
        (["synthetic", "ackley", "--json", ""], {}, "synthetic", "empty"),
        (["synthetic", "ackley", "--out", str(p["file"])], {}, "synthetic", "is not a folder"),
        (["demo", "--out", str(p["file"])], {}, "demo", "is not a folder"),
        # tune
        ([*_TUNE, "--seed", "-1"], {}, "tune", "--seed"),
        ([*_TUNE, "--worker-index", "-5"], {}, "tune", "--worker-index: expected an integer >= 0"),
        ([*_TUNE, "--heartbeat", "inf"], {}, "tune", "--heartbeat: expected a finite number"),
        ([*_TUNE, "--grace", "nan"], {}, "tune", "--grace: expected a finite number > 0"),
        ([*_TUNE, "--dim", "-3"], {}, "tune", "--dim: expected an integer >= 1"),
        (
            [*_TUNE, "--dim", "100000000000"],
            {},
            "tune",
            "--dim: expected an integer >= 1 and <= 100000",
        ),
        ([*_TUNE, "--dim", "0"], {}, "tune", "--dim: expected an integer >= 1"),
        ([*_TUNE, "--steps", "0"], {}, "tune", "--steps: expected an integer >= 1"),
        ([*_TUNE, "--steps", "-5"], {}, "tune", "--steps: expected an integer >= 1"),
        (
            ["tune", "digits", "--optimizer", "sgdm", "--study", "d", "--epochs", "0"],
            {},
            "tune",
            "--epochs: expected an integer >= 1",
        ),
        ([*_TUNE, "--total-trials", "-1"], {}, "tune", "--total-trials: expected an integer >= 1"),
        (
            [*_TUNE, "--storage", db],
            {"ECDOPT_THREADS": "abc"},
            "tune",
            "$ECDOPT_THREADS: expected an integer >= 1",
        ),
        (
            [*_TUNE, "--storage", db],
            {"ECDOPT_THREADS": "0"},
            "tune",
            "$ECDOPT_THREADS: expected an integer >= 1",
        ),
        (
            [*_TUNE, "--storage", db],
            {"SLURM_PROCID": "abc"},
            "tune",
            "$SLURM_PROCID: expected an integer >= 0",
        ),
        ([*_TUNE, "--json", str(tmp)], {}, "tune", "is a folder"),
        (
            [*_TUNE, "--storage", ro, "--steps", "5", "--trials", "1"],
            {},
            "tune",
            "attempt to write a readonly database",
        ),
    ]


def test_every_mistake_is_one_line_and_exit_2(bad_inputs: dict[str, Path], tmp_path: Path):
    setup = ([*_TUNE, "--storage", f"sqlite:///{tmp_path / 'ro.db'}", "--steps", "5",
              "--trials", "1"], {})  # fmt: skip
    mistakes = _mistakes(bad_inputs, tmp_path)
    results = _batch([setup, *[(argv, env) for argv, env, _, _ in mistakes]], cwd=tmp_path)
    assert results[0][0] == 0, results[0]
    failures = []
    for (argv, _env, command, fragment), (code, _out, err) in zip(
        mistakes, results[1:], strict=True
    ):
        try:
            _assert_one_line(code, err, command, fragment)
        except AssertionError as exc:
            failures.append(f"{' '.join(argv)}\n  -> {exc}")
    assert not failures, "\n".join(failures)
    # nothing was written where a mistake was found: no stray result files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.db"]


def test_help_of_every_command_shows_one_convention(tmp_path: Path):
    commands = [["demo"], ["synthetic"], ["pde", "train"], ["pde", "solutions"], ["train"],
                ["tune"]]  # fmt: skip
    results = _batch([([*c, "--help"], {}) for c in commands], cwd=tmp_path)
    for command, (code, out, _err) in zip(commands, results, strict=True):
        assert code == 0, command
        for flag in ("--json FILE", "--out DIR"):
            assert flag in out, (command, flag)
        if command != ["pde", "solutions"]:  # solutions has no randomness and no long work
            assert "--progress" in out and "--quiet" in out and "--seed S" in out, command


# --------------------------------------------------------------------------------------------
# results are strict JSON and nothing finished is lost


def test_non_finite_results_are_null_with_the_reason(tmp_path: Path):
    # tuned GDM on Zakharov with a tiny budget diverges: its final loss is NaN
    args = ["synthetic", "zakharov", "--trials", "4", "--batch", "4", "--tune-steps", "50",
            "--steps", "200", "--methods", "sgdm", "--json", "z.json", "-q"]  # fmt: skip
    out = _ecdopt(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "z.json").read_text(), parse_constant=pytest.fail)
    assert doc["results"]["sgdm"]["final_loss"] is None
    assert doc["non_finite"] == {"results.sgdm.final_loss": "nan"}
    assert doc["complete"] is True
    json.loads(out.stdout, parse_constant=pytest.fail)  # stdout: the same, strict


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"exited early: {proc.returncode} {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("timed out")


def _json_has(path: Path, check) -> bool:
    try:
        return bool(check(json.loads(path.read_text())))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _interrupt(args: list[str], cwd: Path, ready) -> tuple[int, str]:
    proc = subprocess.Popen(
        [*ECDOPT, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _assert_interrupted(code: int, err: str, command: str, saved: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert lines[-1].startswith(f"ecdopt {command}: interrupted; "), lines[-1]
    assert saved in lines[-1], lines[-1]


def test_ctrl_c_in_synthetic_keeps_the_finished_direction(tmp_path: Path):
    r = tmp_path / "b.json"
    args = ["synthetic", "basins", "--runs", "20", "--steps", "400000",
            "--json", str(r), "-q"]  # fmt: skip
    code, err = _interrupt(args, tmp_path, lambda: _json_has(r, lambda d: d["directions_done"]))
    _assert_interrupted(code, err, "synthetic", f"results so far in {r}")
    doc = json.loads(r.read_text())
    assert doc["complete"] is False and doc["directions_done"] == ["uniform"]
    counts = doc["by_direction"]["uniform"]["counts"]
    assert sum(counts.values()) == 20


def test_ctrl_c_in_pde_train_keeps_the_finished_runs(tmp_path: Path):
    r = tmp_path / "p.json"
    args = ["pde", "train", "--smoke", "--runs", "400", "--optimizer", "adam",
            "--json", str(r), "-q"]  # fmt: skip
    code, err = _interrupt(args, tmp_path, lambda: _json_has(r, lambda d: d["runs_done"] >= 2))
    _assert_interrupted(code, err, "pde train", str(r))
    doc = json.loads(r.read_text())
    assert doc["complete"] is False and doc["runs_done"] == len(doc["runs"]) >= 2
    assert doc["runs_total"] == 400
    assert all("off_shell_steps" in run for run in doc["runs"])


def test_ctrl_c_in_pde_train_with_jobs_stops_the_workers(tmp_path: Path):
    r = tmp_path / "p.json"
    args = ["pde", "train", "--smoke", "--runs", "400", "--optimizer", "adam", "--jobs", "2",
            "--json", str(r), "-q"]  # fmt: skip
    code, err = _interrupt(args, tmp_path, lambda: _json_has(r, lambda d: d["runs_done"] >= 1))
    _assert_interrupted(code, err, "pde train", str(r))


def test_ctrl_c_in_demo_keeps_each_finished_stage(tmp_path: Path):
    out, combined = tmp_path / "res", tmp_path / "all.json"
    ackley = out / "synthetic_ackley.json"
    code, err = _interrupt(
        ["demo", "--smoke", "--out", str(out), "--json", str(combined), "-q"],
        tmp_path,
        lambda: _json_has(combined, lambda d: "ackley" in d["stages"]),
    )
    if code == 0:  # the smoke demo may finish before the signal arrives: then all is there
        assert (out / "synthetic_basins.json").exists()
        return
    _assert_interrupted(code, err, "demo", str(ackley))
    assert json.loads(ackley.read_text())["complete"] is True
    assert json.loads(combined.read_text())["complete"] is False


def test_demo_writes_each_stage_as_it_finishes_and_shows_inner_progress(tmp_path: Path):
    out = _ecdopt("demo", "--smoke", "--out", "res", "--progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    stages = ("ackley", "zakharov", "basins", "occupation")
    for name in stages:
        doc = json.loads((tmp_path / "res" / f"synthetic_{name}.json").read_text())
        assert doc["complete"] is True and "seconds" in doc
    # one bar per stage counting its steps (not one step per stage for the whole demo)
    for k, name in enumerate(stages, start=1):
        assert f"demo {k}/{len(stages)} {name}" in out.stderr
    assert "/640" in out.stderr  # ackley's smoke stage: 2 methods × (4 × 30 + 200) steps
    assert "4.1 Ackley" in out.stdout


def test_ctrl_c_in_tune_names_the_study(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    args = ["tune", "rosenbrock", "--optimizer", "bbi", "--steps", "200000", "--trials", "3",
            "--storage", url, "--study", "c", "--heartbeat", "0", "--seed", "1"]  # fmt: skip

    def running() -> bool:
        try:
            with sqlite3.connect(tmp_path / "t.db") as con:
                return bool(con.execute("SELECT count(*) FROM trials").fetchone()[0])
        except sqlite3.Error:
            return False

    code, err = _interrupt(args, tmp_path, running)
    _assert_interrupted(code, err, "tune", "study 'c' in sqlite:///")


def test_train_grid_interrupted_then_resumed_does_not_repeat_points(tmp_path: Path):
    base = ["train", "digits", "--optimizer", "sgdm", "--protocol", "grid", "--grid",
            "lr=0.001,0.01,0.05,0.1", "--search-epochs", "1", "--epochs", "1", "--json",
            "g.json", "--no-plots"]  # fmt: skip
    search = tmp_path / "g-search.json"
    code, err = _interrupt(
        base, tmp_path, lambda: _json_has(search, lambda d: len(d["trials"]) >= 2)
    )
    _assert_interrupted(code, err, "train", "g-search.json")
    before = json.loads(search.read_text())
    assert before["complete"] is False and 2 <= len(before["trials"]) < 4
    out = _ecdopt(*base, "--resume", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    after = json.loads(search.read_text())
    assert after["complete"] is True
    assert sorted(t["point"] for t in after["trials"]) == [0, 1, 2, 3]
    assert after["trials"][: len(before["trials"])] == before["trials"]  # kept, not redone
    done = len(before["trials"])
    assert f"{done} of 4 points done before" in out.stdout
    evaluated = [line for line in out.stdout.splitlines() if line.startswith("grid ")]
    assert len(evaluated) == 4 - done, evaluated  # only the missing points
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["complete"] is True and result["search"]["best"]["lr"] in (0.001, 0.01, 0.05, 0.1)


def test_train_optuna_search_resumes_where_it_stopped(tmp_path: Path):
    base = ["train", "digits", "--optimizer", "adam", "--protocol", "optuna", "--trials", "3",
            "--search-epochs", "1", "--epochs", "1", "--json", "o.json", "--no-plots",
            "--seed", "4"]  # fmt: skip
    search = tmp_path / "o-search.json"
    code, err = _interrupt(
        base, tmp_path, lambda: _json_has(search, lambda d: len(d["trials"]) >= 1)
    )
    _assert_interrupted(code, err, "train", "o-search.json")
    before = json.loads(search.read_text())["trials"]
    out = _ecdopt(*base, "--resume", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    after = json.loads(search.read_text())
    assert after["complete"] is True and len(after["trials"]) == 3
    assert after["trials"][: len(before)] == before
    assert out.stdout.count("trial ") == 3 - len(before)


def test_train_without_json_or_out_writes_nothing_and_resume_needs_a_place(tmp_path: Path):
    out = _ecdopt("train", "digits", "--optimizer", "sgdm", "--epochs", "1", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == []
    out = _ecdopt("train", "digits", "--optimizer", "sgdm", "--epochs", "1", "--resume",
                  cwd=tmp_path)  # fmt: skip
    _assert_one_line(out.returncode, out.stderr, "train", "--resume needs --json FILE or --out")


def test_restarted_seeded_tune_sweep_draws_new_points(tmp_path: Path):
    for sampler in ("random", "tpe"):
        url = f"sqlite:///{tmp_path / (sampler + '.db')}"
        args = ["tune", "ackley", "--optimizer", "sgdm", "--steps", "20", "--trials", "3",
                "--seed", "7", "--sampler", sampler, "--storage", url, "--study", "s",
                "--heartbeat", "0", "-q"]  # fmt: skip
        first = _ecdopt(*args, cwd=tmp_path)
        second = _ecdopt(*args, "--json", f"{sampler}.json", cwd=tmp_path)  # the same command
        assert first.returncode == 0 and second.returncode == 0, second.stderr
        doc = json.loads((tmp_path / f"{sampler}.json").read_text())
        points = [tuple(sorted(t["params"].items())) for t in doc["trial_records"]]
        assert len(points) == 6 and len(set(points)) == 6, (sampler, points)
        assert doc["trials"] == {"complete": 6}


def test_tune_json_is_a_file_and_stdout_stays_readable(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    out = _ecdopt("tune", "zakharov", "--optimizer", "adam", "--steps", "20", "--trials", "2",
                  "--storage", url, "--study", "j", "--heartbeat", "0", "--show", "--json",
                  "sum.json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "sum.json").read_text(), parse_constant=pytest.fail)
    assert doc["trials"] == {"complete": 2} and doc["best"]["params"]["lr"] > 0
    assert [r["worker"] for r in doc["trial_records"]] == [0, 0]
    assert all("off_shell_steps" in r for r in doc["trial_records"])
    assert "best trial" in out.stdout and "lr = " in out.stdout


def test_a_locked_sqlite_database_is_reported_quickly(tmp_path: Path):
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    common = ["tune", "ackley", "--optimizer", "sgdm", "--steps", "5", "--storage", url,
              "--study", "l", "--heartbeat", "0"]  # fmt: skip
    assert _ecdopt(*common, "--trials", "1", cwd=tmp_path).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import sqlite3, time; c = sqlite3.connect({str(db)!r}, isolation_level=None); "
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        tic = time.monotonic()
        out = _ecdopt(*common, "--trials", "1", "--lock-timeout", "1", cwd=tmp_path)
        elapsed = time.monotonic() - tic
    finally:
        holder.kill()
        holder.wait()
    assert "is locked by another process; waiting up to 1 s" in out.stdout
    _assert_one_line(out.returncode, out.stderr, "tune", "stayed locked for 1 s")
    assert elapsed < 60  # seconds, not the minutes of silence it used to take


def test_pde_train_without_out_writes_no_plots(tmp_path: Path):
    out = _ecdopt("pde", "train", "--smoke", "--runs", "2", "--json", "t.json", "-q",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["complete"] is True and doc["runs_done"] == 2


def test_huge_seeds_work_everywhere(tmp_path: Path):
    seed = str(2**63 - 1)
    url = f"sqlite:///{tmp_path / 's.db'}"
    cases = [
        ["synthetic", "zakharov", "--smoke", "--methods", "bbi", "--seed", seed, "-q"],
        ["pde", "train", "--smoke", "--runs", "2", "--seed", seed, "-q"],
        ["tune", "ackley", "--optimizer", "bbi", "--steps", "5", "--trials", "2", "--seed", seed,
         "--storage", url, "--study", "h", "--heartbeat", "0", "-q"],
    ]  # fmt: skip
    for (code, _out, err), argv in zip(
        _batch([(c, {}) for c in cases], tmp_path), cases, strict=True
    ):
        assert code == 0, (argv, err[-2000:])


def test_gzip_bomb_through_the_command(tmp_path: Path):
    folder = _write_mnist(tmp_path / "bomb")
    header = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (6, 28, 28))
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header)
        for _ in range(32):
            f.write(bytes(1 << 20))
    out = _ecdopt("train", "mnist", "--optimizer", "sgdm", "--data", str(folder), cwd=tmp_path)
    _assert_one_line(out.returncode, out.stderr, "train", "once decompressed")
    shutil.rmtree(folder)


def test_ctrl_c_inside_a_database_call_lands_after_it():
    """Ctrl-C during a database write is delivered once the write has finished (an interrupted
    SQLite transaction keeps its lock, and the trial's last write then waits for it)."""
    import signal
    import time

    from ecdopt.cli import interrupts_outside_database_calls

    database = {"__name__": "sqlalchemy.engine.stand_in", "signal": signal, "time": time}
    exec(
        "def commit(log):\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    for _ in range(20):\n"
        "        time.sleep(0.01)\n"
        "    log.append('committed')\n",
        database,
    )
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt), interrupts_outside_database_calls():
        database["commit"](log)
        log.append("returned")
        time.sleep(5)  # the interrupt arrives here, 50 ms after the write
    assert log == ["committed", "returned"]
    log.clear()
    with pytest.raises(KeyboardInterrupt), interrupts_outside_database_calls():
        signal.raise_signal(signal.SIGINT)  # elsewhere: at once
        log.append("not reached")
    assert log == []
