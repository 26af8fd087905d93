"""ecdopt.optax against the torch optimizers (float64 parity), and its JAX behaviour: jit, vmap,
optax.chain, schedules, checkpoints, skips and argument checks."""

from __future__ import annotations

import inspect
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import serialization
from jax import lax

import ecdopt
import ecdopt.optax as eo
from ecdopt.landscapes import zakharov

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
ZAKHAROV_LR = 0.0026  # the authors' Δt, below the off-shell threshold 0.00272 from (−1, …, −1)
NO_BOUNCES = {"bounce_period": None, "bounce_patience": None}
TORCH_CLASSES = {
    "ecd": ecdopt.ECD,
    "bbi": ecdopt.BBI,
    "ecdsep": ecdopt.ECDSep,
    "unit_speed": ecdopt.UnitSpeedECD,
}
TORCH_ONLY = {
    "foreach",
    "fused",
    "sync_free",
    "capturable",
    "process_group",
    "reduce_loss",
    "seed",
    "rng",
}


# ------------------------------------------------------------------ problems (torch and JAX)
def zakharov_jax(params: list) -> jax.Array:
    """ecdopt.landscapes.zakharov (eq. 16) on the single leaf of ``params``."""
    (theta,) = params
    s = 0.5 * jnp.sum(theta * jnp.arange(1, theta.shape[-1] + 1, dtype=theta.dtype))
    return jnp.sum(theta * theta) + s * s + s**4


def zakharov_torch(params: list[torch.Tensor]) -> torch.Tensor:
    return zakharov(params[0])


def zakharov_start() -> list[np.ndarray]:
    return [-np.ones(10)]


_RNG = np.random.default_rng(0)
MLP_X = _RNG.standard_normal((64, 6))
MLP_Y = np.argmax(MLP_X @ _RNG.standard_normal((6, 3)), axis=1)


def mlp_start() -> list[np.ndarray]:
    """A 6-16-16-3 tanh MLP: 403 parameters in 6 leaves."""
    rng = np.random.default_rng(1)
    shapes = [(16, 6), (16,), (16, 16), (16,), (3, 16), (3,)]
    return [rng.standard_normal(s) / math.sqrt(s[-1] if len(s) > 1 else 4.0) for s in shapes]


def mlp_jax(params: list) -> jax.Array:
    w1, b1, w2, b2, w3, b3 = params
    h = jnp.tanh(jnp.asarray(MLP_X) @ w1.T + b1)
    h = jnp.tanh(h @ w2.T + b2)
    logp = jax.nn.log_softmax(h @ w3.T + b3)
    return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(MLP_Y)[:, None], axis=1))


def mlp_torch(params: list[torch.Tensor]) -> torch.Tensor:
    w1, b1, w2, b2, w3, b3 = params
    h = torch.tanh(torch.as_tensor(MLP_X) @ w1.T + b1)
    h = torch.tanh(h @ w2.T + b2)
    return torch.nn.functional.cross_entropy(h @ w3.T + b3, torch.as_tensor(MLP_Y))


def zakharov_tree(params: dict) -> jax.Array:
    """Zakharov-10 on the leaves of a dict (a (2, 3) and a (4,) array), for the pytree tests."""
    return zakharov_jax([jnp.concatenate([x.ravel() for x in jax.tree.leaves(params)])])


def tree_start(dtype=jnp.float32) -> dict:
    return {"w": jnp.full((2, 3), -0.5, dtype), "b": jnp.full((4,), 0.3, dtype)}


PROBLEMS = {
    "zakharov": (zakharov_torch, zakharov_jax, zakharov_start),
    "mlp": (mlp_torch, mlp_jax, mlp_start),
}


# ------------------------------------------------------------------ runners
def torch_run(name, problem, steps, *, lr, lrs=None, nan_step=None, draw=None, **options):
    """The torch optimizer's trajectory: Θ after every step and its diagnostics."""
    loss_fn, _, start = PROBLEMS[problem]
    params = [torch.tensor(p, dtype=F64, requires_grad=True) for p in start()]
    opt = TORCH_CLASSES[name](params, lr=lr, seed=0, **options)
    if draw is not None:
        opt._draw = draw(opt)
    thetas, diags = [], []
    for k in range(steps):
        if lrs is not None:
            opt.param_groups[0]["lr"] = float(lrs(k))
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ecdopt.NonFiniteLossWarning)
            opt.step(loss=loss * math.nan if k == nan_step else loss)
        thetas.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
        diags.append(opt.diagnostics())
    keys = diags[0].keys()
    return np.array(thetas), {key: np.array([d[key] for d in diags]) for key in keys}


def jax_run(tx, problem, steps, *, nan_step=None, params=None):
    """The optax trajectory under jit (one lax.scan): Θ after every step and the state."""
    _, loss_fn, start = PROBLEMS[problem]
    params = [jnp.asarray(p) for p in start()] if params is None else params

    def body(carry, k):
        params, state = carry
        value, grads = jax.value_and_grad(loss_fn)(params)
        if nan_step is not None:
            value = jnp.where(k == nan_step, jnp.nan, value)
        updates, state = tx.update(grads, state, params, value=value)
        params = optax.apply_updates(params, updates)
        return (params, state), (jnp.concatenate([p.ravel() for p in params]), state)

    scan = jax.jit(lambda carry: lax.scan(body, carry, jnp.arange(steps)))
    (_, final), (thetas, states) = scan((params, tx.init(params)))
    return np.asarray(thetas), states, final


def transformation(name, lr, **options):
    return getattr(eo, name)(lr, **options)


# ------------------------------------------------------------------ float64 parity
@pytest.mark.parametrize(
    ("name", "problem", "steps", "lr", "options"),
    [
        ("bbi", "zakharov", 3000, ZAKHAROV_LR, NO_BOUNCES),
        ("ecdsep", "zakharov", 3000, ZAKHAROV_LR, {"chaos": 0.0}),
        # F0 = 0 makes unit speed chaotic near the minimum (force ∝ 1/F_eff): torch's own host
        # and sync-free paths part by 0.1 at step 3000 there. F0 = −1 keeps it regular.
        ("unit_speed", "zakharov", 3000, ZAKHAROV_LR, {"loss_floor": -1.0}),
        ("bbi", "mlp", 3000, 0.05, {**NO_BOUNCES, "weight_decay": 1e-3}),
        ("ecdsep", "mlp", 400, 0.05, {"chaos": 0.0, "loss_power": 2.0, "extra_energy": 0.5}),
        ("unit_speed", "mlp", 400, 0.05, {"loss_power": 3.0}),
        (
            "ecd",
            "zakharov",
            1000,
            3e-6,
            {"hamiltonian": "inverse_mass", **NO_BOUNCES, "loss_floor": -1.0},
        ),
        # the floor adapts at ~900 of the steps (with δE = 0 each restart from rest amplifies
        # rounding: the overshoot F0 − F is a difference of nearly equal numbers)
        (
            "ecd",
            "zakharov",
            1000,
            ZAKHAROV_LR,
            {**NO_BOUNCES, "adapt_floor": True, "loss_floor": 0.5, "extra_energy": 1.0},
        ),
        # above Δt = 0.00272 the first 30 steps are off the shell (V > 2E, rescaled)
        ("bbi", "zakharov", 1000, 0.003, NO_BOUNCES),
    ],
)
def test_trajectory_equals_torch(x64, name, problem, steps, lr, options) -> None:
    expected, diags = torch_run(name, problem, steps, lr=lr, **options)
    thetas, states, _ = jax_run(transformation(name, lr, **options), problem, steps)
    # ≤ 1e-10, relative to |Θ| where the particle flies far (|Θ| = 55 in the off-shell run)
    assert np.abs(thetas - expected).max() <= 1e-10 * max(1.0, np.abs(expected).max())
    for key in ("energy", "momentum_sq", "potential", "loss_floor"):
        np.testing.assert_allclose(np.asarray(getattr(states, key)), diags[key], rtol=1e-8)
    for key in ("steps", "skipped", "bounces", "off_shell_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(states, key)), diags[key])
    assert diags["steps"][-1] == steps  # every step moved (a real trajectory was compared)
    if problem == "zakharov" and lr > 0.00272:
        assert diags["off_shell_steps"][-1] == 30
    if options.get("adapt_floor"):
        assert len(np.unique(diags["loss_floor"])) > 500


def test_schedule_and_skipped_step_equal_torch(x64) -> None:
    """An optax schedule is Δt at each call (torch: the group's lr set before each step), and a
    NaN loss is skipped by both without moving anything."""
    schedule = optax.linear_schedule(ZAKHAROV_LR, 0.001, 500)
    tx = eo.bbi(schedule, bounce_period=None, bounce_patience=None)
    thetas, states, _ = jax_run(tx, "zakharov", 500, nan_step=37)
    expected, diags = torch_run(
        "bbi", "zakharov", 500, lr=ZAKHAROV_LR, lrs=schedule, nan_step=37, **NO_BOUNCES
    )
    assert np.abs(thetas - expected).max() <= 1e-10
    assert int(states.skipped[-1]) == diags["skipped"][-1] == 1
    np.testing.assert_array_equal(thetas[37], thetas[36])  # the skipped step wrote nothing


def test_bounces_at_the_same_steps_as_torch(x64) -> None:
    """With each library's own draws: the same fixed-schedule bounce steps, the same trajectory
    up to the first bounce, the same α, V and E at it (the bounce keeps |Π|), E ever after."""
    options = {"bounce_period": 150, "n_bounces": 4, "bounce_patience": None}
    options["bounce_direction"] = "uniform"
    expected, diags = torch_run("bbi", "zakharov", 800, lr=ZAKHAROV_LR, **options)
    thetas, states, _ = jax_run(eo.bbi(ZAKHAROV_LR, key=3, **options), "zakharov", 800)
    bounces = np.asarray(states.bounces)
    np.testing.assert_array_equal(bounces, diags["bounces"])
    first = int(np.argmax(bounces > 0))
    np.testing.assert_array_equal(np.flatnonzero(np.diff(bounces)) + 1, [150, 300, 450, 600])
    assert first == 150 and np.abs(thetas[:first] - expected[:first]).max() <= 1e-10
    for key in ("rescale", "potential", "energy"):
        np.testing.assert_allclose(float(getattr(states, key)[first]), diags[key][first], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(states.energy), diags["energy"], rtol=1e-12)
    assert np.abs(thetas[first + 1] - expected[first + 1]).max() > 1e-6  # the draws differ


def jax_draws(key):
    """A replacement for the torch optimizer's keyed draw that returns ecdopt.optax's ξ."""

    def install(opt):
        def draw(like, step, stream, kind, out=None):
            shapes = [jnp.zeros(t.shape, jnp.float64) for t in like]
            xi = eo._draw(eo._as_key(key), jnp.asarray(step), stream, shapes, kind)
            xi = [torch.from_numpy(np.array(x)) for x in xi]
            if out is None:
                return xi
            for o, x in zip(out, xi, strict=True):
                o.copy_(x)
            return list(out)

        return draw

    return install


@pytest.mark.parametrize(
    ("name", "problem", "lr", "options"),
    [
        ("bbi", "mlp", 0.05, {"bounce_period": 100, "n_bounces": 3, "bounce_patience": 40}),
        ("ecdsep", "zakharov", ZAKHAROV_LR, {"chaos": 1e-3}),
        ("ecdsep", "zakharov", ZAKHAROV_LR, {"chaos": 1e-3, "rotation_every": 3}),
    ],
)
def test_same_draws_give_the_torch_trajectory(x64, name, problem, lr, options) -> None:
    """Given JAX's ξ, the torch optimizer follows the optax trajectory through every bounce and
    rotation: the draws are keyed by the same step index and purpose."""
    expected, diags = torch_run(name, problem, 400, lr=lr, draw=jax_draws(5), **options)
    thetas, states, _ = jax_run(transformation(name, lr, key=5, **options), problem, 400)
    assert np.abs(thetas - expected).max() <= 1e-10
    np.testing.assert_array_equal(np.asarray(states.bounces), diags["bounces"])
    np.testing.assert_allclose(np.asarray(states.momentum_sq), diags["momentum_sq"], rtol=1e-9)
    if name == "bbi":
        assert diags["bounces"][-1] >= 3


# ------------------------------------------------------------------ JAX behaviour
def test_vmap_is_independent_particles(x64) -> None:
    """vmap over particles (keys split per particle) equals running each particle alone, bounces
    and rotations included (lax.cond becomes a select under vmap)."""
    tx = eo.ecd(0.002, bounce_period=7, n_bounces=3, bounce_patience=5, chaos=0.1, key=0)
    starts = jnp.stack([jnp.linspace(-1.0, 1.0, 10) * s for s in (0.3, -0.2, 0.5)])
    keys = jax.random.split(jax.random.PRNGKey(4), 3)

    def run(theta, key):
        state = tx.init([theta])._replace(key=key)

        def body(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(zakharov_jax)(params)
            updates, state = tx.update(grads, state, params, value=value)
            return (optax.apply_updates(params, updates), state), None

        (params, state), _ = lax.scan(body, ([theta], state), None, length=40)
        return params[0], state.bounces

    together, bounces = jax.jit(jax.vmap(run))(starts, keys)
    alone = [jax.jit(run)(starts[i], keys[i]) for i in range(3)]
    for i in range(3):
        np.testing.assert_allclose(together[i], alone[i][0], rtol=1e-10)
        assert int(bounces[i]) == int(alone[i][1]) >= 3
    assert not np.allclose(together[0], together[1])


def test_chain_with_clipping_equals_clipped_gradients(x64) -> None:
    clip = optax.clip_by_global_norm(50.0)
    chained = optax.chain(clip, eo.bbi(1e-3, bounce_period=20, n_bounces=2))
    alone = eo.bbi(1e-3, bounce_period=20, n_bounces=2)

    @jax.jit
    def step_chain(params, state):
        value, grads = jax.value_and_grad(zakharov_tree)(params)
        updates, state = chained.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state, optax.global_norm(grads)

    @jax.jit
    def step_alone(params, state):
        value, grads = jax.value_and_grad(zakharov_tree)(params)
        clipped, _ = clip.update(grads, optax.EmptyState())
        updates, state = alone.update(clipped, state, params, value=value)
        return optax.apply_updates(params, updates), state

    p_chain = p_alone = tree_start(jnp.float64)
    s_chain, s_alone = chained.init(p_chain), alone.init(p_alone)
    norms = []
    for _ in range(50):
        p_chain, s_chain, norm = step_chain(p_chain, s_chain)
        p_alone, s_alone = step_alone(p_alone, s_alone)
        norms.append(float(norm))
    for a, b in zip(jax.tree.leaves(p_chain), jax.tree.leaves(p_alone), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert max(norms) > 50.0  # the clipping acted
    assert eo.diagnostics(s_chain)["bounces"] == 2.0


def test_checkpoint_resumes_exactly(tmp_path) -> None:
    """flax.serialization and orbax both restore a state that continues bit for bit."""
    import orbax.checkpoint as ocp

    tx = eo.ecd(1e-3, bounce_period=15, n_bounces=4, bounce_patience=10, chaos=0.01, key=9)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(zakharov_tree)(params)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    def run(params, state, n):
        for _ in range(n):
            params, state = step(params, state)
        return params, state

    params = tree_start()
    mid_params, mid_state = run(params, tx.init(params), 30)
    end_params, end_state = run(mid_params, mid_state, 30)
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(mid_state))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", mid_state)
    checkpointer.wait_until_finished()
    from_orbax = checkpointer.restore(tmp_path / "state", tx.init(params))
    assert isinstance(from_orbax, eo.ECDState)
    from_orbax = jax.tree.map(np.asarray, from_orbax)  # uncommitted, as the rest: no recompile
    for state in (restored, from_orbax):
        assert isinstance(state, eo.ECDState)
        again = run(mid_params, state, 30)
        for a, b in zip(
            jax.tree.leaves(again), jax.tree.leaves((end_params, end_state)), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    assert int(end_state.bounces) > int(mid_state.bounces) > 0


def test_non_finite_and_overflowing_steps_are_skipped() -> None:
    tx = eo.bbi(0.1, bounce_period=None, bounce_patience=None)
    params = [jnp.ones(3)]
    update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
    state = tx.init(params)
    _, state = update([jnp.ones(3)], state, params, 2.0)
    cases = [
        ([jnp.ones(3)], jnp.nan),  # NaN loss
        ([jnp.array([1.0, jnp.inf, 0.0])], 2.0),  # inf gradient
        ([jnp.full(3, 1e30)], 2.0),  # Π would overflow float32
    ]
    for i, (grads, value) in enumerate(cases, start=1):
        updates, new = update(grads, state, params, value)
        assert all(bool(jnp.all(u == 0)) for u in updates)
        np.testing.assert_array_equal(new.momentum[0], state.momentum[0])
        assert int(new.skipped) == i and int(new.steps) == int(state.steps) == 1
        assert float(new.energy) == float(state.energy)
        state = new


def test_first_step_at_the_floor() -> None:
    tx = eo.bbi(0.1, loss_floor=5.0)
    params = [jnp.ones(3)]
    with pytest.raises(ValueError, match="loss_floor"):
        tx.update([jnp.ones(3)], tx.init(params), params, value=jnp.float32(4.0))
    update = jax.jit(lambda s, v: tx.update([jnp.ones(3)], s, params, value=v))
    updates, state = update(tx.init(params), 4.0)  # under jit: the particle waits
    assert not bool(state.initialized) and int(state.steps) == 0 and float(updates[0].sum()) == 0
    updates, state = update(state, 6.0)
    assert bool(state.initialized) and int(state.steps) == 1
    np.testing.assert_allclose(float(state.energy), 1.0)  # E = V0 = 6 − 5


def test_zero_gradient_starts_in_a_random_direction(x64) -> None:
    tx = eo.bbi(0.1, extra_energy=3.0)
    params = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    _, state = jax.jit(lambda s: tx.update(zeros, s, params, value=1.0))(tx.init(params))
    momentum_sq = sum(float(jnp.sum(m * m)) for m in jax.tree.leaves(state.momentum))
    np.testing.assert_allclose(momentum_sq, 4.0**2 / 1.0 - 1.0)  # Π²_target = E²/V − V
    np.testing.assert_allclose(float(state.momentum_sq), momentum_sq)


def test_16_bit_params_keep_a_float32_momentum() -> None:
    tx = eo.ecdsep(1e-2, chaos=1e-3, extra_energy=1.0)
    params = tree_start(jnp.bfloat16)
    state = tx.init(params)
    assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.momentum))
    step = jax.jit(lambda p, s: tx.update(jax.grad(zakharov_tree)(p), s, p, value=zakharov_tree(p)))
    for _ in range(20):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    wide = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    assert int(state.steps) == 20 and float(zakharov_tree(wide)) < 0.5 * zakharov_tree(tree_start())


def test_missing_value_and_bad_arguments() -> None:
    tx = eo.bbi(0.1)
    params = [jnp.ones(2)]
    with pytest.raises(TypeError, match="value=loss"):
        tx.update([jnp.ones(2)], tx.init(params), params)
    with pytest.raises(ValueError, match="value must be a single number"):
        tx.update([jnp.ones(2)], tx.init(params), params, value=jnp.ones(2))
    with pytest.raises(ValueError, match="needs params"):
        eo.bbi(0.1, weight_decay=0.1).update([jnp.ones(2)], tx.init(params), value=1.0)
    bad = [
        (lambda: eo.bbi(0.0), "learning_rate"),
        (lambda: eo.bbi(math.nan), "learning_rate"),
        (lambda: eo.bbi(jnp.ones(2)), "learning_rate"),
        (lambda: eo.bbi(0.1, bounce_period=0), "bounce_period"),
        (lambda: eo.bbi(0.1, n_bounces=1.5), "n_bounces"),
        (lambda: eo.ecd(0.1, hamiltonian="newton"), "hamiltonian"),
        (lambda: eo.ecdsep(0.1, chaos=-1.0), "chaos"),
        (lambda: eo.bbi(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: eo.bbi(0.1, off_shell="clip"), "off_shell"),
        (lambda: eo.bbi(0.1, key="zero"), "key"),
        (lambda: eo.bbi(0.1, key=-1), "seed"),
    ]
    for make, name in bad:
        with pytest.raises(ValueError, match=name):
            make()
    assert eo.bbi(jnp.float32(0.1)).init(params).count == 0  # a 0-dim array Δt, as in optax
    with pytest.raises(TypeError, match="chaos"):
        eo.bbi(0.1, chaos=0.1)  # BBI fixes ν = 0, as ecdopt.BBI does


@pytest.mark.parametrize("name", ["ecd", "bbi", "ecdsep", "unit_speed"])
def test_same_arguments_and_defaults_as_torch(name) -> None:
    ours = inspect.signature(getattr(eo, name)).parameters
    theirs = inspect.signature(TORCH_CLASSES[name].__init__).parameters
    expected = {
        k: p.default
        for k, p in theirs.items()
        if k not in {"self", "params", "lr"} | TORCH_ONLY and p.kind is p.KEYWORD_ONLY
    }
    got = {k: p.default for k, p in ours.items() if k not in ("learning_rate", "key")}
    assert got == expected
