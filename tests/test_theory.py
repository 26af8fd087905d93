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
    hessians,
    hyp2f1_basin,
    in_basin,
    log_sphere_area,
    phase_space_volume,
    predicted_ratio,
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
