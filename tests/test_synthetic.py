"""The synthetic experiments' commands on --smoke size, and the batched tuning."""

from __future__ import annotations

import json

import pytest
import torch

from ecdopt.cli import main
from ecdopt.experiments.synthetic.tuning import Method, tune
from ecdopt.landscapes import zakharov

pytestmark = pytest.mark.xdist_group("synthetic")


def _run(tmp_path, *argv):
    out = tmp_path / "out"
    js = tmp_path / "r.json"
    code = main(
        ["synthetic", *argv, "--smoke", "--no-progress", "--json", str(js), "--out", str(out)]
    )
    assert code == 0
    return json.loads(js.read_text()), out


def test_ackley_smoke(tmp_path) -> None:
    data, out = _run(tmp_path, "ackley", "--ackley-b", "0.02", "--methods", "bbi,sgdm")
    assert data["target"] == 5e-4 and data["ackley_b"] == 0.02
    for name in ("bbi", "sgdm"):
        r = data["results"][name]
        assert r["starts"] == 4 and r["runs"] == 8
        assert 0 <= r["successes"] <= r["starts"] and r["successes"] <= r["run_successes"] <= 8
    assert 1e-6 <= data["hyperparameters"]["bbi"]["lr"] <= 1e-2
    assert data["hyperparameters"]["bbi"]["extra_energy"] == 2.0
    assert (out / "ackley_trajectory.png").stat().st_size > 1000


def test_zakharov_smoke(tmp_path) -> None:
    data, out = _run(tmp_path, "zakharov", "--methods", "bbi,sgdm_narrow")
    bbi = data["results"]["bbi"]
    assert set(bbi["steps_to"]) == {"1e-06", "1e-10", "1e-20"}
    assert bbi["best_loss"] <= bbi["final_loss"] or bbi["final_loss"] != bbi["final_loss"]
    assert bbi["best_loss"] < zakharov(-torch.ones(1, 10, dtype=torch.float64)).item()
    assert 1e-10 <= data["hyperparameters"]["sgdm_narrow"]["lr"] <= 1e-5
    assert (out / "zakharov_losses.png").exists()


@pytest.mark.parametrize("mode", [None, "rescale"])
def test_bbi_in_the_protocols_is_algorithm1_unless_asked(tmp_path, mode) -> None:
    """A figure labelled BBI is Algorithm 1's (``off_shell="exact"``) unless --off-shell says
    otherwise; every ECD run records its off-shell steps."""
    extra = () if mode is None else ("--off-shell", mode)
    data, _ = _run(tmp_path, "zakharov", "--methods", "bbi,ecdsep", *extra)
    for name in ("bbi", "ecdsep"):
        assert data["hyperparameters"][name]["off_shell"] == (mode or "exact")
        steps = data["results"][name]["off_shell_steps"]
        assert isinstance(steps, list) and all(isinstance(k, int) and k >= 0 for k in steps)


def test_basins_smoke(tmp_path) -> None:
    data, out = _run(tmp_path, "basins", "--bounce-direction", "uniform", "--runs", "30")
    assert data["bounce_direction"] == "uniform" and data["runs"] == 30
    c = data["counts"]
    assert c["basin1"] + c["basin2"] + c["neither"] == 30
    assert data["predicted_ratio"] == pytest.approx(1.926, abs=2e-3)
    assert (out / "basins_ratio.png").exists() and (out / "basins_trajectories.png").exists()


def test_bad_arguments_are_user_errors(capsys) -> None:
    assert main(["synthetic", "ackley", "--smoke", "--starts", "0", "--no-progress"]) == 2
    assert "--starts: expected an integer >= 1" in capsys.readouterr().err
    assert main(["synthetic", "zakharov", "--smoke", "--methods", "lbfgs"]) == 2


def test_demo_smoke(tmp_path, capsys) -> None:
    assert main(["demo", "--smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "4.1 Ackley" in text and "4.3 first-passage ratio" in text
    assert "time-averaged occupation ratio I/II" in text and "(eq. 40)" in text
    for name in ("ackley", "zakharov", "basins", "occupation"):
        assert json.loads((tmp_path / f"synthetic_{name}.json").read_text())


def test_batched_tuning_finds_the_good_step() -> None:
    # plain GD on a 1-D quadratic ½θ²: Δt = 1 jumps to the minimum in one step
    method = Method("gd", "sgd", {}, {"lr": (1e-3, 1.9, True)})
    res = tune(
        method,
        lambda t: 0.5 * (t * t).sum(-1),
        torch.tensor([1.0]),
        trials=40,
        steps=5,
        batch=10,
        seed=0,
    )
    assert res.trials == 40
    assert 0.5 < res.params["lr"] < 1.5
    assert res.value < 1e-3


# --------------------------------------------------------------------------------------------
# intervals and the occupation study
# --------------------------------------------------------------------------------------------


def test_basins_and_ackley_carry_intervals(tmp_path) -> None:
    data, _ = _run(
        tmp_path, "basins", "--bounce-direction", "gaussian", "--runs", "30", "--steps", "1500"
    )
    entry = data["by_direction"]["gaussian"]
    c = entry["counts"]
    iv = entry["ratio_interval"]
    if c["basin2"]:
        assert iv["low"] <= c["basin1"] / c["basin2"] <= iv["high"]
    assert entry["fraction_basin1"]["value"] == pytest.approx(c["basin1"] / 30)
    run = entry["running_ratio"]
    triples = zip(run["ratio"], run["low"], run["high"], strict=True)
    assert all(lo <= r <= hi for r, lo, hi in triples)
    ack, _ = _run(tmp_path, "ackley", "--methods", "sgdm", "--starts", "3", "--repeats", "2")
    rate = ack["results"]["sgdm"]["success_rate"]
    assert rate["method"] == "wilson" and 0.0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1


def test_occupation_counter_against_a_hand_trajectory() -> None:
    """Two particles, two unit-circle basins at (0, 0) and (3, 0), radii 1 and 0.5."""
    from ecdopt.experiments.synthetic.occupation import OccupationCounter

    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    hess = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    counter = OccupationCounter(centers, hess, (1.0, 0.5), burn_in=1, block=2)
    path = [  # step k: (particle 0, particle 1)
        ((0.0, 0.0), (9.0, 9.0)),  # burn-in: not counted
        ((0.3, 0.0), (3.6, 0.0)),  # p0 in I (r=1 and 0.5); p1 in II (r=1 only)
        ((0.8, 0.0), (3.0, 0.2)),  # p0 in I (r=1); p1 in II (both)
        ((2.5, 0.0), (5.0, 5.0)),  # p0 in II (r=1 only); p1 nowhere
        ((0.0, 0.1), (1.0, 0.0)),  # p0 in I (both); p1 on the circle |η| = 1: outside
        ((0.0, 0.0), (0.0, 0.0)),  # a partial block: dropped
    ]
    for k, (a, b) in enumerate(path):
        counter(k, torch.tensor([a, b], dtype=torch.float64), torch.zeros(2))
    f = counter.fractions()  # [blocks, M, K, R]
    assert f.shape == (2, 2, 2, 2)
    expected = torch.tensor(
        [
            [[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.5]]],
            [[[0.5, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(f, expected)


def test_dynamics_convert_times_to_steps() -> None:
    from ecdopt.experiments.synthetic.occupation import DYNAMICS

    bbi = DYNAMICS["bbi"].options(0.01)  # the §4.3 protocol: T0 = 20, N_b = 1, T1 = 750
    assert (bbi["bounce_period"], bbi["n_bounces"], bbi["bounce_patience"]) == (20, 1, 750)
    every = DYNAMICS["every-2.5"].options(0.005)
    assert every["bounce_period"] == 500 and every["bounce_patience"] is None
    assert every["n_bounces"] > 10**9
    assert DYNAMICS["ecdsep"].options(0.01)["hamiltonian"] == "separable"


def test_stationary_start_matches_the_predicted_fractions() -> None:
    """Drawn from the measure, the particles' occupancy at the first step is the prediction."""
    from ecdopt.experiments.synthetic.occupation import (
        DYNAMICS,
        LANDSCAPES,
        OccupationConfig,
        predictions,
        run_occupation,
    )

    cfg = OccupationConfig(particles=6000, time=0.01, burn_in=0.0, block=0.01, radii=(1.0,))
    setup = LANDSCAPES["two_basin"](cfg.epsilon)
    dyn = DYNAMICS["every-7.5"]
    run = run_occupation(setup, dyn, 0.01, cfg)
    floor = setup.landscape.minimum_value - cfg.v_min
    pred = predictions(setup, dyn, floor, run["energy"], (1.0,), points=600)["1"]
    region = run["regions"]["1"]
    for i in (1, 2):
        p = pred[f"fraction_basin{i}"]
        sigma = (p * (1 - p) / cfg.particles) ** 0.5
        assert region[f"fraction_basin{i}"]["value"] == pytest.approx(p, abs=4 * sigma)
    assert pred["ratio_full"] == pytest.approx(1.92, abs=0.01)


def test_occupation_command_smoke(tmp_path) -> None:
    data, out = _run(tmp_path, "occupation", "--dynamics", "bbi,unit-speed", "--dt", "0.02,0.01")
    assert data["protocol"]["particles"] == 16
    for name in ("bbi", "unit-speed"):
        entry = data["dynamics"][name]
        assert [r["dt"] for r in entry["runs"]] == [0.02, 0.01]
        region = entry["runs"][0]["regions"]["1"]
        f1 = region["fraction_basin1"]
        assert f1["low"] <= f1["value"] <= f1["high"] and f1["method"] == "replicates"
        assert entry["predicted"]["1"]["ratio_quadratic"] == pytest.approx(1.926, abs=0.01)
    assert (out / "occupation_convergence.png").exists() and (out / "occupation_dt.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dynamics", "bbi,warp"], "--dynamics: unknown"),
        (["--dt", "0.01,-1"], "--dt: every step must be > 0"),
        (["--dt", "x"], "--dt: expected a comma-separated list"),
        (["--particles", "1"], "particles must be"),
    ],
)
def test_occupation_bad_arguments(argv, message, capsys) -> None:
    assert main(["synthetic", "occupation", "--smoke", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
