"""Property-based tests (hypothesis) of the ECD invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecdopt import BBI, ECD, HAMILTONIANS, get_hamiltonian
from ecdopt.chaos import (
    bounce_,
    bounce_due,
    counters_after_bounce,
    counters_after_update,
    draw_direction,
    rotate_,
)
from ecdopt.hamiltonians import projected_rescale, restoration_factor

F64 = torch.float64
positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


def _tensors(seed: int, shapes=((3,), (2, 2), (5,))) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64) for s in shapes]


def _norm(ts: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t**2).sum()) for t in ts))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["gaussian", "uniform"]))
def test_a_bounce_keeps_the_norm_of_the_momentum(seed, kind):
    momenta = _tensors(seed)
    before = _norm(momenta)
    xi = draw_direction(momenta, torch.Generator().manual_seed(seed + 1), kind)
    bounce_(momenta, xi)
    assert _norm(momenta) == pytest.approx(before, rel=1e-12)
    # the new direction is ξ's
    cos = sum(float((m * x).sum()) for m, x in zip(momenta, xi, strict=True))
    assert cos / (_norm(momenta) * _norm(xi)) == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), nu=st.floats(0.0, 10.0))
def test_a_rotation_keeps_the_norm_of_the_momentum(seed, nu):
    momenta = _tensors(seed)
    before = _norm(momenta)
    rotate_(momenta, draw_direction(momenta, torch.Generator().manual_seed(seed)), nu)
    assert _norm(momenta) == pytest.approx(before, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), nu=st.floats(1e-6, 10.0))
def test_a_rotation_is_the_literal_formula_on_both_paths(seed, nu):
    """Π ← |Π|·u/|u|, u = Π/|Π| + νξ, written out; the host path (floats) and the tensor path
    (tensor ν, a mask as the sync-free step passes it) agree with it; a False mask is a no-op.
    """
    momenta = _tensors(seed)
    xi = draw_direction(momenta, torch.Generator().manual_seed(seed + 7))
    norm = _norm(momenta)
    u = [m / norm + nu * x for m, x in zip(momenta, xi, strict=True)]
    u_norm = _norm(u)
    expected = [norm * t / u_norm for t in u]
    host = [m.clone() for m in momenta]
    rotate_(host, [x.clone() for x in xi], nu)
    device = [m.clone() for m in momenta]
    rotate_(device, [x.clone() for x in xi], torch.tensor(nu, dtype=F64), torch.tensor(True))
    for got in (host, device):
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12 * norm)
    kept = [m.clone() for m in momenta]
    rotate_(kept, [x.clone() for x in xi], torch.tensor(nu, dtype=F64), torch.tensor(False))
    assert all(torch.equal(k, m) for k, m in zip(kept, momenta, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(HAMILTONIANS)),
    potential=positive,
    extra=st.floats(0.0, 100.0),
    momentum_sq=positive,
)
def test_restoration_puts_the_momentum_on_the_energy_shell(name, potential, extra, momentum_sq):
    ham = get_hamiltonian(name)
    v0 = torch.tensor(potential * 1.5, dtype=F64)
    energy = ham.initial_energy(v0, extra)
    v = torch.tensor(potential, dtype=F64)
    target = ham.target_momentum_sq(energy, v)
    alpha = restoration_factor(torch.tensor(momentum_sq, dtype=F64), target, 1e-10)
    assert torch.isfinite(alpha)
    if target >= 0:
        restored = alpha**2 * momentum_sq
        assert float(restored) == pytest.approx(float(target), rel=1e-9, abs=1e-9)
        assert float(ham.energy(v, restored)) == pytest.approx(float(energy), rel=1e-9, abs=1e-9)
    else:
        assert alpha == 1.0


ENERGY_HAMILTONIANS = sorted(set(HAMILTONIANS) - {"unit_speed"})  # H(V, Π²) = E


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ENERGY_HAMILTONIANS), potential=positive, extra=st.floats(0.01, 10.0))
def test_kick_and_drift_are_the_hamiltonian_derivatives(name, potential, extra):
    """K = ∂H/∂V and D·Π = ∂H/∂Π on the shell H = E (Hamilton's equations)."""
    ham = get_hamiltonian(name, kinetic_offset=0.7)
    v0 = torch.tensor(potential, dtype=F64)
    energy = ham.initial_energy(v0, extra)
    v = (v0 * 0.9).requires_grad_(True)
    momentum = torch.tensor([0.6, 0.8], dtype=F64) * torch.sqrt(
        ham.target_momentum_sq(energy, v.detach())
    )
    momentum.requires_grad_(True)
    h = ham.energy(v, (momentum**2).sum())
    dh_dv, dh_dpi = torch.autograd.grad(h, (v, momentum))
    pi_sq = (momentum.detach() ** 2).sum()
    torch.testing.assert_close(dh_dv, ham.kick_factor(energy, v.detach()), rtol=1e-9, atol=0)
    torch.testing.assert_close(
        dh_dpi, ham.drift_factor(energy, v.detach(), pi_sq) * momentum.detach(), rtol=1e-9, atol=0
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), kick=st.floats(1e-4, 10.0), scale=st.floats(0.5, 2.0))
def test_unit_speed_kick_is_orthogonal_to_the_velocity(seed, kick, scale):
    """Unit speed: with p = α·Π restored (|p| = 1), the projected kick p − c·(G − p(p·G)),
    written as rescale·Π − c·G, changes p only orthogonally to it: p'·p = |p|² = 1."""
    gen = torch.Generator().manual_seed(seed)
    momentum = torch.randn(7, generator=gen, dtype=F64) * scale
    force = torch.randn(7, generator=gen, dtype=F64)
    alpha = 1.0 / float(momentum.norm())
    rescale = projected_rescale(alpha, kick, float(momentum @ force))
    kicked = rescale * momentum - kick * force
    assert float(kicked @ (alpha * momentum)) == pytest.approx(1.0, rel=1e-9)
    literal = alpha * momentum - kick * (force - alpha * momentum * float(alpha * momentum @ force))
    torch.testing.assert_close(kicked, literal, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    extra=st.floats(0.01, 5.0),
    lr=st.floats(1e-4, 1e-1),
    name=st.sampled_from(sorted(HAMILTONIANS)),
)
def test_theta_moves_whenever_v_is_between_zero_and_e(seed, extra, lr, name):
    """Theorem 2.1: with 0 < V < E the discrete step changes Θ; and E = E(V0, δE)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 4, generator=gen, dtype=F64)
    x = torch.nn.Parameter(torch.randn(4, generator=gen, dtype=F64))
    opt = ECD([x], lr=lr, hamiltonian=name, extra_energy=extra, seed=seed)
    for _ in range(5):
        before = x.detach().clone()
        opt.zero_grad()
        loss = (a @ x).pow(2).sum() + 0.5
        loss.backward()
        opt.step(loss=loss)
        assert not torch.equal(before, x.detach())
        assert torch.isfinite(x).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), extra=st.floats(0.0, 5.0), floor=st.floats(-1.0, 0.4))
def test_energy_is_the_initial_potential_plus_extra(seed, extra, floor):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=F64))
    opt = BBI([x], lr=1e-3, extra_energy=extra, loss_floor=floor)
    v0 = float((x.detach() ** 2).sum()) + 0.5 - floor
    for _ in range(3):
        opt.zero_grad()
        loss = (x**2).sum() + 0.5
        loss.backward()
        opt.step(loss=loss)
    assert opt.diagnostics()["energy"] == pytest.approx(v0 + extra, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    period=st.integers(1, 6),
    n_bounces=st.integers(0, 4),
    patience=st.one_of(st.none(), st.integers(1, 6)),
    minima=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_schedule_on_ints_and_tensors_agree(period, n_bounces, patience, minima):
    """The counter functions give the same schedule on host ints and on an int tensor batch."""
    c0, c1, done = 0, 0, 0
    t0 = torch.zeros(3, dtype=torch.int64)
    t1 = torch.zeros(3, dtype=torch.int64)
    tdone = torch.zeros(3, dtype=torch.int64)
    fixed_count = 0
    for new_min in minima:
        kw = {"bounce_period": period, "n_bounces": n_bounces, "bounce_patience": patience}
        fixed, due = bounce_due(c0, c1, done, **kw)
        tfixed, tdue = bounce_due(t0, t1, tdone, **kw)
        assert bool(due) == bool(tdue[0]) and bool(tdue.all()) == bool(tdue.any())
        if due:
            fixed_count += int(fixed)
            c0, c1, done = counters_after_bounce(c0, c1, done, fixed, n_bounces=n_bounces)
        t0, t1, tdone = (
            torch.where(tdue, a, b)
            for a, b in zip(
                counters_after_bounce(t0, t1, tdone, tfixed, n_bounces=n_bounces),
                (t0, t1, tdone),
                strict=True,
            )
        )
        c0, c1 = counters_after_update(c0, c1, new_min)
        t0, t1 = counters_after_update(t0, t1, torch.full((3,), new_min))
        assert (c0, c1, done) == (int(t0[0]), int(t1[0]), int(tdone[0]))
    assert fixed_count <= n_bounces
