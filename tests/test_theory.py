"""Phase-space volumes (eqs. 40, 47) and basin predictions (eq. 10, 18): ecdopt.theory."""

from __future__ import annotations

import math

import pytest
import torch

from ecdopt.landscapes import make_quadratic, make_two_basin
from ecdopt.theory import (
    basin_log_volume,
    basin_shares,
    basin_volume_numeric,
    ellipsoid_integral,
    hessians,
    hyp2f1_basin,
    in_basin,
    log_sphere_area,
    marginal_density,
    occupation_shares,
    phase_space_density,
    phase_space_volume,
    predicted_ratio,
    sample_marginal,
)

F64 = torch.float64


def test_sphere_area() -> None:
    assert math.exp(log_sphere_area(2)) == pytest.approx(2 * math.pi)
    assert math.exp(log_sphere_area(3)) == pytest.approx(4 * math.pi)


@pytest.mark.parametrize("z", [0.05, 1.0, 50.0, 5e4])
def test_hyp2f1_closed_forms(z) -> None:
    # ₂F₁(1, 1; 2; −z) = log(1 + z)/z  and  ₂F₁(½, ½; 3/2; −z) = asinh(√z)/√z
    assert hyp2f1_basin(2, z) == pytest.approx(math.log1p(z) / z, rel=1e-5)
    assert hyp2f1_basin(1, z) == pytest.approx(math.asinh(math.sqrt(z)) / math.sqrt(z), rel=1e-5)


def test_hyp2f1_against_scipy() -> None:
    special = pytest.importorskip("scipy.special")
    for n in (3, 4, 7):
        for z in (0.3, 30.0):
            ref = special.hyp2f1(n / 2, n / 2, n / 2 + 1, -z)
            assert hyp2f1_basin(n, z) == pytest.approx(ref, rel=1e-5)


def test_quadratic_basin_volume_closed_form() -> None:
    # n = 2, V = V_I + ½ηᵀη: eq. 40 over |η| < 1 is exactly 4π²E/(m1 m2)·log(1 + 1/(2V_I))
    land = make_quadratic([0.5, 2.0], center=[0.3, -0.2])
    hess = land.params["hessian"]
    v_i, energy = 1e-2, 3.0
    exact = 4 * math.pi**2 * energy / 1.0 * math.log1p(1 / (2 * v_i))
    pot = lambda t: land(t) + v_i  # noqa: E731
    assert basin_volume_numeric(pot, land.minima[0], hess, energy) == pytest.approx(exact, rel=1e-4)
    assert math.exp(basin_log_volume(hess, energy, v_i)) == pytest.approx(exact, rel=1e-5)
    grid = phase_space_volume(
        pot,
        energy,
        [-1.7, -1.9],
        [2.3, 1.5],
        points=800,
        region=lambda t: in_basin(t, land.minima[0], hess),
    )
    assert grid == pytest.approx(exact, rel=2e-2)


def test_eq40_reduces_to_eq47_for_small_v_in_3d() -> None:
    # n = 3: eq. 47 assumes V ≪ E; with E large the exact eq. 40 integrand approaches it
    land = make_quadratic([1.0, 2.0, 4.0])
    hess = land.params["hessian"]
    v_i, energy = 0.05, 1e3
    pot = lambda t: land(t) + v_i  # noqa: E731
    grid = phase_space_volume(
        pot,
        energy,
        [-1.05] * 3,
        [1.05] * 3,
        points=120,
        region=lambda t: in_basin(t, land.minima[0], hess),
    )
    assert grid == pytest.approx(math.exp(basin_log_volume(hess, energy, v_i)), rel=3e-2)


def test_shares_scale_with_inverse_sqrt_det() -> None:
    # two equally deep quadratic wells far apart: shares ∝ det(H)^(-1/2) (eq. 10)
    def pot(t):
        a = 0.5 * (0.5 * (t[..., 0] + 5) ** 2 + 0.5 * t[..., 1] ** 2)
        b = 0.5 * (2.0 * (t[..., 0] - 5) ** 2 + 4.0 * t[..., 1] ** 2)
        return torch.minimum(a, b)

    minima = torch.tensor([[-5.0, 0.0], [5.0, 0.0]], dtype=F64)
    shares = basin_shares(pot, minima)
    assert float(shares[0] / shares[1]) == pytest.approx(math.sqrt(8.0 / 0.25), rel=1e-9)
    # with V_I > 0 (eq. 47) the same ratio: the hypergeometric factor is common
    assert predicted_ratio(pot, minima, energy=10.0, v_min=1e-3) == pytest.approx(
        math.sqrt(32.0), rel=1e-6
    )
    assert float(shares.sum()) == pytest.approx(1.0)


def test_two_basin_prediction_and_cross_check() -> None:
    land = make_two_basin(2.75e-6)
    hs = hessians(land.fn, land.minima)
    # Hessians ≈ (0.8 + 2·1e-3·32)·I and (1.6 + 0.064)·I
    torch.testing.assert_close(
        torch.linalg.eigvalsh(hs[0]), torch.full((2,), 0.864, dtype=F64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        torch.linalg.eigvalsh(hs[1]), torch.full((2,), 1.664, dtype=F64), atol=1e-4, rtol=0
    )
    ratio = predicted_ratio(land.fn, land.minima, energy=44.26)
    assert ratio == pytest.approx(1.664 / 0.864, rel=1e-3)  # eq. 18: ≈ 1.93
    # eq. 40 integrated numerically over |η_I| < 1 with the full potential agrees within 1%
    v_i = 1e-3
    pot = lambda t: land.fn(t) - land.minimum_value + v_i  # noqa: E731
    num = [basin_volume_numeric(pot, land.minima[i], hs[i], 44.26) for i in range(2)]
    assert num[0] / num[1] == pytest.approx(ratio, rel=1e-2)


def _shell_integral(hamiltonian: str, v: float, energy: float, n: int, s: float = 1.0) -> float:
    """∫₀^∞ dp p^{n−1} δ(H(V, p²) − E), the δ a narrow Gaussian of width w (error O(w²))."""
    p = torch.linspace(1e-6, 60.0, 2_000_001, dtype=F64)
    h = {
        "born_infeld": torch.sqrt(v * (v + p * p)),
        "separable": math.log(v) + torch.log(s + p * p),
        "inverse_mass": 0.5 * v * p * p,
    }[hamiltonian]
    w = 1e-3
    kernel = torch.exp(-0.5 * ((h - energy) / w) ** 2) / (math.sqrt(2 * math.pi) * w)
    return float(torch.trapezoid(p ** (n - 1) * kernel, p))


@pytest.mark.parametrize("hamiltonian", ["born_infeld", "separable", "inverse_mass"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_marginal_density_is_the_momentum_integral_of_the_shell(hamiltonian, n) -> None:
    """The density is ∫dⁿΠ δ(H − E)/Ω_n, checked against that integral done numerically."""
    energies = {"born_infeld": 3.0, "separable": math.log(6.0), "inverse_mass": 3.0}
    energy = energies[hamiltonian]
    for v in (0.4, 1.3):
        dens = marginal_density(torch.tensor([v], dtype=F64), energy, n, hamiltonian=hamiltonian)
        ref = _shell_integral(hamiltonian, v, energy, n)
        assert float(dens[0]) == pytest.approx(ref, rel=1e-4)


def test_marginal_density_forms() -> None:
    f = torch.tensor([0.01, 0.5, 2.0, -1.0], dtype=F64)
    torch.testing.assert_close(
        marginal_density(f, 1.5, 4), torch.where(f > 0, phase_space_density(f, 1.5, 4), 0.0)
    )
    # unit speed: F_eff^(−ηn/2); separable with η: V = F_eff^η, 0 beyond V = e^E/s
    torch.testing.assert_close(
        marginal_density(f, 0.0, 4, hamiltonian="unit_speed", loss_power=0.5),
        torch.where(f > 0, f.clamp(min=1e-300) ** -1.0, 0.0),
    )
    sep = marginal_density(f, math.log(1.0), 2, hamiltonian="separable", loss_power=2.0)
    torch.testing.assert_close(sep, torch.tensor([0.5e4, 2.0, 0.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="hamiltonian"):
        marginal_density(f, 1.0, 2, hamiltonian="newton")


def test_ellipsoid_integral_matches_eq47_in_ten_dimensions() -> None:
    """Eq. 40 over |η| < 1 of a 10-D quadratic with V ≪ E is eq. 47 (Hessian not diagonal)."""
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)).double())
    hess = q @ torch.diag(torch.linspace(0.5, 4.0, 10, dtype=F64)) @ q.T
    center = torch.linspace(-1.0, 1.0, 10, dtype=F64)
    v_i, energy = 1e-2, 1e4
    land = make_quadratic(torch.linalg.eigvalsh(hess).tolist(), center=center.tolist(), rotation=q)
    pot = lambda t: land(t) + v_i  # noqa: E731
    num = basin_volume_numeric(pot, center, hess, energy, angular=64)
    assert math.log(num) == pytest.approx(basin_log_volume(hess, energy, v_i), abs=2e-3)


def test_ellipsoid_integral_against_a_grid_in_three_dimensions() -> None:
    """A lopsided density (not a function of |η| alone): random directions vs the midpoint grid."""
    hess = torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=F64))
    center = torch.tensor([0.1, -0.2, 0.3], dtype=F64)

    def density(p: torch.Tensor) -> torch.Tensor:
        d = p - center
        return torch.exp(0.8 * d[:, 0] - 0.5 * d[:, 1] * d[:, 2]) / (0.05 + (d * d).sum(-1))

    num = ellipsoid_integral(density, center, hess, radius=0.7, angular=2000)
    box = 0.7 / torch.diagonal(hess).sqrt()  # the semi-axes (H is diagonal)
    lo, hi, points = center - box, center + box, 100
    axes = [
        lo[i] + (torch.arange(points, dtype=F64) + 0.5) * (hi[i] - lo[i]) / points for i in range(3)
    ]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inside = in_basin(mesh, center, hess / 0.49)
    ref = float(torch.where(inside, density(mesh), 0.0).sum() * torch.prod((hi - lo) / points))
    assert num == pytest.approx(ref, rel=1e-2)


def test_occupation_shares_of_two_quadratic_basins() -> None:
    """Two quadratic wells (min of two quadratics): shares against a brute-force grid."""
    h1 = torch.diag(torch.tensor([0.8, 0.8], dtype=F64))
    h2 = torch.diag(torch.tensor([2.0, 1.0], dtype=F64))
    c = torch.tensor([[-1.5, 0.0], [1.5, 0.0]], dtype=F64)
    v_i, energy = 0.05, 2.0

    def pot(p: torch.Tensor) -> torch.Tensor:
        q1 = 0.5 * ((p - c[0]) @ h1 * (p - c[0])).sum(-1)
        q2 = 0.5 * ((p - c[1]) @ h2 * (p - c[1])).sum(-1)
        return v_i + torch.minimum(q1, q2)

    dens = lambda p: marginal_density(pot(p), energy, 2)  # noqa: E731
    shares = occupation_shares(dens, c, torch.stack([h1, h2]), [-5, -5], [5, 5], points=600)
    total = phase_space_volume(pot, energy, [-5, -5], [5, 5], points=1200)
    for i, h in enumerate((h1, h2)):
        region = lambda p, i=i, h=h: in_basin(p, c[i], h)  # noqa: E731
        part = phase_space_volume(pot, energy, [-5, -5], [5, 5], points=1200, region=region)
        assert float(shares[i]) == pytest.approx(part / total, rel=1e-2)
    # inside each ellipse the potential is exactly quadratic: the ratio is sqrt(det H2/det H1)
    assert float(shares[0] / shares[1]) == pytest.approx(math.sqrt(2.0 / 0.64), rel=1e-4)


def test_sample_marginal_draws_the_density() -> None:
    """The share of samples inside an ellipse matches the density's integral there."""
    hess = torch.eye(2, dtype=F64)
    center = torch.zeros(2, dtype=F64)
    dens = lambda p: 1.0 / (0.02 + 0.5 * (p * p).sum(-1))  # noqa: E731
    gen = torch.Generator().manual_seed(7)
    pts = sample_marginal(dens, [-2, -2], [2, 2], 40_000, points=800, generator=gen)
    assert pts.shape == (40_000, 2)
    assert bool((pts.abs() <= 2).all())
    inside = float(in_basin(pts, center, hess).double().mean())
    part = ellipsoid_integral(dens, center, hess)
    # phase_space_volume integrates Ω_2·E/V over V < E: with V = 1/dens and E = 1e6, Ω_2·E·dens
    total = phase_space_volume(lambda p: 1.0 / dens(p), 1e6, [-2, -2], [2, 2], points=2000)
    total /= 2 * math.pi * 1e6
    expected = part / total
    assert inside == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / 4e4))
