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
    assert "4.1 Ackley" in text and "4.3 basins" in text
    for name in ("ackley", "zakharov", "basins"):
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
