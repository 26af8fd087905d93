"""Batched ensembles (ecdopt.ensemble) against the single-particle optimizer and torch.optim."""

from __future__ import annotations

import math

import pytest
import torch

from ecdopt.ensemble import simulate, simulate_adam, simulate_sgd
from ecdopt.landscapes import ackley, rosenbrock, two_basin, zakharov
from ecdopt.reference import algorithm1

F64 = torch.float64


def _starts(m: int, n: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(m, n, generator=g, dtype=F64) * 2 - 1) * scale


@pytest.mark.parametrize(
    ("fn", "n", "kw"),
    [
        (lambda t: ackley(t), 2, {"lr": 0.01, "extra": 2.0, "floor": 1e-4}),
        (zakharov, 4, {"lr": 2e-3, "floor": 1e-22}),
        (two_basin, 2, {"lr": 1e-3, "hamiltonian": "inverse_mass", "floor": -0.1}),
        (rosenbrock, 3, {"lr": 1e-3, "hamiltonian": "separable", "power": 1.5, "extra": 0.3}),
    ],
)
def test_ensemble_matches_algorithm1(fn, n, kw) -> None:
    """Each particle of the ensemble is the literal Algorithm 1 (``ecdopt.reference``)."""
    theta0 = _starts(3, n, seed=n)
    hamiltonian = kw.get("hamiltonian", "born_infeld")
    floor, extra, power = kw.get("floor", 0.0), kw.get("extra", 0.0), kw.get("power", 1.0)
    res = simulate(
        fn,
        theta0,
        300,
        hamiltonian=hamiltonian,
        lr=kw["lr"],
        loss_floor=floor,
        extra_energy=extra,
        loss_power=power,
        bounce_period=None,
        bounce_patience=None,
    )
    for m in range(3):
        ref = algorithm1(
            lambda ps, fn=fn: fn(ps[0][None])[0],
            [{"params": [theta0[m]], "lr": kw["lr"]}],
            300,
            hamiltonian=hamiltonian,
            delta_V=floor,
            delta_E=extra,
            eta=power,
        )
        torch.testing.assert_close(res.theta[m], ref.thetas[-1][0], rtol=1e-9, atol=1e-12)


def _run_optimizer(cls, fn, theta0, steps, **kw):
    p = torch.nn.Parameter(theta0.clone())
    opt = cls([p], **kw)

    def closure():
        opt.zero_grad()
        loss = fn(p[None])[0]
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return p.detach()


@pytest.mark.parametrize(
    ("hamiltonian", "kw"),
    [
        ("born_infeld", {"lr": 0.01, "extra_energy": 2.0, "loss_floor": 1e-4}),
        ("inverse_mass", {"lr": 1e-3, "extra_energy": 0.5}),
        ("separable", {"lr": 1e-2, "loss_power": 2.0, "weight_decay": 0.01}),
    ],
)
def test_ensemble_matches_ecd_optimizer(hamiltonian, kw) -> None:
    ecdopt = pytest.importorskip("ecdopt")
    theta0 = _starts(4, 2, seed=7, scale=3.0)
    res = simulate(
        ackley, theta0, 200, hamiltonian=hamiltonian, bounce_period=None, bounce_patience=None, **kw
    )
    for m in range(4):
        ref = _run_optimizer(
            ecdopt.ECD,
            ackley,
            theta0[m],
            200,
            hamiltonian=hamiltonian,
            bounce_period=None,
            bounce_patience=None,
            **kw,
        )
        # Ackley is chaotic: rounding-order differences (~1e-16) grow to ~1e-9 in 200 steps
        torch.testing.assert_close(res.theta[m], ref, rtol=1e-7, atol=1e-9)


def test_per_particle_lr_equals_separate_runs() -> None:
    theta0 = _starts(3, 10, seed=3, scale=1.0)
    lrs = torch.tensor([1e-3, 3e-3, 1e-2], dtype=F64)
    res = simulate(zakharov, theta0, 200, lr=lrs, bounce_period=None, bounce_patience=None)
    for m in range(3):
        one = simulate(
            zakharov,
            theta0[m : m + 1],
            200,
            lr=float(lrs[m]),
            bounce_period=None,
            bounce_patience=None,
        )
        torch.testing.assert_close(res.theta[m], one.theta[0], rtol=1e-12, atol=1e-14)


def test_bounces_keep_energy_and_follow_schedule() -> None:
    theta0 = _starts(50, 2, seed=1, scale=4.0)
    res = simulate(
        ackley,
        theta0,
        400,
        lr=0.01,
        extra_energy=2.0,
        bounce_period=20,
        n_bounces=4,
        bounce_patience=None,
        seed=0,
    )
    # N_b = 4 fixed bounces after 20, 40, 60, 80 updates, then none (no patience bounces)
    assert bool((res.bounces == 4).all())
    assert bool(torch.isfinite(res.theta).all())
    # with patience bounces too, every particle bounces more than the 4 fixed times
    res2 = simulate(
        ackley,
        theta0,
        400,
        lr=0.01,
        extra_energy=2.0,
        bounce_period=20,
        n_bounces=4,
        bounce_patience=30,
        seed=0,
    )
    assert bool((res2.bounces > 4).all())


def test_target_steps_and_freeze() -> None:
    theta0 = torch.tensor([[0.5, 0.5], [3.0, -3.0]], dtype=F64)
    res = simulate_sgd(
        lambda t: (t * t).sum(-1), theta0, 500, lr=0.1, target=1e-6, stop_at_target=True
    )
    # |Θ_k|² = 0.64^k |Θ_0|²: first k with 0.8^{2k}·|Θ0|² < 1e-6
    for m in range(2):
        r2 = float((theta0[m] ** 2).sum())
        expected = math.ceil(math.log(1e-6 / r2) / math.log(0.64))
        assert int(res.steps_to_target[m]) in (expected, expected + 1)
        assert float(res.value[m]) < 1e-6
    assert bool(res.done.all())
    assert res.steps < 500  # every particle frozen: the loop stopped early


def test_stop_tol_freezes_particle() -> None:
    # a floor above the minimum: the particle stops as soon as V = F − ΔV ≤ ε2 (Theorem 2.1)
    theta0 = torch.tensor([[1.0, 1.0]], dtype=F64)
    res = simulate(
        lambda t: 0.5 * (t * t).sum(-1),
        theta0,
        5000,
        lr=0.05,
        loss_floor=0.01,
        bounce_period=None,
        bounce_patience=None,
    )
    assert bool(res.stopped[0])
    assert 0.0 < float(res.value[0]) - 0.01 <= 1e-40 or float(res.value[0]) <= 0.01


@pytest.mark.parametrize("nesterov", [False, True])
def test_batched_sgd_matches_torch(nesterov) -> None:
    theta0 = _starts(3, 2, seed=5)
    lrs = torch.tensor([1e-4, 5e-4, 2e-5], dtype=F64)
    mus = torch.tensor([0.9, 0.5, 0.99], dtype=F64)
    res = simulate_sgd(
        rosenbrock, theta0, 100, lr=lrs, momentum=mus, nesterov=nesterov, weight_decay=0.01
    )
    for m in range(3):
        ref = _run_optimizer(
            torch.optim.SGD,
            rosenbrock,
            theta0[m],
            100,
            lr=float(lrs[m]),
            momentum=float(mus[m]),
            nesterov=nesterov,
            weight_decay=0.01,
        )
        torch.testing.assert_close(res.theta[m], ref, rtol=1e-11, atol=1e-12)


def test_batched_sgd_dampening_and_zero_momentum() -> None:
    theta0 = _starts(2, 2, seed=6)
    mus = torch.tensor([0.0, 0.8], dtype=F64)
    res = simulate_sgd(rosenbrock, theta0, 50, lr=1e-4, momentum=mus, dampening=0.3)
    for m in range(2):
        ref = _run_optimizer(
            torch.optim.SGD,
            rosenbrock,
            theta0[m],
            50,
            lr=1e-4,
            momentum=float(mus[m]),
            dampening=0.3 if mus[m] else 0.0,
        )
        torch.testing.assert_close(res.theta[m], ref, rtol=1e-11, atol=1e-12)


def test_batched_adam_matches_torch() -> None:
    theta0 = _starts(3, 2, seed=8, scale=3.0)
    lrs = torch.tensor([1e-2, 5e-2, 1e-3], dtype=F64)
    res = simulate_adam(two_basin, theta0, 150, lr=lrs, betas=(0.8, 0.99), weight_decay=1e-3)
    for m in range(3):
        ref = _run_optimizer(
            torch.optim.Adam,
            two_basin,
            theta0[m],
            150,
            lr=float(lrs[m]),
            betas=(0.8, 0.99),
            weight_decay=1e-3,
        )
        torch.testing.assert_close(res.theta[m], ref, rtol=1e-10, atol=1e-12)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="theta0"):
        simulate(ackley, torch.zeros(2, dtype=F64), 10, lr=0.1)
    with pytest.raises(ValueError, match="bounce_direction"):
        simulate(ackley, torch.zeros(2, 2, dtype=F64) + 1, 10, lr=0.1, bounce_direction="x")
    with pytest.raises(ValueError, match="per-particle"):
        simulate(ackley, torch.ones(2, 2, dtype=F64), 10, lr=torch.ones(3, dtype=F64))


def test_ensemble_adapt_floor_matches_optimizer() -> None:
    """The adaptive floor of the ensemble is the optimizer's (minimum 3.7, F0 = 4.0).

    Floor crossings are knife-edge events (rounding decides the step at which F dips below F0
    once the particle crawls along the floor), so the trajectories are compared through the first
    ten adaptations, and the outcome (F below 3.701) for every particle.
    """
    ecdopt = pytest.importorskip("ecdopt")

    def bowl(t: torch.Tensor) -> torch.Tensor:
        return 3.7 + t[..., 0] ** 2 + 2 * t[..., 1] ** 2 + 0.1 * (t**2).sum(-1) ** 2

    theta0 = torch.tensor([[2.0, -1.5], [0.5, 0.5], [-3.0, 2.0]], dtype=torch.float64)
    kw = {"lr": 0.05, "loss_floor": 4.0, "adapt_floor": True}
    off = {"bounce_period": None, "bounce_patience": None}
    res = simulate(bowl, theta0, 600, record_every=1, **off, **kw)
    assert (res.best_value < 3.701).all()
    for m in range(3):
        p = torch.nn.Parameter(theta0[m].clone())
        opt = ecdopt.ECD([p], **off, **kw)
        adaptations, floor = 0, 4.0
        for k in range(600):
            opt.zero_grad()
            loss = bowl(p)
            loss.backward()
            opt.step(loss=loss)
            torch.testing.assert_close(
                res.history_theta[k + 1][m], p.detach(), rtol=1e-9, atol=1e-11
            )
            adaptations += opt.diagnostics()["loss_floor"] != floor
            floor = opt.diagnostics()["loss_floor"]
            if adaptations >= 10:
                break
        assert adaptations >= 10
