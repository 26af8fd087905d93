"""Confidence intervals (ecdopt.stats): known values, and coverage on simulated data."""

from __future__ import annotations

import math

import pytest
import torch

from ecdopt.stats import (
    Interval,
    autocorrelation_time,
    batch_means_interval,
    blocking_standard_errors,
    count_ratio_interval,
    linear_extrapolation,
    mean_interval,
    normal_quantile,
    ratio_of_means_interval,
    wilson_interval,
)

F64 = torch.float64


def test_normal_quantile() -> None:
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.6826894921) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="confidence"):
        normal_quantile(1.0)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # Wilson's 95% intervals, computed by hand from the closed form
        (0, 10, 0.0, 0.277533),
        (5, 10, 0.236593, 0.763407),
        (10, 10, 0.722467, 1.0),
        (92, 100, 0.850019, 0.958907),
    ],
)
def test_wilson_known_values(k, n, low, high) -> None:
    iv = wilson_interval(k, n)
    assert iv.value == pytest.approx(k / n)
    assert iv.low == pytest.approx(low, abs=1e-5)
    assert iv.high == pytest.approx(high, abs=1e-5)


def test_wilson_bad_input_and_empty() -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    iv = wilson_interval(0, 0)
    assert math.isnan(iv.value) and (iv.low, iv.high) == (0.0, 1.0)


def test_wilson_covers_at_the_nominal_rate() -> None:
    gen = torch.Generator().manual_seed(1)
    p, n, reps = 0.3, 40, 4000
    k = torch.binomial(torch.full((reps,), float(n)), torch.full((reps,), p), generator=gen)
    covered = sum(wilson_interval(int(x), n).contains(p) for x in k.tolist())
    assert 0.93 < covered / reps < 0.975


def test_count_ratio_interval() -> None:
    iv = count_ratio_interval(50, 50)
    assert iv.value == 1.0
    assert iv.low * iv.high == pytest.approx(1.0)  # p ↔ 1 − p: reciprocal bounds
    iv = count_ratio_interval(2540, 1460)
    assert iv.value == pytest.approx(2540 / 1460)
    assert iv.low < iv.value < iv.high
    assert count_ratio_interval(3, 0).high == math.inf


def test_mean_interval_known_value() -> None:
    iv = mean_interval([1.0, 2.0, 3.0, 4.0])
    se = math.sqrt(5.0 / 3.0) / 2.0
    assert iv.value == 2.5 and iv.stderr == pytest.approx(se)
    assert iv.high - iv.value == pytest.approx(1.959964 * se, rel=1e-6)
    with pytest.raises(ValueError, match="2 replicates"):
        mean_interval([1.0])


def test_ratio_of_means_covers_correlated_pairs() -> None:
    """a_i and b_i anti-correlated (like the time in basin I and in basin II of a particle)."""
    gen = torch.Generator().manual_seed(2)
    true_ratio, covered, reps = 0.4 / 0.2, 0, 1500
    for _ in range(reps):
        u = torch.rand(60, generator=gen, dtype=F64)
        a = 0.4 + 0.3 * (u - 0.5)
        b = 0.2 - 0.1 * (u - 0.5) + 0.05 * (torch.rand(60, generator=gen, dtype=F64) - 0.5)
        covered += ratio_of_means_interval(a, b).contains(true_ratio)
    assert 0.93 < covered / reps < 0.97


def test_ratio_of_means_bad_input() -> None:
    with pytest.raises(ValueError, match="pair up"):
        ratio_of_means_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="mean\\(b\\)"):
        ratio_of_means_interval([1.0, 2.0], [0.0, 0.0])


def _ar1(phi: float, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Stationary AR(1) series x_t = φ x_{t−1} + e_t, one per row."""
    noise = torch.randn(shape, generator=gen, dtype=F64)
    x = torch.empty(shape, dtype=F64)
    x[:, 0] = noise[:, 0] / math.sqrt(1 - phi * phi)
    for i in range(1, shape[1]):
        x[:, i] = phi * x[:, i - 1] + noise[:, i]
    return x


def test_autocorrelation_time_of_ar1_and_white_noise() -> None:
    """AR(1) with φ = 0.9: τ = (1 + φ)/(2(1 − φ)) = 9.5 samples; white noise: τ = ½."""
    x = _ar1(0.9, (1, 2**15), torch.Generator().manual_seed(3))[0]
    assert autocorrelation_time(x) == pytest.approx(9.5, rel=0.15)
    levels = blocking_standard_errors(x)
    assert [s for s, _ in levels[:4]] == [1, 2, 4, 8]
    plateau = max(se for _, se in levels[5:9])  # blocks of 32-256 samples ≫ τ
    assert plateau / levels[0][1] == pytest.approx(math.sqrt(2 * 9.5), rel=0.2)
    white = torch.randn(2**14, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert autocorrelation_time(white) == pytest.approx(0.5, abs=0.1)


def test_batch_means_covers_a_correlated_mean() -> None:
    series = _ar1(0.8, (400, 4000), torch.Generator().manual_seed(5)) + 1.0
    ivs = [batch_means_interval(row, batches=20) for row in series]
    assert 0.88 < sum(iv.contains(1.0) for iv in ivs) / len(ivs) < 0.99
    naive = mean_interval(series[0])  # treats 4000 correlated values as independent
    assert ivs[0].stderr > 2 * naive.stderr


def test_linear_extrapolation() -> None:
    x, y = [0.01, 0.02, 0.04], [2.01, 2.02, 2.04]
    a, b = linear_extrapolation(x, y, [0.01, 0.01, 0.01])
    assert a.value == pytest.approx(2.0) and b.value == pytest.approx(1.0)
    # two points: the intercept's error follows from the two errors alone
    a2, _ = linear_extrapolation([1.0, 2.0], [3.0, 4.0], [0.1, 0.1])
    assert a2.value == pytest.approx(2.0)
    assert a2.stderr == pytest.approx(math.sqrt(4 * 0.01 + 0.01))  # a = 2y1 − y2
    with pytest.raises(ValueError, match="distinct"):
        linear_extrapolation([1.0, 1.0], [1.0, 2.0], [0.1, 0.1])


def test_interval_dict_and_text() -> None:
    iv = Interval(1.5, 1.0, 2.0, 0.25, 0.95, "x")
    assert iv.as_dict()["high"] == 2.0
    assert iv.text() == "1.5 [1, 2]"
