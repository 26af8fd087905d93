"""jax.vmap over particles of ecdopt.optax against ecdopt.ensemble.simulate: the first-passage
basin counts of the two-basin landscape (§4.3) agree within sampling error."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

import ecdopt.optax as eo
from ecdopt.ensemble import simulate
from ecdopt.experiments.synthetic.protocols import BasinsConfig, basin_regions
from ecdopt.landscapes import TWO_BASIN_C1, TWO_BASIN_C2, two_basin

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARTICLES = 1000
# The protocol's settings (lr 0.01, T0 = 20, T1 = 750 over 6000 steps) run 4× faster in time:
# Δt = 0.04, T0 = 5, T1 = 190, 1500 steps (about 95% of the particles reach a basin).
SETTINGS = {
    "lr": 0.04,
    "loss_floor": BasinsConfig.loss_floor,
    "bounce_period": 5,
    "n_bounces": 1,
    "bounce_patience": 190,
}
STEPS = 1500
EPSILON = BasinsConfig.epsilon


def two_basin_jax(theta: jax.Array) -> jax.Array:
    """ecdopt.landscapes.two_basin (eq. 17) for one 2-D particle."""
    d1 = jnp.sum((theta - jnp.asarray(TWO_BASIN_C1)) ** 2)
    d2 = jnp.sum((theta - jnp.asarray(TWO_BASIN_C2)) ** 2)
    return -jnp.exp(-0.4 * d1) - (1.0 - EPSILON) * jnp.exp(-0.8 * d2) + 1e-3 * d1 * d2 + 1.0


def basin_label(theta, centers, hessians, xp):
    """1 or 2 when (Θ − c_I)ᵀ H_I (Θ − c_I) < 1 (basin I first), else 0: the protocol's regions,
    written elementwise for 2-D points (the same quadratic form as ecdopt.theory.in_basin)."""
    inside = []
    for c, h in zip(centers, hessians, strict=True):
        d0, d1 = theta[..., 0] - c[0], theta[..., 1] - c[1]
        inside.append(h[0][0] * d0 * d0 + (h[0][1] + h[1][0]) * d0 * d1 + h[1][1] * d1 * d1 < 1.0)
    return xp.where(inside[0], 1, xp.where(inside[1], 2, 0))


def torch_counts(centers, hessians) -> np.ndarray:
    labels = torch.zeros(PARTICLES, dtype=torch.int64)

    def classify(k, theta, value):
        labels[:] = torch.where(labels == 0, basin_label(theta, centers, hessians, torch), labels)
        return labels > 0

    start = torch.tensor(BasinsConfig.start, dtype=torch.float64).expand(PARTICLES, 2).clone()
    res = simulate(
        lambda t: two_basin(t, epsilon=EPSILON), start, STEPS, seed=1, callback=classify, **SETTINGS
    )
    assert int(res.skipped.sum()) == 0
    return np.bincount(labels.numpy(), minlength=3)


def jax_counts(centers, hessians) -> np.ndarray:
    tx = eo.bbi(SETTINGS["lr"], **{k: v for k, v in SETTINGS.items() if k != "lr"})
    start = jnp.asarray(BasinsConfig.start)

    def particle(key):
        def body(carry, _):
            theta, state, label = carry
            value, grad = jax.value_and_grad(two_basin_jax)(theta)
            label = jnp.where(label == 0, basin_label(theta, centers, hessians, jnp), label)
            updates, state = tx.update(grad, state, theta, value=value)
            return (theta + updates, state, label), None

        carry = (start, tx.init(start)._replace(key=key), jnp.asarray(0))
        (theta, state, label), _ = lax.scan(body, carry, None, length=STEPS)
        label = jnp.where(label == 0, basin_label(theta, centers, hessians, jnp), label)
        return label, state.skipped

    keys = jax.random.split(jax.random.PRNGKey(1), PARTICLES)
    labels, skipped = jax.jit(jax.vmap(particle))(keys)
    assert int(skipped.sum()) == 0
    return np.bincount(np.asarray(labels), minlength=3)


def test_landscape_matches_torch(x64) -> None:
    points = np.random.default_rng(0).uniform(-6, 6, (20, 2))
    expected = two_basin(torch.as_tensor(points), epsilon=EPSILON).numpy()
    got = jax.vmap(two_basin_jax)(jnp.asarray(points))
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)


def test_vmap_first_passage_counts_match_the_ensemble(x64) -> None:
    centers, hessians = (t.numpy().tolist() for t in basin_regions(EPSILON))
    counts = {"torch": torch_counts(centers, hessians), "jax": jax_counts(centers, hessians)}
    for label, name in enumerate(("neither", "basin1", "basin2")):
        p_torch, p_jax = (counts[k][label] / PARTICLES for k in ("torch", "jax"))
        pooled = (p_torch + p_jax) / 2
        sigma = math.sqrt(max(pooled * (1 - pooled), 1e-4) * 2 / PARTICLES)
        print(f"{name}: torch {p_torch:.3f}, jax {p_jax:.3f}, difference sd {sigma:.3f}")
        assert abs(p_torch - p_jax) <= 4 * sigma
    assert counts["jax"][1] > 300 and counts["jax"][2] > 200  # both basins are reached
