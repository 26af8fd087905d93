"""Tests of the PDE experiment (§4.4, App. B): problem, Laplacians, shooting method, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ecdopt.experiments.pde import (
    LAPLACIANS,
    PRESETS,
    PDELoss,
    RadialProblem,
    ResNetAnsatz,
    SinSquaredProfile,
    bracket_bound,
    classify,
    double_backward_laplacian,
    find_radial_solutions,
    forward_laplacian,
    functorch_laplacian,
    paper_source_eq55,
    sample_ball,
    sample_sphere,
    shifted_preset,
    shoot,
    smoke_preset,
    train_run,
    train_runs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
PAPER_PROBLEM = RadialProblem(SinSquaredProfile(20.0), dim=2)


@dataclass(frozen=True)
class GaussianProfile:
    """``h(s) = exp(−s)``, with no closed-form derivatives: exercises the autograd path."""

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return torch.exp(-s)


class ExactSolution(nn.Module):
    """The manufactured solution as a module, so the Laplacian helpers can act on it."""

    def __init__(self, problem: RadialProblem) -> None:
        super().__init__()
        self.problem = problem
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))  # for functorch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.problem.exact(x) + 0 * self.dummy


# ---------------------------------------------------------------------------------------------
# the problem (eqs. 53-55)
# ---------------------------------------------------------------------------------------------


def test_source_matches_eq55_and_f0():
    x = sample_ball(500, 2, torch.Generator().manual_seed(0), dtype=torch.float64)
    general = PAPER_PROBLEM.source(x)
    literal = paper_source_eq55(x)
    torch.testing.assert_close(general, literal, rtol=1e-12, atol=1e-9)
    assert PAPER_PROBLEM.boundary_value == pytest.approx(0.833469, abs=5e-7)
    assert PAPER_PROBLEM.boundary_value == pytest.approx(math.sin(20.0) ** 2, rel=1e-14)


@pytest.mark.parametrize(
    ("problem", "laplacian"),
    [
        (PAPER_PROBLEM, double_backward_laplacian),
        (PAPER_PROBLEM, functorch_laplacian),
        (RadialProblem(SinSquaredProfile(2.0), dim=3), double_backward_laplacian),
        (RadialProblem(GaussianProfile(), dim=4), double_backward_laplacian),
        (PRESETS["twin"].problem, double_backward_laplacian),
    ],
)
def test_manufactured_solution_has_zero_residual(problem, laplacian):
    """Plugging the exact u into −Σ∂²u + u² − f (the paper's sign) gives zero."""
    x = sample_ball(300, problem.dim, torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = PDELoss(problem, gamma=1.0, reg=0.0)
    loss.laplacian = laplacian
    exact = ExactSolution(problem)
    residual = loss.residual(exact, x, loss.source(x))
    scale = loss.source(x).abs().max()
    assert residual.abs().max() <= 1e-10 * scale
    # and the boundary term of eq. 19 vanishes: u = f0 on the sphere
    xb = sample_sphere(50, problem.dim, dtype=torch.float64)
    torch.testing.assert_close(exact(xb), torch.full((50,), problem.boundary_value).double())
    # while a wrong sign of the Laplacian does not
    wrong = (2 * laplacian(exact, x)[1] + residual).abs().max()
    assert wrong > 1e-3 * scale


# ---------------------------------------------------------------------------------------------
# the ansatz (eq. 56) and the Laplacians
# ---------------------------------------------------------------------------------------------


def test_resnet_matches_eq56_literally():
    torch.manual_seed(0)
    model = ResNetAnsatz(dim=3, width=5, depth=2).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    y = torch.sigmoid(x @ model.inp.weight.T + model.inp.bias)
    for layer in model.hidden:
        y = y + torch.sigmoid(y @ layer.weight.T + layer.bias)
    expected = y @ model.out.weight[0] + model.out.bias
    torch.testing.assert_close(model(x), expected)
    n_params = sum(p.numel() for p in ResNetAnsatz(2, 200, 3).parameters())
    assert n_params == (2 * 200 + 200) + 3 * (200 * 200 + 200) + 201


@pytest.mark.parametrize(("dim", "width", "depth"), [(2, 16, 3), (3, 7, 1), (5, 4, 0)])
def test_forward_laplacian_equals_autograd_in_float64(dim, width, depth):
    torch.manual_seed(dim)
    model = ResNetAnsatz(dim, width, depth).double()
    for p in model.parameters():  # larger weights: a more curved network
        p.data.mul_(3.0)
    x = sample_ball(40, dim, dtype=torch.float64)
    u, lap = forward_laplacian(model, x)
    for method in (double_backward_laplacian, functorch_laplacian):
        u2, lap2 = method(model, x)
        torch.testing.assert_close(u, u2, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(lap, lap2, rtol=1e-11, atol=1e-12)
    assert lap.abs().max() > 1e-3  # not a trivially zero comparison


def test_loss_gradients_agree_between_laplacians():
    torch.manual_seed(0)
    model = ResNetAnsatz(2, 12, 2).double()
    x = sample_ball(30, 2, dtype=torch.float64)
    xb = sample_sphere(10, 2, dtype=torch.float64)
    problem = PRESETS["small"].problem
    grads = {}
    for name in LAPLACIANS:
        loss_fn = PDELoss(problem, gamma=10.0, reg=2e-4, laplacian=name)
        model.zero_grad(set_to_none=True)
        loss_fn(model, x, loss_fn.source(x), xb).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    for name in ("double_backward", "functorch"):
        torch.testing.assert_close(grads[name], grads["forward"], rtol=1e-10, atol=1e-12)


def test_loss_is_eq19_with_means_and_l2_term():
    torch.manual_seed(0)
    model = ResNetAnsatz(2, 6, 1).double()
    problem = PRESETS["small"].problem
    x = sample_ball(20, 2, dtype=torch.float64)
    xb = sample_sphere(8, 2, dtype=torch.float64)
    loss_fn = PDELoss(problem, gamma=7.0, reg=2e-4)
    f = loss_fn.source(x)
    u, lap = double_backward_laplacian(model, x)
    theta_sq = sum((p**2).sum() for p in model.parameters())
    expected = ((-lap + u**2 - f) ** 2).mean() + 7.0 * (
        (model(xb) - problem.boundary_value) ** 2
    ).mean()
    expected = expected + 2e-4 * theta_sq
    torch.testing.assert_close(loss_fn(model, x, f, xb), expected)
    with pytest.raises(ValueError, match="laplacian must be one of"):
        PDELoss(problem, laplacian="nope")


def test_sampling_is_uniform_in_ball_and_on_sphere():
    gen = torch.Generator().manual_seed(0)
    x = sample_ball(20_000, 2, gen, dtype=torch.float64)
    r = x.norm(dim=1)
    assert r.max() <= 1.0
    # uniform in the disc: P(r < 1/2) = 1/4, and mean of x is 0
    assert (r < 0.5).double().mean().item() == pytest.approx(0.25, abs=0.015)
    assert x.mean(0).abs().max().item() < 0.02
    s = sample_sphere(100, 3, gen, dtype=torch.float64)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(100, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# the shooting method (Fig. 7)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_solutions():
    return find_radial_solutions(PAPER_PROBLEM, n_grid=801)


def test_shooting_finds_the_two_paper_solutions(paper_solutions):
    assert len(paper_solutions) == 2
    analytic, other = paper_solutions
    assert analytic.u0 == pytest.approx(0.0, abs=1e-8)  # u(0) = sin²(0) = 0
    r = analytic.radii
    assert np.max(np.abs(analytic.values - np.sin(20 * r**2) ** 2)) < 1e-6
    assert other.u0 == pytest.approx(-10.2258, abs=1e-3)
    for sol in paper_solutions:
        assert sol.u1 == pytest.approx(PAPER_PROBLEM.boundary_value, abs=1e-8)


def test_second_paper_solution_satisfies_the_radial_ode(paper_solutions):
    """Independent check: finite differences of the profile satisfy the radial form of eq. 53."""
    other = paper_solutions[1]
    _, dense = shoot(PAPER_PROBLEM, other.u0)
    r = np.linspace(0.05, 1.0, 4001)
    h = r[1] - r[0]
    u = dense(r)[0]
    upp = (u[2:] - 2 * u[1:-1] + u[:-2]) / h**2
    up = (u[2:] - u[:-2]) / (2 * h)
    rr = r[1:-1]
    f = PAPER_PROBLEM.source_radial(rr)
    residual = -(upp + up / rr) + u[1:-1] ** 2 - f  # d = 2, paper's sign
    assert np.max(np.abs(residual)) < 1e-3 * np.max(np.abs(f))
    assert u[-1] == pytest.approx(PAPER_PROBLEM.boundary_value, abs=1e-7)


def test_bracket_ends_blow_up():
    problem = PRESETS["small"].problem
    bound = bracket_bound(problem)
    assert shoot(problem, bound)[0] == math.inf
    assert shoot(problem, -bound)[0] == math.inf
    assert 10.0 < bound < 1e4


def test_shooting_for_another_profile_and_dimension():
    problem = RadialProblem(SinSquaredProfile(2.0), dim=3)
    sols = find_radial_solutions(problem, n_grid=401)
    assert sols[0].u0 == pytest.approx(0.0, abs=1e-8)  # the manufactured solution comes first
    assert np.max(np.abs(sols[0].values - np.sin(2 * sols[0].radii ** 2) ** 2)) < 1e-6
    assert all(s.u1 == pytest.approx(problem.boundary_value, abs=1e-8) for s in sols)
    # a profile without closed-form derivatives (autograd path), d = 4: shooting from the exact
    # u(0) = exp(0) = 1 reproduces exp(−r²)
    gauss = RadialProblem(GaussianProfile(), dim=4)
    u1, dense = shoot(gauss, 1.0)
    assert u1 == pytest.approx(math.exp(-1.0), abs=1e-8)
    r = np.linspace(0.1, 1.0, 50)
    np.testing.assert_allclose(dense(r)[0], np.exp(-(r**2)), atol=1e-8)


def test_twin_preset_has_two_nearby_solutions():
    """The shifted profile sin²(2r²) − 4.6: the manufactured root u(0) = −4.6 and a second one
    near u(0) = −0.58, both hitting f0 on the sphere, far apart in relative L2."""
    problem = PRESETS["twin"].problem
    assert problem.boundary_value == pytest.approx(math.sin(2.0) ** 2 - 4.6, rel=1e-14)
    sols = find_radial_solutions(problem, n_grid=401)
    assert len(sols) == 2
    made, other = sols
    assert made.u0 == pytest.approx(-4.6, abs=1e-8)
    assert np.max(np.abs(made.values - (np.sin(2 * made.radii**2) ** 2 - 4.6))) < 1e-6
    assert other.u0 == pytest.approx(-0.5760, abs=2e-3)
    assert all(s.u1 == pytest.approx(problem.boundary_value, abs=1e-8) for s in sols)
    # the classification can tell them apart: each is > 40% (relative L2) from the other
    r = made.radii
    weight = r  # area element in d = 2
    norm = [np.sqrt(np.sum(s.values**2 * weight)) for s in sols]
    gap = np.sqrt(np.sum((made.values - other.values) ** 2 * weight))
    assert min(gap / n for n in norm) > 0.4


def test_bounces_split_runs_that_share_an_initialisation():
    """§4.4's mechanism: one initialisation, different bounce seeds. The runs agree before the
    first fixed bounce and differ after it; the same seed repeats exactly."""
    preset = replace(smoke_preset(PRESETS["twin"]), iterations=12)
    sols = find_radial_solutions(preset.problem, n_grid=401)

    def final(seed: int, iterations: int) -> list[float]:
        run = train_run(
            preset,
            "bbi",
            sols,
            seed=seed,
            init_seed=0,
            iterations=iterations,
            overrides={"bounce_period": 5},
        )
        return run.errors

    assert final(1, 5) == final(2, 5)  # steps 0-4: no bounce yet, identical
    assert final(1, 12) != final(2, 12)  # the bounce at step 5 drew different directions
    assert final(1, 12) == final(1, 12)
    with pytest.raises(ValueError, match="trace_every must be a positive"):
        train_run(preset, "bbi", sols, trace_every=0)


def test_parallel_runs_equal_sequential_ones():
    """``jobs=2`` trains in spawned single-threaded workers; each run is the same as in-process."""
    preset = smoke_preset(PRESETS["twin"])
    sols = find_radial_solutions(preset.problem, n_grid=401)
    kwargs = {"runs": 3, "seed": 4, "solutions": sols, "overrides": {"bounce_period": 5}}
    parallel = train_runs(preset, "bbi", jobs=2, **kwargs)
    sequential = train_runs(preset, "bbi", jobs=1, **kwargs)  # the autouse fixture: 1 thread
    strip = ("wall_seconds", "ms_per_iteration")
    for a, b in zip(parallel["runs"], sequential["runs"], strict=True):
        assert {k: v for k, v in a.items() if k not in strip} == {
            k: v for k, v in b.items() if k not in strip
        }
    assert [r["seed"] for r in parallel["runs"]] == [4, 5, 6]
    assert parallel["counts"] == sequential["counts"]
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        train_runs(preset, "bbi", jobs=0, **kwargs)
    lam = replace(preset, profile=lambda s: torch.sin(2 * s) ** 2)
    with pytest.raises(ValueError, match="picklable profile"):
        train_runs(lam, "bbi", jobs=2, **kwargs)


def test_classify_picks_the_nearest():
    assert classify([0.3, 0.01]) == 1
    assert classify([math.nan, 0.5]) == 1
    assert classify([math.nan]) == -1


# ---------------------------------------------------------------------------------------------
# training and the CLI
# ---------------------------------------------------------------------------------------------


def test_adam_training_reduces_error_on_small_problem():
    preset = smoke_preset(PRESETS["small"])
    sols = find_radial_solutions(preset.problem, n_grid=preset.n_grid)
    first = train_run(preset, "adam", sols, seed=0, iterations=0)
    trained = train_run(preset, "adam", sols, seed=0, iterations=150, lr=3e-2)
    assert trained.final_loss < 0.75 * first.final_loss
    assert trained.errors[0] < first.errors[0]
    assert len(trained.loss_values) == len(trained.loss_steps) > 1


def test_resampling_changes_the_trajectory():
    preset = smoke_preset(PRESETS["small"])
    sols = find_radial_solutions(preset.problem, n_grid=preset.n_grid)
    fixed = train_run(preset, "sgdm", sols, seed=0, iterations=10, resample_every=0)
    resampled = train_run(preset, "sgdm", sols, seed=0, iterations=10, resample_every=3)
    assert fixed.final_loss != resampled.final_loss


_MAIN = "import sys; from ecdopt.cli import main; sys.exit(main())"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, "pde", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
    )


def test_cli_solutions_and_train_smoke(tmp_path):
    out = _cli(
        "solutions",
        "--preset",
        "small",
        "--smoke",
        "--json",
        str(tmp_path / "s.json"),
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    assert len(doc["solutions"]) == 2
    assert all(isinstance(s["u0"], float) and isinstance(s["u1"], float) for s in doc["solutions"])
    assert doc["solutions"][0]["u0"] == pytest.approx(0.0, abs=1e-8)
    assert (tmp_path / "pde_small_solutions.png").stat().st_size > 1000

    out = _cli(
        "train",
        "--preset",
        "small",
        "--optimizer",
        "bbi",
        "--runs",
        "2",
        "--seed",
        "3",
        "--smoke",
        "--trace-every",
        "8",
        "--json",
        str(tmp_path / "t.json"),
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "t.json").read_text())
    assert len(doc["runs"]) == 2
    for run in doc["runs"]:
        assert isinstance(run["nearest_solution"], int) and run["nearest_solution"] in (0, 1)
        for key in ("relative_l2_error", "final_loss", "wall_seconds"):
            assert isinstance(run[key], float)
    assert sum(doc["counts"].values()) == 2
    for run in doc["runs"]:  # smoke: 20 iterations, a record at 0, 8, 16 and the end
        assert run["trace"]["steps"] == [0, 8, 16, 20]
        assert run["trace"]["errors"][-1] == run["errors"]
        assert run["trace"]["errors"][0] != run["errors"]  # it did train
    assert (tmp_path / "pde_small_bbi_trace.png").stat().st_size > 1000
    assert (tmp_path / "pde_small_bbi_sections.png").exists()
    assert (tmp_path / "pde_small_bbi_loss.png").exists()


def test_cli_shift_moves_along_the_family(tmp_path):
    out = _cli("solutions", "--preset", "small", "--shift", "-4.6", "--smoke")
    assert out.returncode == 0, out.stderr
    assert "preset small_shift-4.6" in out.stdout
    out = _cli("solutions", "--preset", "twin", "--smoke", "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["profile"] == {"kind": "SinSquaredProfile", "a": 2.0, "shift": -4.6}
    assert [round(s["u0"], 2) for s in doc["solutions"]] == [-4.6, -0.58]
    assert shifted_preset(PRESETS["small"], -4.6).problem == PRESETS["twin"].problem
    gauss = replace(PRESETS["small"], profile=GaussianProfile())
    with pytest.raises(ValueError, match="shift needs a SinSquaredProfile"):
        shifted_preset(gauss, 1.0)


def test_cli_errors_exit_2(tmp_path):
    out = _cli(
        "train",
        "--optimizer",
        "lbfgs",
        "--smoke",
        "--json",
        str(tmp_path / "x.json"),
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 2
    assert "--optimizer: invalid choice" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script", ["pde_laplacian.py --quick", "pde_gpu.py --device cpu --smoke"])
def test_benchmarks_run_on_cpu(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script.split()[0]), *script.split()[1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert '"rows"' in out.stdout or '"results"' in out.stdout
