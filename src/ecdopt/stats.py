"""Confidence intervals for what the experiments report: counts, ratios and time averages.

Every function here is pure (plain numbers or 1-D/2-D tensors in, an :class:`Interval` or
numbers out) and uses a normal approximation at the given ``confidence`` (two-sided, 0.95 by
default) unless it says otherwise.

- Counts (k successes out of n independent tries): :func:`wilson_interval`; the ratio of two
  counts a : b (e.g. first passages into basin I vs II): :func:`count_ratio_interval`.
- Independent replicates (one number per particle, run or seed): :func:`mean_interval`, and
  the ratio of two means (time in basin I / time in basin II, per particle):
  :func:`ratio_of_means_interval` (delta method).
- One correlated time series (a single long trajectory): :func:`batch_means_interval`, the
  blocking analysis of Flyvbjerg & Petersen (1989), :func:`blocking_standard_errors`, and the
  integrated autocorrelation time with Sokal's window, :func:`autocorrelation_time`. Naive
  binomial errors on a time average understate the error by sqrt(2τ) when successive samples
  are correlated over τ steps; these do not.
- A quantity measured at several step sizes, extrapolated linearly to zero:
  :func:`linear_extrapolation` (weighted least squares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import torch
from torch import Tensor

__all__ = [
    "Interval",
    "autocorrelation_time",
    "batch_means_interval",
    "blocking_standard_errors",
    "count_ratio_interval",
    "linear_extrapolation",
    "mean_interval",
    "normal_quantile",
    "ratio_of_means_interval",
    "wilson_interval",
]

ArrayLike = Tensor | Sequence[float]


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval [low, high].

    ``stderr`` is the standard error behind the interval (None when the interval is not
    symmetric in it, e.g. Wilson's); ``method`` names how it was computed.
    """

    value: float
    low: float
    high: float
    stderr: float | None = None
    confidence: float = 0.95
    method: str = ""

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in [low, high]."""
        return self.low <= x <= self.high

    def text(self, digits: int = 3) -> str:
        """``value [low, high]`` with ``digits`` significant digits."""
        f = f"{{:.{digits}g}}"
        return f"{f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}]"


def normal_quantile(confidence: float = 0.95) -> float:
    """z such that a standard normal lies in [−z, z] with probability ``confidence``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + 0.5 * confidence)


def _vector(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson's score interval for a success probability p from k = ``successes`` of n tries.

    p̂ = k/n; the interval is (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). Unlike
    p̂ ± z·sqrt(p̂(1−p̂)/n) it stays inside [0, 1] and is not empty at k = 0 or k = n.
    """
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(math.nan, 0.0, 1.0, None, confidence, "wilson")
    z = normal_quantile(confidence)
    n, p = float(trials), successes / trials
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), None, confidence, "wilson")


def count_ratio_interval(a: int, b: int, confidence: float = 0.95) -> Interval:
    """The ratio a/b of two counts of independent runs (each run lands in A, B or neither).

    Given n = a + b, a is binomial with p = P(A | A or B), and a/b = p/(1 − p) is monotone in
    p: the interval is Wilson's interval for p mapped through p/(1 − p) (``high`` is inf when
    b = 0). ``value`` is a/b (inf for b = 0, nan for a = b = 0).
    """
    if a < 0 or b < 0:
        raise ValueError(f"counts must be >= 0, got {a} and {b}")
    w = wilson_interval(a, a + b, confidence)

    def odds(p: float) -> float:
        return math.inf if p >= 1.0 else p / (1.0 - p)

    value = math.nan if a + b == 0 else (math.inf if b == 0 else a / b)
    return Interval(value, odds(w.low), odds(w.high), None, confidence, "wilson-odds")


def mean_interval(x: ArrayLike, confidence: float = 0.95) -> Interval:
    """Mean of independent replicates with the standard error std/sqrt(n) (n ≥ 2)."""
    t = _vector(x, "x")
    n = t.numel()
    if n < 2:
        raise ValueError(f"need at least 2 replicates for an error bar, got {n}")
    mean, se = float(t.mean()), float(t.std(unbiased=True)) / math.sqrt(n)
    z = normal_quantile(confidence)
    return Interval(mean, mean - z * se, mean + z * se, se, confidence, "replicates")


def ratio_of_means_interval(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> Interval:
    """R = mean(a)/mean(b) from paired independent replicates (a_i, b_i), by the delta method.

    The standard error is sqrt(var(a − R·b)/n)/mean(b): it accounts for the correlation of a_i
    and b_i (time in basin I and in basin II of the same particle are anti-correlated).
    Needs n ≥ 2 and mean(b) > 0.
    """
    ta, tb = _vector(a, "a"), _vector(b, "b")
    if ta.numel() != tb.numel():
        raise ValueError(f"a and b must pair up, got {ta.numel()} and {tb.numel()} values")
    n = ta.numel()
    if n < 2:
        raise ValueError(f"need at least 2 replicates for an error bar, got {n}")
    mb = float(tb.mean())
    if mb <= 0:
        raise ValueError("mean(b) must be > 0 for a ratio")
    r = float(ta.mean()) / mb
    se = float((ta - r * tb).std(unbiased=True)) / math.sqrt(n) / mb
    z = normal_quantile(confidence)
    return Interval(r, r - z * se, r + z * se, se, confidence, "delta-method")


def blocking_standard_errors(x: ArrayLike) -> list[tuple[int, float]]:
    """Standard error of the mean of a correlated series at block sizes 1, 2, 4, … (blocking).

    At block size b the series is cut into ⌊N/b⌋ blocks and the error is std(block means)/
    sqrt(blocks). It grows with b until blocks are longer than the correlation time, then
    levels off at the true error (Flyvbjerg & Petersen 1989). Levels with < 8 blocks are left
    out. Returns ``[(block_size, stderr), ...]``.
    """
    t = _vector(x, "x")
    out, size = [], 1
    while t.numel() >= 8:
        out.append((size, float(t.std(unbiased=True)) / math.sqrt(t.numel())))
        if t.numel() % 2:
            t = t[:-1]
        t = 0.5 * (t[0::2] + t[1::2])
        size *= 2
    return out


def autocorrelation_time(x: ArrayLike, window: float = 5.0) -> float:
    """Integrated autocorrelation time τ = ½ + Σ_{t≥1} ρ(t) of a series, in samples.

    ρ is the normalised autocorrelation function (by FFT); the sum runs up to the smallest
    lag W with W ≥ ``window``·τ(W) (Sokal's automatic window), which keeps the noise of the
    far tail out. τ = ½ for independent samples; a series of N values holds about N/(2τ)
    independent ones, so its mean's error is sqrt(2τ) times the naive one.
    """
    t = _vector(x, "x")
    n = t.numel()
    if n < 8:
        raise ValueError(f"need at least 8 values, got {n}")
    d = t - t.mean()
    spectrum = torch.fft.rfft(d, n=2 * n)
    acf = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * n)[:n]
    if float(acf[0]) == 0.0:
        return 0.5
    rho = (acf / acf[0]).tolist()
    tau = 0.5
    for lag in range(1, n):
        tau += rho[lag]
        if lag >= window * tau:
            break
    return max(tau, 0.5)


def batch_means_interval(x: ArrayLike, batches: int = 20, confidence: float = 0.95) -> Interval:
    """Mean of one correlated series with a batch-means error: cut it into ``batches``
    contiguous batches and treat their means as independent replicates. Valid when a batch is
    much longer than the autocorrelation time (check with :func:`autocorrelation_time`)."""
    t = _vector(x, "x")
    if batches < 2 or t.numel() < batches:
        raise ValueError(f"need 2 <= batches <= len(x), got {batches} batches of {t.numel()}")
    usable = (t.numel() // batches) * batches
    iv = mean_interval(t[:usable].view(batches, -1).mean(dim=1), confidence)
    return Interval(iv.value, iv.low, iv.high, iv.stderr, confidence, "batch-means")


def linear_extrapolation(
    x: ArrayLike, y: ArrayLike, stderr: ArrayLike, confidence: float = 0.95
) -> tuple[Interval, Interval]:
    """Weighted least-squares line y = a + b·x through points with standard errors ``stderr``;
    returns the intercept a (the value at x = 0, e.g. Δt → 0) and the slope b as intervals.

    Needs ≥ 2 distinct x. With 2 points the line passes through both (no goodness of fit).
    """
    tx, ty, ts = _vector(x, "x"), _vector(y, "y"), _vector(stderr, "stderr")
    if not tx.numel() == ty.numel() == ts.numel():
        raise ValueError("x, y and stderr must have the same length")
    if tx.numel() < 2 or float(tx.max() - tx.min()) == 0:
        raise ValueError("need at least two distinct x for a line")
    if bool((ts <= 0).any()):
        raise ValueError("stderr must be > 0")
    w = 1.0 / ts**2
    design = torch.stack([torch.ones_like(tx), tx], dim=1)
    normal = design.T @ (w[:, None] * design)
    cov = torch.linalg.inv(normal)
    coef = cov @ (design.T @ (w * ty))
    z = normal_quantile(confidence)
    out = []
    for i in range(2):
        c, se = float(coef[i]), math.sqrt(float(cov[i, i]))
        out.append(Interval(c, c - z * se, c + z * se, se, confidence, "weighted-least-squares"))
    return out[0], out[1]
