"""``rotation_every=k``: ECDSep's rotation every k-th step with strength ν·sqrt(k), an explicit
option (k = 1, the default, is the paper's every-step rotation, bit for bit). Its parity with
a hand-made schedule, with the ensemble, and its statistics: the direction of Π diffuses as
with k = 1 to first order in ν², and not without the sqrt(k)."""

from __future__ import annotations

import math

import pytest
import torch

from ecdopt import ECD, ECDSep, chaos
from ecdopt.ensemble import simulate

F64 = torch.float64


def _loss(x: torch.Tensor) -> torch.Tensor:
    return (x**2).sum() + 0.3 * torch.sin(3 * x).sum() + 2.0 + 0.01 * (x**4).sum()


def _run(opt, x, steps, after_step=None):
    out = []
    for k in range(steps):
        opt.zero_grad()
        loss = _loss(x)
        loss.backward()
        opt.step(loss=loss)
        if after_step is not None:
            after_step(k)
        out.append(x.detach().clone())
    return out


def test_every_step_is_the_default_bit_for_bit():
    runs = []
    for extra in ({}, {"rotation_every": 1}):
        x = torch.nn.Parameter(torch.linspace(-1.0, 1.5, 7, dtype=F64))
        runs.append(_run(ECDSep([x], lr=0.02, chaos=0.05, seed=4, **extra), x, 60))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k", [2, 5])
def test_rotates_at_steps_k_minus_1_2k_minus_1_with_nu_sqrt_k(k):
    """The optimizer with ``rotation_every=k`` is the rotation-free one plus a rotation of
    strength ν·sqrt(k) after steps k−1, 2k−1, ... with the keyed ξ of those steps."""
    nu, seed = 0.05, 9
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.5, 7, dtype=F64))
    scheduled = _run(ECDSep([x], lr=0.02, chaos=nu, rotation_every=k, seed=seed), x, 40)

    y = torch.nn.Parameter(torch.linspace(-1.0, 1.5, 7, dtype=F64))
    plain = ECDSep([y], lr=0.02, chaos=0.0, seed=seed)
    momentum = []

    def rotate(step: int) -> None:
        if (step + 1) % k == 0:
            m = plain.state[y]["momentum"]
            xi = chaos.keyed_draw(
                [m], seed=seed, step=step, stream=chaos.STREAM_ROTATION, kind="gaussian",
                generators={},
            )  # fmt: skip
            chaos.rotate_([m], xi, nu * math.sqrt(k))
            momentum.append(m.clone())

    by_hand = _run(plain, y, 40, rotate)
    assert len(momentum) == 40 // k
    for step, (a, b) in enumerate(zip(scheduled, by_hand, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"step {step}")


def _landscape(t: torch.Tensor) -> torch.Tensor:
    x, y = t[..., 0], t[..., 1]
    return 0.5 * x * x + y * y + 0.3 * torch.sin(3.0 * x) * torch.cos(2.0 * y) + 1.0


@pytest.mark.parametrize("rng", ["torch", "counter"])
def test_ensemble_is_the_optimizer(rng):
    m, steps = 4, 300
    kwargs = {"hamiltonian": "separable", "chaos": 0.08, "rotation_every": 3, "rng": rng,
              "bounce_period": None, "bounce_patience": None, "extra_energy": 0.5}  # fmt: skip
    theta0 = (torch.rand(m, 2, generator=torch.Generator().manual_seed(3), dtype=F64) - 0.5) * 3
    result = simulate(_landscape, theta0, steps, lr=0.03, seeds=[5, 6, 7, 8], record_every=1,
                      **kwargs)  # fmt: skip
    for i in range(m):
        p = torch.nn.Parameter(theta0[i].clone())
        opt = ECD([p], lr=0.03, seed=5 + i, **kwargs)
        out = []
        for _ in range(steps):
            opt.zero_grad()
            loss = _landscape(p)
            loss.backward()
            opt.step(loss=loss)
            out.append(p.detach().clone())
        torch.testing.assert_close(
            torch.stack(out), result.history_theta[1:, i], rtol=0, atol=1e-12
        )


def _mean_cosine(nu: float, k: int, *, n: int = 16, steps: int = 48, m: int = 2000) -> float:
    """E[cos] between the direction of Π at the start and after ``steps`` steps, for ``m``
    free particles (a flat loss: only the rotation turns Π), read off their displacements."""

    def flat(t: torch.Tensor) -> torch.Tensor:
        return 1.0 + 0.0 * t.sum(-1)

    result = simulate(
        flat, torch.zeros(m, n, dtype=F64), steps + 1, hamiltonian="separable", lr=0.1,
        extra_energy=1.0, chaos=nu, rotation_every=k, bounce_period=None, bounce_patience=None,
        seed=3, rng="counter", record_every=1,
    )  # fmt: skip
    moves = result.history_theta[1:] - result.history_theta[:-1]  # ∝ Π before each rotation
    moves = moves / moves.norm(dim=-1, keepdim=True)
    return float((moves[0] * moves[steps]).sum(-1).mean())


def test_the_direction_diffuses_as_with_every_step_rotations():
    """Rotations u = Π/|Π| + νξ turn the direction by E[cos] ≈ 1 − ν²(n−1)/2 each, so after N
    steps E[cos] ≈ exp(−N ν² (n−1)/2) (first order in ν²). Every k-th step with ν·sqrt(k)
    diffuses the same; every k-th step with ν alone would diffuse k times less."""
    nu, n, steps = 0.03, 16, 48
    theory = math.exp(-steps * nu * nu * (n - 1) / 2)
    every_step = _mean_cosine(nu, 1)
    assert every_step == pytest.approx(theory, abs=0.015)  # standard error ~0.002
    for k in (4, 8):
        assert _mean_cosine(nu, k) == pytest.approx(every_step, abs=0.015)
    without_sqrt_k = _mean_cosine(nu / 2, 4)  # ν every 4th step
    assert without_sqrt_k - every_step > 0.15


@pytest.mark.parametrize("value", [0, -2, 1.5, True, None])
def test_rotation_every_must_be_a_positive_int(value):
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rotation_every must be an int >= 1"):
        ECDSep([x], lr=0.01, rotation_every=value)
