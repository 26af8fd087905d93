"""``ecdopt tune`` against a real PostgreSQL server: a throw-away cluster (``initdb`` and
``pg_ctl`` on a free local port, in a temporary folder removed afterwards), 3 concurrent workers
started through the ``ecdopt`` entry point, one of them killed in the middle of a trial; the
study then finishes with every trial accounted for.

The server is Debian's ``postgresql`` package, which ``make install`` installs when it is
missing (scripts/install-postgres.sh); the test is skipped only where no ``initdb`` exists.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.xdist_group("tune")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ECDOPT = [sys.executable, "-c", "import sys; from ecdopt.cli import main; sys.exit(main())"]


def _server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    return [runuser, "-u", "postgres", "--", *argv]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A running throw-away PostgreSQL cluster; its SQLAlchemy URL (psycopg 3 driver)."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server installed (make install installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ecdopt-pg-"))
    data, port = root / "data", _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        subprocess.run(
            _as_server_user([initdb, "-D", str(data), "-U", "postgres", "-A", "trust",
                             "--no-sync", "-E", "UTF8", "--locale=C"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"),
                             "-w", "-t", "60", "start"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True, timeout=60,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _worker(url: str, index: int, trials: int) -> subprocess.Popen:
    args = ["tune", "rosenbrock", "--optimizer", "bbi", "--steps", "40000", "--seed", "5",
            "--sampler", "random", "--heartbeat", "1", "--grace", "2", "--storage", url,
            "--study", "pg", "--trials", str(trials), "--worker-index", str(index)]  # fmt: skip
    return subprocess.Popen(
        [*ECDOPT, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _trials(url: str) -> list:
    try:
        return optuna.load_study(study_name="pg", storage=url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def test_three_workers_one_killed_mid_trial_every_trial_accounted_for(postgres_url: str):
    url = postgres_url
    workers = [_worker(url, i, trials=2) for i in range(3)]
    victim = workers[2]
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the victim's first trial is running...
            running = [t for t in _trials(url) if t.state.name == "RUNNING"]
            victims = [t.number for t in running if t.user_attrs.get("worker") == 2]
            if victims:
                break
            time.sleep(0.2)
        else:
            pytest.fail("worker 2 never started a trial")
        # ...and has recorded a heartbeat (the first beat is at the trial's start, then every
        # second; a trial that never beat is not stale). A trial is 40000 steps, seconds long
        # even on a fast machine, so it is still running when killed.
        time.sleep(1.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        outputs = [w.communicate(timeout=300)[0] for w in workers[:2]]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert [w.returncode for w in workers[:2]] == [0, 0], outputs
    killed = [t for t in _trials(url) if t.number == victims[0]]
    assert killed[0].state.name in ("RUNNING", "FAIL"), killed[0].state.name
    # resuming is starting the same command again: the killed trial is marked FAIL
    time.sleep(2.5)  # past the grace period
    restarted = _worker(url, 2, trials=2)
    out = restarted.communicate(timeout=300)[0]
    assert restarted.returncode == 0, out
    trials = _trials(url)
    states = [t.state.name for t in trials]
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost or doubled
    assert "RUNNING" not in states and states.count("FAIL") == 1
    assert states.count("COMPLETE") == len(trials) - 1 >= 6  # 2 + 2 + the restarted 2
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert all(t.value is not None and t.value >= 0 for t in complete)
    points = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(points)) == len(points)  # the restarted worker drew new points
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.user_attrs.get("worker") == 2
