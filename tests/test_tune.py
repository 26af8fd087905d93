"""``ecdopt tune``: concurrent workers on one SQLite study, killed workers, resume, --show."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from ecdopt.cli import main
from ecdopt.experiments.tune import (
    TuneConfig,
    TuneError,
    list_tasks,
    make_storage,
    mask_url,
    run_worker,
)

# the console script's entry point (``python -m ecdopt.cli`` would import cli.py twice)
_MAIN = "import sys; from ecdopt.cli import main; sys.exit(main(sys.argv[1:]))"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
COMMON = ["--optimizer", "bbi", "--steps", "60", "--seed", "3", "--heartbeat", "1"]


def _tune(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _MAIN, "tune", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _states(url: str, study: str) -> list[str]:
    s = optuna.load_study(study_name=study, storage=url)
    return [t.state.name for t in s.get_trials(deepcopy=False)]


def test_two_concurrent_workers_share_one_sqlite_study(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    workers = [
        _tune("rosenbrock", *COMMON, "--trials", "4", "--storage", url, "--study", "shared",
              "--worker-index", str(i))
        for i in range(2)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(8))  # none lost, none duplicated
    assert all(t.state.name == "COMPLETE" for t in trials)
    # both workers ran their 4: each printed 4 finished trials
    assert [out.count(" complete value ") for out in outputs] == [4, 4]
    assert study.user_attrs["ecdopt"]["task"] == "rosenbrock"


def test_killed_worker_trial_is_failed_and_study_resumes(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # a worker whose trial hangs (sleeps), started through the library with the CLI's settings
    script = textwrap.dedent(
        f"""
        import time
        from ecdopt.experiments.tune import TuneConfig, open_study
        cfg = TuneConfig(task="rosenbrock", optimizer="bbi", study="resume", storage={url!r},
                         steps=60, seed=3, heartbeat=1, grace=2)
        open_study(cfg, "minimize").optimize(lambda t: time.sleep(600), n_trials=1)
        """
    )
    hung = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _states(url, "resume") == ["RUNNING"]:
                    # let the heartbeat thread record at least one beat (every 1 s): a trial
                    # that never beat is not "stale" to Optuna, it would stay RUNNING
                    time.sleep(2.5)
                    break
            except Exception:  # the study or tables do not exist yet
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the hanging worker never started its trial")
    finally:
        hung.send_signal(signal.SIGKILL)
        hung.wait(timeout=30)
    assert _states(url, "resume") == ["RUNNING"]  # killed: nobody closed the trial
    time.sleep(3.5)  # > grace period: its heartbeat is stale
    worker = _tune(
        "rosenbrock", *COMMON, "--trials", "2", "--storage", url, "--study", "resume",
        "--grace", "2", "--show",
    )  # fmt: skip
    out = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0, out
    assert _states(url, "resume") == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "best trial 1" in out or "best trial 2" in out
    assert "lr = " in out


def test_show_only_and_total_trials_cap(tmp_path: Path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    base = ["tune", "zakharov", "--optimizer", "adam", "--steps", "30", "--seed", "1"]
    base += ["--storage", url, "--study", "cap", "--heartbeat", "0"]
    assert main([*base, "--trials", "5", "--total-trials", "3"]) == 0
    assert _states(url, "cap") == ["COMPLETE"] * 3  # the cap stopped the worker at 3
    capsys.readouterr()
    assert main([*base, "--trials", "0", "--show", "--total-trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 complete" in out and "lr = " in out
    assert _states(url, "cap") == ["COMPLETE"] * 3


def test_a_study_made_for_another_task_is_refused(tmp_path: Path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["--optimizer", "sgdm", "--steps", "10", "--storage", url, "--study", "x"]
    assert main(["tune", "ackley", *args, "--trials", "1", "--heartbeat", "0"]) == 0
    capsys.readouterr()
    assert main(["tune", "rastrigin", *args, "--trials", "1", "--heartbeat", "0"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["tune", "nosuchtask", *args, "--trials", "1"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_show_of_missing_study_is_a_clear_error(tmp_path: Path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["tune", "ackley", "--optimizer", "bbi", "--storage", url, "--study", "none"]
    code = main([*args, "--trials", "0", "--show"])
    assert code == 2
    assert "no study 'none'" in capsys.readouterr().err


def test_landscape_tasks_are_looked_up_lazily_and_digits_is_a_task():
    tasks = list_tasks()
    assert {"ackley", "zakharov", "rosenbrock", "rastrigin", "digits"} <= set(tasks)


def test_passwords_are_masked():
    url = "postgresql+psycopg2://alice:s3cr3t@db.example:5432/optuna"
    assert mask_url(url) == "postgresql+psycopg2://alice:***@db.example:5432/optuna"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(TuneError) as err:
        make_storage("nosuchdialect://bob:hunter2@host/db")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


def test_run_worker_in_process_counts_trials(tmp_path: Path):
    cfg = TuneConfig(
        task="ackley",
        optimizer="ecdsep",
        study="inproc",
        trials=2,
        storage=f"sqlite:///{tmp_path / 'db.sqlite'}",
        sampler="random",
        seed=0,
        steps=40,
        heartbeat=0,
    )
    lines: list[str] = []
    study = run_worker(cfg, lines.append)
    assert len(study.trials) == 2 and all(t.value is not None for t in study.trials)
    assert sum("complete" in line for line in lines) == 2
