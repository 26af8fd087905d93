"""ECD for JAX: BBI, ECDSep, unit-speed ECD and the general ECD as optax transformations.

Each factory (:func:`bbi`, :func:`ecdsep`, :func:`unit_speed`, :func:`ecd`) returns an
``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *, value=loss)``
returns the parameter update Θ_new − Θ (apply it with ``optax.apply_updates``). The arguments
have the names, meanings and defaults of the torch classes (:class:`ecdopt.BBI`, ...) and are
validated by the same :class:`ecdopt._config.ECDConfig`; the step calls the same scalar
functions (:func:`ecdopt._step.decide`, :func:`ecdopt._step.coefficients`,
:func:`ecdopt._step.update_is_safe`, the Hamiltonians of :mod:`ecdopt.hamiltonians` and the
bounce schedule of :mod:`ecdopt.chaos`) on JAX values, so in float64 (``jax_enable_x64``) a
bounce-free trajectory equals the torch optimizer's to rounding.

One step, in the paper's notation (Algorithm 1 for Born-Infeld): F_eff = F − F0 + ½λ|Θ|²,
V = F_eff**η; at the first step E = E(V0, δE) and Π = −G/|G|·sqrt(Π²_target(E, V0)) (eqs. 13-14);
a bounce when due (c0 = T0 or c1 = T1): Π ← |Π|·ξ/|ξ|; restoration and kick Π ← α·Π − Δt·k·G;
drift Θ ← Θ + Δt·D·Π (eqs. 11-12); the ECDSep rotation Π ← |Π|·w/|w|, w = Π + ν|Π|ξ.

Everything runs inside ``jax.jit`` with no host callback: every decision (the first step, a
bounce, a skip) is a mask on the step's scalars, computed from the state's counters, and the
draws of a bounce or a random first direction sit in a ``lax.switch`` that runs only when one is
due (the rotation draws every step); ``jax.vmap`` over particles and ``optax.chain`` work.
A NaN/inf loss or gradient, or an update that would overflow, returns a zero update, leaves Π
and the counters unchanged and counts in ``state.skipped``.

Random draws (bounce directions, rotations, a random first direction for a zero gradient) are
keyed by (``key``, step index, purpose), as the torch optimizer keys its draws by its seed: a
resumed run continues exactly. The numbers differ from torch's (JAX's generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from . import chaos
from ._config import PRESETS, ECDConfig, check_lr, check_number, check_seed
from ._step import Coefficients, Decision, coefficients, decide, update_is_safe
from .hamiltonians import Hamiltonian, get_hamiltonian, projected_rescale

__all__ = ["ECDState", "bbi", "diagnostics", "ecd", "ecdsep", "unit_speed"]

LearningRate = float | Callable[[jax.Array], jax.Array]
KeyLike = int | jax.Array


class ECDState(NamedTuple):
    """The particle's state: a pytree of arrays (jit, vmap and checkpoints take it as is).

    ``momentum`` is Π (shaped like the params; float32 for 16-bit params); ``energy`` E;
    ``momentum_sq`` Π² after the last kick; ``potential`` V of the last step; ``loss_floor``
    F0 (it moves with ``adapt_floor``); ``best_objective`` the lowest F + ½λ|Θ|² seen;
    ``rescale`` the last α; ``speed`` |Θ̇| = D·|Π| per unit Δt; ``c0``, ``c1``,
    ``fixed_bounces_done`` the bounce counters (c0, c1, n_b of Algorithm 1); ``bounces``,
    ``steps`` (updates made), ``skipped`` (non-finite or overflowing steps) and
    ``off_shell_steps`` (V > κE, BBI) counts; ``count`` the calls of ``update`` (the schedule's
    step and the draws' index); ``initialized`` whether E and Π are set; ``key`` the PRNG key.
    """

    momentum: optax.Updates
    energy: jax.Array
    momentum_sq: jax.Array
    potential: jax.Array
    loss_floor: jax.Array
    best_objective: jax.Array
    rescale: jax.Array
    speed: jax.Array
    c0: jax.Array
    c1: jax.Array
    fixed_bounces_done: jax.Array
    bounces: jax.Array
    steps: jax.Array
    skipped: jax.Array
    off_shell_steps: jax.Array
    count: jax.Array
    initialized: jax.Array
    key: jax.Array


# ------------------------------------------------------------------ the factories
def ecd(
    learning_rate: LearningRate,
    *,
    hamiltonian: str = "born_infeld",
    loss_power: float = 1.0,
    loss_floor: float = 0.0,
    extra_energy: float = 0.0,
    bounce_period: int | None = 1000,
    n_bounces: int = 1,
    bounce_patience: int | None = 3000,
    chaos: float = 0.0,
    rotation_every: int = 1,
    kinetic_offset: float = 1.0,
    conserve_energy: bool = True,
    energy_tol: float = 1e-10,
    stop_tol: float = 1e-40,
    weight_decay: float = 0.0,
    adapt_floor: bool = False,
    bounce_direction: str = "gaussian",
    off_shell: str = "rescale",
    key: KeyLike = 0,
) -> optax.GradientTransformationExtraArgs:
    """Energy-Conserving Descent as an optax transformation: :class:`ecdopt.ECD` for JAX.

    All leaves of the params form ONE particle (one E, one V, one Π²). Paper symbols:
    ``learning_rate`` Δt (a float > 0 or an optax schedule of the update count),
    ``hamiltonian`` H (``"born_infeld"``, ``"inverse_mass"``, ``"separable"``,
    ``"unit_speed"``), ``loss_power`` η (V = F_eff**η), ``loss_floor`` ΔV = F0 (eq. 1),
    ``extra_energy`` δE (eq. 13), ``bounce_period`` T0, ``n_bounces`` N_b,
    ``bounce_patience`` T1 (None turns a bounce mechanism off), ``chaos`` ν (the rotation),
    ``rotation_every`` k (rotate every k-th step with ν·sqrt(k); 1: every step),
    ``kinetic_offset`` s, ``conserve_energy`` (restore H = E by α), ``energy_tol`` ε1,
    ``stop_tol`` ε2 (nothing moves when V ≤ ε2), ``weight_decay`` λ (adds ½λ|Θ|² to the loss
    inside V; needs ``params`` in ``update``), ``adapt_floor`` (the adaptive ΔV of §3.3),
    ``bounce_direction`` (``"gaussian"`` or the authors' ``"uniform"`` cube), ``off_shell``
    (BBI with V > κE: ``"rescale"`` or ``"exact"``), ``key`` a ``jax.random`` key or an int seed.

    ``update(grads, state, params=None, *, value)`` takes the loss F at ``params`` as
    ``value`` (the potential needs it) and returns ``(updates, state)``.

    One difference from the torch class, where jit leaves no choice: a loss at or below the
    floor at the first step (V ≤ 0 without ``adapt_floor``) raises ``ValueError`` only when
    ``update`` runs eagerly; under ``jax.jit`` the particle does not move (as at any step with
    V ≤ ε2) until a loss above the floor arrives.
    """
    config = ECDConfig.from_arguments(locals())
    if (
        isinstance(learning_rate, jax.Array | np.ndarray | np.generic)
        and np.ndim(learning_rate) == 0
    ):
        learning_rate = float(learning_rate)  # a concrete 0-dim array, as optax allows
    if not callable(learning_rate):
        learning_rate = float(check_lr(learning_rate, "learning_rate"))
    return _transformation(config, learning_rate, weight_decay, key)


def _transformation(
    config: ECDConfig, learning_rate: Any, weight_decay: float, key: KeyLike
) -> optax.GradientTransformationExtraArgs:
    decay = float(check_number("weight_decay", weight_decay, minimum=0.0, meaning="λ"))
    step = _Step(
        config=config,
        hamiltonian=get_hamiltonian(
            config.hamiltonian,
            kinetic_offset=config.kinetic_offset,
            loss_power=config.loss_power,
            off_shell=config.off_shell,
        ),
        learning_rate=learning_rate,
        weight_decay=decay,
    )
    base_key = _as_key(key)

    def init(params: optax.Params) -> ECDState:
        return _initial_state(params, config, base_key)

    return optax.GradientTransformationExtraArgs(init, step.update)


def bbi(
    learning_rate: LearningRate,
    *,
    loss_power: float = 1.0,
    loss_floor: float = 0.0,
    extra_energy: float = 0.0,
    bounce_period: int | None = 1000,
    n_bounces: int = 1,
    bounce_patience: int | None = 3000,
    kinetic_offset: float = 1.0,
    conserve_energy: bool = True,
    energy_tol: float = 1e-10,
    stop_tol: float = 1e-40,
    weight_decay: float = 0.0,
    adapt_floor: bool = False,
    bounce_direction: str = "gaussian",
    off_shell: str = "rescale",
    key: KeyLike = 0,
) -> optax.GradientTransformationExtraArgs:
    """Bouncing Born-Infeld (Algorithm 1): :class:`ecdopt.BBI` for JAX, H = sqrt(V(V + Π²)).

    T0 = 1000 steps between N_b = 1 fixed bounces, a progress bounce after T1 = 3000 steps
    without a new minimum, no rotation. Arguments: see :func:`ecd`.
    """
    return _preset("BBI", learning_rate, locals())


def ecdsep(
    learning_rate: LearningRate,
    *,
    loss_power: float = 1.0,
    loss_floor: float = 0.0,
    extra_energy: float = 0.0,
    chaos: float = 1e-5,
    rotation_every: int = 1,
    kinetic_offset: float = 1.0,
    conserve_energy: bool = True,
    energy_tol: float = 1e-10,
    stop_tol: float = 1e-40,
    weight_decay: float = 0.0,
    adapt_floor: bool = False,
    off_shell: str = "rescale",
    key: KeyLike = 0,
) -> optax.GradientTransformationExtraArgs:
    """Separable ECD: :class:`ecdopt.ECDSep` for JAX, H = log V + log(s + Π²).

    A rotation of Π of strength ν = ``chaos`` every step, no bounces. Arguments: see
    :func:`ecd`.
    """
    return _preset("ECDSep", learning_rate, locals())


def unit_speed(
    learning_rate: LearningRate,
    *,
    loss_power: float = 1.0,
    loss_floor: float = 0.0,
    bounce_period: int | None = None,
    n_bounces: int = 0,
    bounce_patience: int | None = None,
    chaos: float = 0.0,
    rotation_every: int = 1,
    conserve_energy: bool = True,
    energy_tol: float = 1e-10,
    stop_tol: float = 1e-40,
    weight_decay: float = 0.0,
    adapt_floor: bool = False,
    bounce_direction: str = "gaussian",
    off_shell: str = "rescale",
    key: KeyLike = 0,
) -> optax.GradientTransformationExtraArgs:
    """Unit-speed ECD: :class:`ecdopt.UnitSpeedECD` for JAX, |Θ̇| = 1 and the force projected
    orthogonally to Π (h = Δt/√η per step, rotation ν/√d). Arguments: see :func:`ecd`."""
    return _preset("UnitSpeedECD", learning_rate, locals())


def _preset(
    name: str, learning_rate: LearningRate, options: dict[str, Any]
) -> optax.GradientTransformationExtraArgs:
    """:func:`ecd` with the options that ``PRESETS[name]`` fixes."""
    options = {k: v for k, v in options.items() if k != "learning_rate"}
    return ecd(learning_rate, **{**options, **PRESETS[name].fixed})


def diagnostics(state: Any) -> dict[str, Any]:
    """The torch optimizer's ``diagnostics()`` for an :class:`ECDState` (also one inside an
    ``optax.chain`` state): floats for one particle, NumPy arrays for a vmapped batch."""
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ECDState))
        if isinstance(s, ECDState)
    ]
    if len(found) != 1:
        raise ValueError(f"state must hold one ECDState, found {len(found)}")
    s = found[0]
    keys = ("energy", "potential", "momentum_sq", "speed", "rescale", "loss_floor")
    counts = ("steps", "bounces", "skipped", "off_shell_steps")
    out = {}
    for name in (*keys, *counts):
        value = np.asarray(getattr(s, name), dtype=np.float64)
        out[name] = float(value) if value.ndim == 0 else value
    return out


# ------------------------------------------------------------------ state
def _scalar_dtype() -> np.dtype:
    """float64 under ``jax_enable_x64`` (as the torch optimizer's scalars), float32 otherwise."""
    return jnp.zeros((), dtype=float).dtype


def _int_dtype() -> np.dtype:
    return jnp.zeros((), dtype=int).dtype


def _momentum_dtype(dtype: Any) -> np.dtype:
    """Π's dtype: float32 for 16-bit floats (Π may exceed their range), the param's otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def _as_key(key: KeyLike) -> jax.Array:
    """A raw ``uint32[2]`` key from an int seed, a typed key or a raw key (raw keys serialise
    with every checkpointer)."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.PRNGKey(check_seed(int(key)))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return key
    raise ValueError(f"key must be an int seed >= 0 or a jax.random key, got {key!r}")


def _initial_state(params: optax.Params, config: ECDConfig, key: jax.Array) -> ECDState:
    """The state before the first step: Π = 0, E unset, F0 = ``loss_floor``, best = +inf."""
    real, whole = _scalar_dtype(), _int_dtype()

    def scalar(x: float) -> jax.Array:
        return jnp.asarray(x, dtype=real)

    def zero() -> jax.Array:  # a new buffer for each field (a donated state holds no alias)
        return jnp.zeros((), dtype=whole)

    return ECDState(
        momentum=jax.tree.map(lambda p: jnp.zeros(p.shape, _momentum_dtype(p.dtype)), params),
        energy=scalar(math.nan),
        momentum_sq=scalar(0.0),
        potential=scalar(math.nan),
        loss_floor=scalar(config.loss_floor),
        best_objective=scalar(math.inf),
        rescale=scalar(1.0),
        speed=scalar(0.0),
        c0=zero(),
        c1=zero(),
        fixed_bounces_done=zero(),
        bounces=zero(),
        steps=zero(),
        skipped=zero(),
        off_shell_steps=zero(),
        count=zero(),
        initialized=jnp.zeros((), dtype=bool),
        key=key,
    )


# ------------------------------------------------------------------ tree helpers
def _sum_of_squares(tree: Any, dtype: np.dtype) -> jax.Array:
    """Σ over all leaves of Σx², accumulated in ``dtype`` (the scalars' precision)."""
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(jnp.square(x.astype(dtype))) for x in leaves), jnp.zeros((), dtype))


def _dot(a: Any, b: Any, dtype: np.dtype) -> jax.Array:
    """Σ over leaf pairs of a·b, accumulated in ``dtype``."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum((jnp.vdot(x.astype(dtype), y.astype(dtype)) for x, y in pairs), jnp.zeros((), dtype))


def _draw(key: jax.Array, step: jax.Array, stream: int, like: Any, kind: str) -> Any:
    """ξ for ``stream`` at ``step`` (keyed: other draws never shift it), shaped like ``like``."""
    base = jax.random.fold_in(jax.random.fold_in(key, stream), step)
    leaves, treedef = jax.tree.flatten(like)
    sizes = [x.size for x in leaves]
    dtype = jnp.result_type(*leaves) if leaves else _scalar_dtype()
    # one draw for the whole model, cut into leaves (a draw per leaf compiles a kernel per leaf)
    if kind == "gaussian":
        flat = jax.random.normal(base, (sum(sizes),), dtype)
    else:  # the authors' cube [-1/2, 1/2]^n
        flat = jax.random.uniform(base, (sum(sizes),), dtype, -0.5, 0.5)
    ends = np.cumsum(sizes)
    xi = [
        flat[end - size : end].reshape(x.shape).astype(x.dtype)
        for x, size, end in zip(leaves, sizes, ends, strict=True)
    ]
    return jax.tree.unflatten(treedef, xi)


def _scaled(tree: Any, factor: jax.Array) -> Any:
    return jax.tree.map(lambda x: x * factor.astype(x.dtype), tree)


def _descent(grads: Any, params: Any, like: Any, weight_decay: float) -> Any:
    """−G/max(1, λ), G = ∇F + λΘ, in Π's dtypes: the first direction (scaled, as the torch
    optimizer does, so that λΘ cannot overflow)."""
    largest = max(1.0, weight_decay)
    if weight_decay == 0.0:
        return jax.tree.map(lambda g, m: -g.astype(m.dtype), grads, like)
    return jax.tree.map(
        lambda g, p, m: (
            -(g.astype(m.dtype) / largest + (weight_decay / largest) * p.astype(m.dtype))
        ),
        grads,
        params,
        like,
    )


def _kicked(
    momentum: Any, grads: Any, params: Any, rescale: Any, kick: Any, decay: float, moving: Any
) -> Any:
    """Π ← α·Π − k·∇F − (k·λ)·Θ (the torch kernel's order); a gradient that does not move the
    particle (it may be non-finite) is replaced by 0."""

    def leaf(m, g, p=None):
        new = rescale.astype(m.dtype) * m - kick.astype(m.dtype) * jnp.where(moving, g, 0)
        if p is not None:
            new = new - (kick * decay).astype(m.dtype) * p.astype(m.dtype)
        return new

    if decay == 0.0:
        return jax.tree.map(leaf, momentum, grads)
    return jax.tree.map(leaf, momentum, grads, params)


# ------------------------------------------------------------------ the step
class _Step:
    """``update`` of the transformation: the ECD step on JAX values.

    Every decision is a mask on the step's scalars (as in the torch optimizer's sync-free
    path): a step that does not move has α = 1, k = 0 and D = 0, so Π stays bit for bit and the
    update is 0. Only the draws (a bounce, a random first direction) sit in a ``lax.switch``,
    which runs the branch it takes.
    """

    def __init__(
        self,
        *,
        config: ECDConfig,
        hamiltonian: Hamiltonian,
        learning_rate: LearningRate,
        weight_decay: float,
    ) -> None:
        self.cfg, self.h, self.lr, self.wd = config, hamiltonian, learning_rate, weight_decay
        most = np.iinfo(_int_dtype()).max  # a period the counters never reach is no period
        self.schedule = {
            "bounce_period": _reachable(config.bounce_period, most),
            "n_bounces": min(config.n_bounces, most),
            "bounce_patience": _reachable(config.bounce_patience, most),
        }

    def update(
        self, grads: optax.Updates, state: ECDState, params: optax.Params | None = None, **extra
    ) -> tuple[optax.Updates, ECDState]:
        value = self._loss(extra, params)
        real = state.energy.dtype
        lr = jnp.asarray(self.lr(state.count) if callable(self.lr) else self.lr, dtype=real)
        grad_sq = _sum_of_squares(grads, real)
        theta_sq = _sum_of_squares(params, real) if self.wd != 0.0 else jnp.zeros((), real)
        d = decide(
            config=self.cfg,
            hamiltonian=self.h,
            objective=jnp.asarray(value, dtype=real) + 0.5 * self.wd * theta_sq,
            grad_sq=grad_sq,
            floor=state.loss_floor,
            best=state.best_objective,
        )
        self._check_first_floor(state, d)
        first = ~state.initialized
        restart = (first | d.below_floor) if self.cfg.adapt_floor else first
        initial = self.h.initial_energy(d.potential, self.cfg.extra_energy)
        energy = jnp.where(restart, initial, state.energy)  # E(V0, δE); a moved floor restarts E
        target = self.h.target_momentum_sq(energy, d.potential)
        momentum_sq = jnp.where(first, jnp.maximum(target, 0.0), state.momentum_sq)
        c = self._coefficients(energy, d, momentum_sq, grads)
        force_norm = jnp.sqrt(grad_sq) + self.wd * jnp.sqrt(theta_sq)
        safe = self._safe(c, momentum_sq, force_norm, lr, grads, params) & jnp.isfinite(energy)
        moving = d.moving & safe
        keep = d.finite & (safe | ~d.moving)
        booked = state._replace(
            count=state.count + 1,
            skipped=state.skipped + (~d.finite | (d.moving & ~safe)),
            loss_floor=jnp.where(keep, d.floor, state.loss_floor),
            potential=jnp.where(keep, d.potential, state.potential),
        )
        step = _Moving(energy=energy, target=target, grad_sq=grad_sq, lr=lr, moving=moving)
        return self._move(booked, grads, params, d, step, call=state.count)

    def _loss(self, extra: dict[str, Any], params: Any) -> Any:
        value = extra.get("value")
        if value is None:
            raise TypeError(
                "ECD needs the loss value to define the potential V = F - F0: call "
                "update(grads, state, params, value=loss)"
            )
        if jnp.ndim(value) != 0:
            raise ValueError(f"value must be a single number, got shape {jnp.shape(value)}")
        if self.wd != 0.0 and params is None:
            raise ValueError("weight_decay > 0 needs params: update(grads, state, params, ...)")
        return value

    def _check_first_floor(self, state: ECDState, d: Decision) -> None:
        """The torch optimizer's error for V ≤ 0 at the first step, when the values are known
        (an eager call); under jit the particle waits instead (see :func:`ecd`)."""
        if self.cfg.adapt_floor or isinstance(d.objective, jax.core.Tracer):
            return
        if isinstance(state.initialized, jax.core.Tracer) or bool(state.initialized):
            return
        if isinstance(d.below_floor, jax.core.Tracer) or not bool(d.below_floor):
            return
        raise ValueError(
            f"the loss ({float(d.objective):.6g}) is at or below loss_floor "
            f"({float(d.floor):.6g}) at the first step, so V = F - F0 <= 0: pass a loss_floor "
            "below the loss, or adapt_floor=True to lower it automatically"
        )

    def _coefficients(
        self, energy: jax.Array, d: Decision, momentum_sq: jax.Array, like: Any
    ) -> Coefficients:
        return coefficients(
            config=self.cfg,
            hamiltonian=self.h,
            energy=energy,
            potential=d.potential,
            effective=d.effective,
            momentum_sq=momentum_sq,
            dim=_size(like),
        )

    def _safe(
        self,
        c: Coefficients,
        momentum_sq: jax.Array,
        force_norm: jax.Array,
        lr: jax.Array,
        grads: Any,
        params: Any,
    ) -> jax.Array:
        """:func:`update_is_safe` with the dtypes' limits (a sixteenth of their largest value)."""
        rescale = c.rescale
        if self.h.projects_force:
            rescale = projected_rescale(rescale, lr * c.kick, jnp.sqrt(momentum_sq) * force_norm)
        leaves = jax.tree.leaves(grads)
        momentum = min(float(jnp.finfo(_momentum_dtype(x.dtype)).max) for x in leaves)
        step = min(
            float(jnp.finfo(x.dtype).max)
            for x in jax.tree.leaves(grads if params is None else params)
        )
        return update_is_safe(
            rescale=rescale,
            kick=c.kick,
            drift_bound=c.drift_bound,
            momentum_sq=momentum_sq,
            force_norm=force_norm,
            lr=lr,
            weight_decay=self.wd,
            limits=(momentum / 16, step / 16),
        )

    def _move(
        self,
        state: ECDState,
        grads: Any,
        params: Any,
        d: Decision,
        step: _Moving,
        call: jax.Array,
    ) -> tuple[optax.Updates, ECDState]:
        """Initialisation (first step), bounce, kick, drift, rotation and bookkeeping, every
        factor masked by ``step.moving``."""
        real, moving = state.energy.dtype, step.moving
        descent = _descent(grads, params, state.momentum, self.wd)
        momentum, momentum_sq, state = self._redirect(state, descent, step, call)
        c = self._coefficients(step.energy, d, momentum_sq, grads)  # α from the Π² it has
        rescale = jnp.where(moving, c.rescale, 1.0)
        kick = jnp.where(moving, step.lr * c.kick, 0.0)
        if self.h.projects_force:  # unit speed: the kick orthogonal to Π
            dot = _dot(momentum, grads, real)  # Π·G = Π·∇F + λ·(Π·Θ)
            if self.wd != 0.0:
                dot = dot + self.wd * _dot(momentum, params, real)
            rescale = jnp.where(moving, projected_rescale(rescale, kick, dot), 1.0)
        momentum = _kicked(momentum, grads, params, rescale, kick, self.wd, moving)
        momentum_sq = _sum_of_squares(momentum, real)
        drift = c.drift
        if drift is None:  # D needs Π² after the kick (separable)
            drift = self.h.drift_factor(step.energy, d.potential, momentum_sq)
        drift = jnp.where(moving, drift, 0.0)
        like = grads if params is None else params
        updates = jax.tree.map(
            lambda m, p: ((step.lr * drift).astype(m.dtype) * m).astype(p.dtype), momentum, like
        )
        if self.cfg.has_rotation:
            momentum = self._rotate(state, momentum, momentum_sq, call, moving)
        c0, c1 = chaos.counters_after_update(state.c0, state.c1, d.new_minimum)
        return updates, state._replace(
            momentum=momentum,
            energy=jnp.where(moving, step.energy, state.energy),
            momentum_sq=jnp.where(moving, momentum_sq, state.momentum_sq),
            best_objective=jnp.where(
                moving, jnp.minimum(state.best_objective, d.objective), state.best_objective
            ),
            rescale=jnp.where(moving, rescale, state.rescale),
            speed=jnp.where(moving, drift * jnp.sqrt(momentum_sq), state.speed),
            c0=jnp.where(moving, c0, state.c0),
            c1=jnp.where(moving, c1, state.c1),
            steps=state.steps + moving,
            off_shell_steps=state.off_shell_steps + (moving & c.off_shell),
            initialized=state.initialized | moving,
        )

    def _redirect(
        self, state: ECDState, descent: Any, step: _Moving, call: jax.Array
    ) -> tuple[Any, jax.Array, ECDState]:
        """Π before the kick, and its Π²: at the first step Π0 = −G/|G|·sqrt(Π²_target(E, V0))
        (eqs. 13-14; a random direction for G = 0); a bounce Π ← |Π|·ξ/|ξ| when due (Algorithm 1,
        merged into the step); Π otherwise. No bounce is due at the first step (c0 = c1 = 0)."""
        real, moving = state.energy.dtype, step.moving
        init = ~state.initialized & moving
        if self.wd == 0.0:
            direction_sq = step.grad_sq
        else:  # |G|²/max(1, λ)², needed at the first step only
            direction_sq = lax.cond(
                init, lambda: _sum_of_squares(descent, real), lambda: jnp.zeros((), real)
            )
        random = init & ~(direction_sq > 0)
        target = jnp.maximum(step.target, 0.0)

        def keep() -> tuple[Any, jax.Array]:
            return state.momentum, jnp.zeros((), real)

        def random_direction() -> tuple[Any, jax.Array]:
            step0 = jnp.zeros_like(call)
            xi = _draw(state.key, step0, chaos.STREAM_INITIAL, state.momentum, "gaussian")
            xi_sq = _sum_of_squares(xi, real)
            return _scaled(xi, jnp.sqrt(target) / jnp.sqrt(xi_sq)), target

        branches = [keep, random_direction]
        due = jnp.zeros((), bool)
        if self.cfg.has_bounces:
            fixed, due = chaos.bounce_due(
                state.c0, state.c1, state.fixed_bounces_done, **self.schedule
            )
            due = due & moving

            # |Π| from the state's Π² (the sum of these very Π, or of Π before a rotation that
            # kept |Π|): a branch that read Π would make the other branch copy it every step
            norm = jnp.sqrt(state.momentum_sq)

            def bounce() -> tuple[Any, jax.Array]:
                kind = self.cfg.bounce_direction
                xi = _draw(state.key, call, chaos.STREAM_BOUNCE, state.momentum, kind)
                return _scaled(xi, norm / jnp.sqrt(_sum_of_squares(xi, real))), target

            branches.append(bounce)
            after = chaos.counters_after_bounce(
                state.c0,
                state.c1,
                state.fixed_bounces_done,
                fixed,
                n_bounces=self.schedule["n_bounces"],
            )
            c0, c1, done = (
                jnp.where(due, a, b)
                for a, b in zip(after, (state.c0, state.c1, state.fixed_bounces_done), strict=True)
            )
            state = state._replace(
                c0=c0, c1=c1, fixed_bounces_done=done, bounces=state.bounces + due
            )
        index = jnp.where(random, 1, jnp.where(due, 2, 0))
        momentum, random_sq = lax.switch(index, branches)
        scale = jnp.sqrt(target) / jnp.sqrt(jnp.where(direction_sq > 0, direction_sq, 1.0))
        from_gradient = init & ~random
        momentum = jax.tree.map(
            lambda m, f: jnp.where(from_gradient, scale.astype(m.dtype) * f, m), momentum, descent
        )
        initial_sq = jnp.where(random, random_sq, scale * scale * direction_sq)
        return momentum, jnp.where(init, initial_sq, state.momentum_sq), state

    def _rotate(
        self, state: ECDState, momentum: Any, momentum_sq: jax.Array, call: jax.Array, moving: Any
    ) -> Any:
        """ECDSep's rotation: Π ← |Π|·w/|w|, w = Π + ν|Π|ξ ∝ Π/|Π| + νξ (keeps |Π|; Π = 0
        stays)."""
        real = state.energy.dtype
        xi = _draw(state.key, call, chaos.STREAM_ROTATION, momentum, "gaussian")
        nu = self.cfg.chaos * self.h.chaos_scale(_size(momentum))
        every = self.cfg.rotation_every
        if every > 1:  # ν·sqrt(k) on every k-th step, as the torch step
            nu = nu * math.sqrt(every)
            moving = moving & chaos.rotation_due(call, every)
        shrink = 1.0 / nu if nu > 1.0 else 1.0  # w = Π/ν + |Π|ξ for ν > 1: w cannot overflow
        step = jnp.where(moving, nu * shrink * jnp.sqrt(momentum_sq), 0.0)
        w = jax.tree.map(lambda m, x: shrink * m + step.astype(m.dtype) * x, momentum, xi)
        w_sq = _sum_of_squares(w, real)
        ok = moving & (momentum_sq > 0) & (w_sq > 0)
        scale = jnp.sqrt(jnp.where(ok, momentum_sq / jnp.where(ok, w_sq, 1.0), 1.0))
        return jax.tree.map(lambda m, x: jnp.where(ok, x * scale.astype(x.dtype), m), momentum, w)


class _Moving(NamedTuple):
    """The scalars of a step that the update needs beyond the decision."""

    energy: jax.Array  # E of this step
    target: jax.Array  # Π²_target(E, V)
    grad_sq: jax.Array  # |∇F|²
    lr: jax.Array  # Δt
    moving: jax.Array  # the step moves (finite, V > ε2, safe)


def _size(tree: Any) -> int:
    """d, the number of parameters."""
    return sum(x.size for x in jax.tree.leaves(tree))


def _reachable(period: int | None, most: int) -> int | None:
    """``period``, or None when the integer counters can never reach it."""
    return None if period is None or period > most else period
