"""Landscapes: known minima, gradients, batching (ecdopt.landscapes)."""

from __future__ import annotations

import math

import pytest
import torch

from ecdopt.landscapes import (
    LANDSCAPES,
    ackley,
    make_gaussian_basins,
    make_landscape,
    make_quadratic,
    make_quadratic_basins,
    make_two_basin,
    two_basin,
    two_basin_epsilon,
    two_basin_minima,
    zakharov,
)

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(LANDSCAPES))
def test_minima_are_minima_with_zero_gradient(name) -> None:
    land = make_landscape(name)  # two_basin: ε solved, both minima equally deep
    x = land.minima.clone().requires_grad_(True)
    f = land(x)
    (g,) = torch.autograd.grad(f.sum(), x)
    torch.testing.assert_close(
        f.detach(), torch.full_like(f, land.minimum_value), atol=1e-9, rtol=1e-12
    )
    assert float(g.abs().max()) < 1e-7
    # every nearby point is higher (a strict local minimum)
    gen = torch.Generator().manual_seed(0)
    for m in land.minima:
        near = m + 1e-2 * torch.randn(64, land.dim, generator=gen, dtype=F64)
        assert bool((land(near) > land.minimum_value).all())


@pytest.mark.parametrize("name", sorted(LANDSCAPES))
def test_batched_gradients_match_finite_differences(name) -> None:
    land = make_landscape(name) if name != "two_basin" else make_two_basin(2.75e-6)
    gen = torch.Generator().manual_seed(1)
    lo, hi = land.bounds
    x = (lo + (hi - lo) * torch.rand(5, land.dim, generator=gen, dtype=F64)).requires_grad_(True)
    (g,) = torch.autograd.grad(land(x).sum(), x)
    h = 1e-6
    for i in range(land.dim):
        e = torch.zeros(land.dim, dtype=F64)
        e[i] = h
        fd = (land(x.detach() + e) - land(x.detach() - e)) / (2 * h)
        torch.testing.assert_close(g[:, i], fd, rtol=1e-5, atol=1e-5)
    # a batch of particles gives the same values as one by one; extra leading dims work
    one = torch.stack([land(p[None])[0] for p in x.detach()])
    torch.testing.assert_close(land(x.detach()), one)
    assert land(x.detach().reshape(5, 1, land.dim)).shape == (5, 1)


def test_paper_formulas_by_hand() -> None:
    t = torch.tensor([1.0, -2.0], dtype=F64)
    r = math.sqrt(0.5 * 5.0)
    expected = -20 * math.exp(-0.2 * r) - math.exp(0.5 * (1 + 1)) + math.e + 20  # eq. 15
    assert float(ackley(t)) == pytest.approx(expected, rel=1e-14)
    assert float(ackley(t, b=0.02)) == pytest.approx(
        -20 * math.exp(-0.02 * r) - math.e + math.e + 20, rel=1e-14
    )
    z = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    s = 0.5 * (1 + 2 + 3)
    assert float(zakharov(z)) == pytest.approx(3 + s**2 + s**4, rel=1e-14)  # eq. 16
    # eq. 17 at (10, −10): both distances are sqrt(208) → 1 + 1e-3·208² ≈ 44.26
    assert float(two_basin(torch.tensor([10.0, -10.0], dtype=F64))) == pytest.approx(
        1 + 1e-3 * 208**2, rel=1e-6
    )


def test_two_basin_epsilon_equalises_the_minima() -> None:
    eps = two_basin_epsilon()
    assert 2.7e-6 < eps < 2.8e-6  # the paper's ε ~ 1e-6, the authors' 2.75e-6
    _, values = two_basin_minima(eps)
    assert abs(float(values[0] - values[1])) < 1e-15
    _, values_authors = two_basin_minima(2.75e-6)
    assert abs(float(values_authors[0] - values_authors[1])) > 1e-9  # not exactly equal


def test_quadratic_has_the_given_spectrum() -> None:
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=F64))[0]
    land = make_quadratic([0.1, 1.0, 10.0], center=[1.0, 2.0, 3.0], rotation=q)
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    hess = torch.func.hessian(lambda v: land(v[None])[0])(x[0])
    torch.testing.assert_close(
        torch.linalg.eigvalsh(hess), torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    )
    assert float(land(x)[0]) == 0.0


def test_unknown_landscape() -> None:
    with pytest.raises(ValueError, match="unknown landscape"):
        make_landscape("nope")


def test_gaussian_basins_generalise_eq17() -> None:
    """With A = 0.8·I and 1.6·I in 2-D it is eq. 17, and w_2 = 1 − ε with the solved ε."""
    land = make_gaussian_basins([[0.8, 0.8], [1.6, 1.6]])
    assert 1.0 - land.params["weights"][1] == pytest.approx(two_basin_epsilon(), rel=1e-6)
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=F64) * 4
    torch.testing.assert_close(land(pts), make_two_basin()(pts), atol=1e-12, rtol=0)


def test_gaussian_basins_in_ten_dimensions() -> None:
    """Equally deep minima at zero gradient; Hessians A_I + 2λ|c1 − c2|²·I (λ = 1e-3)."""
    spectra = [[0.8] * 10, [3.2, 3.2] + [0.8] * 8]
    land = make_gaussian_basins(spectra)
    x = land.minima.clone().requires_grad_(True)
    f = land(x)
    (g,) = torch.autograd.grad(f.sum(), x)
    assert float(g.abs().max()) < 1e-9
    assert abs(float(f[0] - f[1])) < 1e-15
    hess = torch.func.hessian(lambda v: land(v[None])[0])(land.minima[1].clone())
    expected = torch.tensor(sorted(spectra[1]), dtype=F64) + 2e-3 * 32
    torch.testing.assert_close(torch.linalg.eigvalsh(hess), expected, atol=2e-4, rtol=0)


def test_quadratic_basins_are_the_lower_quadratic() -> None:
    centers = torch.tensor([[-1.0, 0.0], [2.0, 0.0]], dtype=F64)
    hess = torch.stack([torch.eye(2, dtype=F64), torch.diag(torch.tensor([4.0, 1.0], dtype=F64))])
    land = make_quadratic_basins(centers, hess, [0.1, 0.0])
    pts = torch.tensor([[-1.0, 0.0], [2.0, 0.0], [0.5, 1.0]], dtype=F64)
    q1 = 0.1 + 0.5 * ((pts - centers[0]) ** 2).sum(-1)
    q2 = 0.5 * (4 * (pts[:, 0] - 2) ** 2 + pts[:, 1] ** 2)
    torch.testing.assert_close(land(pts), torch.minimum(q1, q2))
    assert land.minimum_value == 0.0 and land.dim == 2
