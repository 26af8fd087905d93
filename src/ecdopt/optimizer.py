"""ECD optimizers as ``torch.optim.Optimizer``: :class:`ECD`, presets :class:`BBI`, :class:`ECDSep`.

The class gathers parameters, holds the state and calls the pure math of
:mod:`ecdopt.hamiltonians`, :mod:`ecdopt.chaos` and :mod:`ecdopt._kernels`. All parameters of all
param groups form ONE particle: one energy E, one potential V, one Π² (design.md §1).

One ``step()`` (paper notation; Algorithm 1 for Born-Infeld):

1. F_eff = F − F0 + Σ_groups ½·λ_g·|Θ_g|²; V = F_eff**η.
2. First step: E = E(V0, δE) and Π = −∇V/|∇V|·sqrt(Π²_target(E, V0)) (eq. 13-14).
3. If a bounce is due (c0 = T0 or c1 = T1): Π ← |Π|·ξ/|ξ|, counters updated. The update below
   follows in the same step: Algorithm 1 spends an iteration on the bounce without moving Θ, so
   its next iteration sees the same gradient; merging saves one gradient evaluation per bounce.
4. Restoration Π ← α·Π, kick Π ← Π − Δt·K·∇V, drift Θ ← Θ + Δt·D·Π (symplectic Euler).
5. Rotation (ν > 0): Π ← |Π|·u/|u|, u = Π/|Π| + ν·ξ.
6. Counters: c0 += 1, c1 += 1, c1 = 0 on a new minimum.
When V ≤ ε2 (``stop_tol``) nothing moves.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from . import chaos
from ._kernels import ecd_drift_, ecd_kick_, sum_of_squares
from .hamiltonians import HAMILTONIANS, Hamiltonian, get_hamiltonian, restoration_factor

__all__ = ["BBI", "ECD", "ECDSep", "MissingLossError", "NonFiniteLossWarning"]


class MissingLossError(TypeError):
    """``step()`` was called without a closure and without a loss."""


class NonFiniteLossWarning(RuntimeWarning):
    """A step was skipped because the loss or a gradient was NaN or infinite."""


_MISSING_LOSS_MESSAGE = (
    "ECD optimizers need the loss value to define the potential V = F - F0. Pass it either as a "
    "closure, `optimizer.step(closure)` where closure() zeroes the grads, computes the loss, "
    "calls loss.backward() and returns the loss, or as a tensor whose backward() already ran, "
    "`loss.backward(); optimizer.step(loss=loss)`."
)


@dataclass(frozen=True)
class ECDConfig:
    """The particle-wide hyperparameters (the per-group ones, lr and weight_decay, live in
    ``param_groups``). See :class:`ECD` for their meaning."""

    hamiltonian: str
    loss_power: float
    loss_floor: float
    extra_energy: float
    bounce_period: int | None
    n_bounces: int
    bounce_patience: int | None
    chaos: float
    kinetic_offset: float
    conserve_energy: bool
    energy_tol: float
    stop_tol: float
    adapt_floor: bool
    bounce_direction: str


def _require(condition: bool, name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate_lr(lr: Any) -> None:
    lr_value = lr.item() if isinstance(lr, Tensor) and lr.numel() == 1 else lr
    _require(
        _is_real(lr_value) and math.isfinite(lr_value) and lr_value > 0,
        "lr",
        "a finite number > 0 (the time step Δt)",
        lr,
    )


def _validate_weight_decay(weight_decay: Any) -> None:
    _require(
        _is_real(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0,
        "weight_decay",
        "a finite number >= 0",
        weight_decay,
    )


def _validate_config(cfg: ECDConfig) -> None:
    _require(
        cfg.hamiltonian in HAMILTONIANS,
        "hamiltonian",
        "one of " + ", ".join(repr(k) for k in HAMILTONIANS),
        cfg.hamiltonian,
    )
    _require(
        _is_real(cfg.loss_power) and math.isfinite(cfg.loss_power) and cfg.loss_power > 0,
        "loss_power",
        "a finite number > 0 (η in V = F_eff**η)",
        cfg.loss_power,
    )
    _require(
        _is_real(cfg.loss_floor) and math.isfinite(cfg.loss_floor),
        "loss_floor",
        "a finite number (ΔV, the loss value treated as zero)",
        cfg.loss_floor,
    )
    _require(
        _is_real(cfg.extra_energy) and math.isfinite(cfg.extra_energy) and cfg.extra_energy >= 0,
        "extra_energy",
        "a finite number >= 0 (δE)",
        cfg.extra_energy,
    )
    _require(
        cfg.bounce_period is None
        or (isinstance(cfg.bounce_period, int) and cfg.bounce_period >= 1),
        "bounce_period",
        "an int >= 1 (T0) or None (no fixed bounces)",
        cfg.bounce_period,
    )
    _require(
        isinstance(cfg.n_bounces, int)
        and not isinstance(cfg.n_bounces, bool)
        and cfg.n_bounces >= 0,
        "n_bounces",
        "an int >= 0 (N_b)",
        cfg.n_bounces,
    )
    _require(
        cfg.bounce_patience is None
        or (isinstance(cfg.bounce_patience, int) and cfg.bounce_patience >= 1),
        "bounce_patience",
        "an int >= 1 (T1) or None (no progress bounces)",
        cfg.bounce_patience,
    )
    _require(
        _is_real(cfg.chaos) and math.isfinite(cfg.chaos) and cfg.chaos >= 0,
        "chaos",
        "a finite number >= 0 (ν, the rotation strength)",
        cfg.chaos,
    )
    _require(
        _is_real(cfg.kinetic_offset)
        and math.isfinite(cfg.kinetic_offset)
        and cfg.kinetic_offset > 0,
        "kinetic_offset",
        "a finite number > 0 (s)",
        cfg.kinetic_offset,
    )
    _require(
        _is_real(cfg.energy_tol) and cfg.energy_tol >= 0,
        "energy_tol",
        "a number >= 0 (ε1)",
        cfg.energy_tol,
    )
    _require(
        _is_real(cfg.stop_tol) and cfg.stop_tol >= 0, "stop_tol", "a number >= 0 (ε2)", cfg.stop_tol
    )
    _require(
        cfg.bounce_direction in chaos.BOUNCE_DIRECTIONS,
        "bounce_direction",
        "one of " + ", ".join(repr(k) for k in chaos.BOUNCE_DIRECTIONS),
        cfg.bounce_direction,
    )


def momentum_dtype(param: Tensor) -> torch.dtype:
    """The dtype of Π for ``param``: float32 for 16-bit floats (Π may overflow them)."""
    if param.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return param.dtype


def adapted_floor(loss: Tensor, floor: Tensor) -> Tensor:
    """The paper's adaptive ΔV (§3.3): a lowered floor F0' once V = F − F0 ≤ 0.

    The discrete dynamics overshoots a floor that is above the true minimum by a small amount
    o = F0 − F ≥ 0. The floor is reflected below the current loss, F0' = F − max(o, τ) with
    τ = 1e-12·max(1, |F|), so the particle goes on with V = max(o, τ) > 0. Near a minimum the
    overshoot shrinks with the gradient, so the floor settles just above the minimum.
    """
    overshoot = floor - loss
    tiny = 1e-12 * torch.clamp(loss.abs(), min=1.0)
    return loss - torch.maximum(overshoot, tiny)


class ECD(torch.optim.Optimizer):
    r"""Energy-Conserving Descent: one frictionless particle at fixed energy E.

    Args:
        params: parameters or param groups (per-group ``lr`` and ``weight_decay`` allowed).
        lr: Δt, the time step (required, > 0). LR schedulers work: read every step.
        hamiltonian: ``"born_infeld"`` (BBI, eqs. 3-6), ``"inverse_mass"`` (mass 1/V,
            eqs. 34-36) or ``"separable"`` (ECDSep).
        loss_power: η; the potential is V = F_eff**η.
        loss_floor: ΔV = F0 (eq. 1), the loss value treated as zero.
        extra_energy: δE ≥ 0, energy above the initial potential (eq. 13).
        bounce_period: T0, steps between fixed bounces (None: none).
        n_bounces: N_b, the number of fixed bounces.
        bounce_patience: T1, steps without a new minimum of V before a bounce (None: never).
        chaos: ν ≥ 0, the strength of the per-step rotation of Π (ECDSep); 0 turns it off.
        kinetic_offset: s > 0, the separable Hamiltonian's offset.
        conserve_energy: consEn, restore H = E every step by rescaling Π.
        energy_tol: ε1, skip the restoration when |Π² − Π²_target| < ε1.
        stop_tol: ε2, nothing moves when V ≤ ε2.
        weight_decay: λ ≥ 0, adds ½·λ·|Θ|² to the loss inside V (per group).
        adapt_floor: lower F0 when the particle overshoots it (V ≤ 0), see :func:`adapted_floor`.
        seed: seed of the optimizer's own generators (bounces, rotations); None: fresh entropy.
        bounce_direction: ``"gaussian"`` (isotropic, default) or ``"uniform"`` (ξ in the cube
            [−½, ½]^n, as the authors' code: reproduces their figures, not isotropic).
        foreach: use the multi-tensor (``torch._foreach_*``) path; None picks it on CUDA.

    ``step(closure)`` calls the closure once under ``torch.enable_grad()``;
    ``step(loss=loss)`` takes a loss whose ``backward()`` already ran. A NaN/inf loss or gradient
    skips the step (nothing changes) with a :class:`NonFiniteLossWarning`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        *,
        hamiltonian: str = "born_infeld",
        loss_power: float = 1.0,
        loss_floor: float = 0.0,
        extra_energy: float = 0.0,
        bounce_period: int | None = 1000,
        n_bounces: int = 1,
        bounce_patience: int | None = 3000,
        chaos: float = 0.0,
        kinetic_offset: float = 1.0,
        conserve_energy: bool = True,
        energy_tol: float = 1e-10,
        stop_tol: float = 1e-40,
        weight_decay: float = 0.0,
        adapt_floor: bool = False,
        seed: int | None = None,
        bounce_direction: str = "gaussian",
        foreach: bool | None = None,
    ) -> None:
        _validate_lr(lr)
        _validate_weight_decay(weight_decay)
        self.config = ECDConfig(
            hamiltonian=hamiltonian,
            loss_power=float(loss_power) if _is_real(loss_power) else loss_power,
            loss_floor=float(loss_floor) if _is_real(loss_floor) else loss_floor,
            extra_energy=float(extra_energy) if _is_real(extra_energy) else extra_energy,
            bounce_period=bounce_period,
            n_bounces=n_bounces,
            bounce_patience=bounce_patience,
            chaos=float(chaos) if _is_real(chaos) else chaos,
            kinetic_offset=float(kinetic_offset) if _is_real(kinetic_offset) else kinetic_offset,
            conserve_energy=bool(conserve_energy),
            energy_tol=energy_tol,
            stop_tol=stop_tol,
            adapt_floor=bool(adapt_floor),
            bounce_direction=bounce_direction,
        )
        _validate_config(self.config)
        if seed is not None and not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        self.seed = secrets.randbits(63) if seed is None else seed
        self.hamiltonian: Hamiltonian = get_hamiltonian(
            hamiltonian, kinetic_offset=self.config.kinetic_offset
        )
        defaults = {"lr": lr, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params, defaults)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._ecd: dict[str, Any] = self._fresh_particle_state()

    # ------------------------------------------------------------------ state
    def _fresh_particle_state(self) -> dict[str, Any]:
        return {
            "initialized": False,
            "steps": 0,
            "c0": 0,
            "c1": 0,
            "fixed_bounces_done": 0,
            "bounces": 0,
            "energy": None,
            "loss_floor": None,
            "best_objective": None,
            "potential": None,
            "momentum_sq": None,
            "rescale": None,
            "speed": None,
        }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            _validate_lr(param_group["lr"])
        if "weight_decay" in param_group:
            _validate_weight_decay(param_group["weight_decay"])
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("weight_decay", 0.0)
        self.__dict__.setdefault("_generators", {})
        self.__dict__.setdefault("_ecd", self._fresh_particle_state())

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[device] = gen
        return gen

    def state_dict(self) -> dict[str, Any]:
        """The usual optimizer state plus ``"ecd"``: energy, counters, best V, floor, RNG.

        Everything is a tensor, number, string or container of them, so
        ``torch.load(..., weights_only=True)`` reads it back.
        """
        sd = super().state_dict()
        particle = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self._ecd.items()}
        particle["seed"] = self.seed
        particle["generators"] = {str(d): g.get_state() for d, g in self._generators.items()}
        particle["config"] = asdict(self.config)
        sd["ecd"] = particle
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a resumed run continues bit-for-bit."""
        state_dict = dict(state_dict)
        particle = state_dict.pop("ecd", None)
        # torch casts floating state to the param's dtype; Π may be wider (float32 for 16-bit
        # params), so keep the saved momenta aside and place them ourselves.
        saved_momenta = {
            pid: s["momentum"] for pid, s in state_dict["state"].items() if "momentum" in s
        }
        super().load_state_dict(state_dict)
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid in saved_momenta:
                self.state[p]["momentum"] = saved_momenta[pid].to(
                    device=p.device, dtype=momentum_dtype(p), copy=True
                )
        if particle is None:
            return
        particle = dict(particle)
        self.seed = int(particle.pop("seed", self.seed))
        generator_states = particle.pop("generators", {})
        particle.pop("config", None)
        self._generators = {}
        for name, gen_state in generator_states.items():
            self._generator(torch.device(name)).set_state(gen_state)
        device = params[0].device if params else torch.device("cpu")
        for key, value in particle.items():
            if isinstance(value, Tensor):
                particle[key] = value.to(device=device, dtype=torch.float64, copy=True)
        self._ecd = {**self._fresh_particle_state(), **particle}

    # ------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, float]:
        """Plain floats for logging (this reads device values: call it when you log).

        ``energy`` E, ``potential`` V of the last step, ``momentum_sq`` Π² after it, ``speed``
        |Θ̇| = D·|Π| (per unit Δt), ``rescale`` the last α, ``steps`` updates done, ``bounces``
        performed, ``loss_floor`` the current F0.
        """
        s = self._ecd

        def as_float(v: Any) -> float:
            return float("nan") if v is None else float(v)

        return {
            "energy": as_float(s["energy"]),
            "potential": as_float(s["potential"]),
            "momentum_sq": as_float(s["momentum_sq"]),
            "speed": as_float(s["speed"]),
            "rescale": as_float(s["rescale"]),
            "steps": float(s["steps"]),
            "bounces": float(s["bounces"]),
            "loss_floor": as_float(
                s["loss_floor"] if s["loss_floor"] is not None else self.config.loss_floor
            ),
        }

    # ------------------------------------------------------------------- step
    def _particle(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor]]]:
        """(group, params, grads, momenta) for the params that have a gradient."""
        out = []
        for group in self.param_groups:
            params, grads, momenta = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("ECD does not support sparse gradients (got one for a param)")
                if torch.is_complex(p) or torch.is_complex(p.grad):
                    raise ValueError("ECD does not support complex parameters or gradients")
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(
                        p, dtype=momentum_dtype(p), memory_format=torch.preserve_format
                    )
                params.append(p)
                grads.append(p.grad)
                momenta.append(state["momentum"])
            if params:
                out.append((group, params, grads, momenta))
        return out

    @staticmethod
    def _use_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
        if group["foreach"] is not None:
            return bool(group["foreach"])
        return all(p.is_cuda for p in params)

    def _draw(self, like: list[Tensor], kind: str | None = None) -> list[Tensor]:
        """ξ for a bounce (``bounce_direction``) or a rotation (``"gaussian"``)."""
        gens = {t.device: self._generator(t.device) for t in like}
        return chaos.draw_direction(like, gens, kind or self.config.bounce_direction)

    @torch.no_grad()
    def step(
        self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None
    ) -> Tensor | None:
        """One ECD step (see the module docstring). Returns the loss."""
        if closure is not None and loss is not None:
            raise TypeError("pass either a closure or loss=..., not both")
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            raise MissingLossError(_MISSING_LOSS_MESSAGE)

        particle = self._particle()
        if not particle:
            return loss
        cfg, ham, s = self.config, self.hamiltonian, self._ecd
        all_params = [p for _, ps, _, _ in particle for p in ps]
        device = all_params[0].device
        f64 = {"dtype": torch.float64, "device": device}

        loss_value = torch.as_tensor(loss.detach() if isinstance(loss, Tensor) else loss)
        if loss_value.numel() != 1:
            shape = tuple(loss_value.shape)
            raise ValueError(f"loss must be a single number (a 0-dim tensor), got shape {shape}")
        loss_value = loss_value.reshape(()).to(**f64)

        # ---- pass 1: global reductions over the whole particle
        grad_sq = sum_of_squares([g for _, _, gs, _ in particle for g in gs], device)
        objective = loss_value  # F + Σ ½ λ |Θ|², the loss the particle minimizes
        for group, ps, _, _ in particle:
            if group["weight_decay"] != 0.0:
                objective = objective + 0.5 * group["weight_decay"] * sum_of_squares(ps, device)
        floor = (
            s["loss_floor"] if s["loss_floor"] is not None else torch.tensor(cfg.loss_floor, **f64)
        )
        finite = torch.isfinite(objective) & torch.isfinite(grad_sq)
        below_floor = objective - floor <= 0
        if cfg.adapt_floor:
            floor = torch.where(below_floor, adapted_floor(objective, floor), floor)
        effective = objective - floor  # F_eff
        potential = self._potential(effective)
        best = s["best_objective"]
        new_minimum = objective < best if best is not None else torch.ones((), dtype=torch.bool)
        # One host read for every decision of this step (free on CPU).
        is_finite, is_below_floor, is_stopped, is_new_minimum = torch.stack(
            [finite, below_floor, potential <= cfg.stop_tol, new_minimum.to(device)]
        ).tolist()

        if not is_finite:
            warnings.warn(
                "ECD step skipped: the loss or a gradient is NaN or infinite; parameters and "
                "optimizer state are unchanged",
                NonFiniteLossWarning,
                stacklevel=2,
            )
            return loss
        if is_below_floor and not s["initialized"] and not cfg.adapt_floor:
            raise ValueError(
                f"the loss ({loss_value.item():.6g}) is at or below loss_floor "
                f"({floor.item():.6g}) at the first step, so V = F - F0 <= 0: pass a "
                "loss_floor below the loss, or adapt_floor=True to lower it automatically"
            )
        if is_below_floor and cfg.adapt_floor and s["initialized"]:
            # The floor moved: the particle restarts at E = E(V', δE), as at a first step; the
            # next restoration puts Π (direction kept) on the new shell.
            s["energy"] = ham.initial_energy(potential, cfg.extra_energy)
        s["loss_floor"] = floor
        s["potential"] = potential
        if is_stopped:
            return loss  # V <= ε2: the dynamics has reached the floor, nothing moves
        if not s["initialized"]:
            self._initialize(particle, potential)

        # ---- chaos: a bounce merged into this step
        fixed, due = chaos.bounce_due(
            s["c0"],
            s["c1"],
            s["fixed_bounces_done"],
            bounce_period=cfg.bounce_period,
            n_bounces=cfg.n_bounces,
            bounce_patience=cfg.bounce_patience,
        )
        momenta = [m for _, _, _, ms in particle for m in ms]
        if due:
            chaos.bounce_(momenta, self._draw(momenta))
            s["c0"], s["c1"], s["fixed_bounces_done"] = chaos.counters_after_bounce(
                s["c0"], s["c1"], s["fixed_bounces_done"], fixed, n_bounces=cfg.n_bounces
            )
            s["bounces"] += 1

        # ---- restoration, kick, drift
        energy = s["energy"]
        momentum_sq = s["momentum_sq"]
        if cfg.conserve_energy:
            rescale = restoration_factor(
                momentum_sq, ham.target_momentum_sq(energy, potential), cfg.energy_tol
            )
        else:
            rescale = torch.ones((), **f64)
        # ∇V = η·F_eff**(η−1)·∇F_eff
        grad_factor = (
            cfg.loss_power * effective ** (cfg.loss_power - 1.0)
            if cfg.loss_power != 1.0
            else torch.ones((), **f64)
        )
        kick = ham.kick_factor(energy, potential) * grad_factor
        for group, ps, gs, ms in particle:
            ecd_kick_(
                ps,
                gs,
                ms,
                rescale=rescale,
                kick=group["lr"] * kick,
                weight_decay=group["weight_decay"],
                foreach=self._use_foreach(group, ps),
            )
        momentum_sq = sum_of_squares(momenta, device)
        drift = ham.drift_factor(energy, potential, momentum_sq)
        for group, ps, _, ms in particle:
            ecd_drift_(ps, ms, drift=group["lr"] * drift, foreach=self._use_foreach(group, ps))
        if cfg.chaos > 0:
            chaos.rotate_(momenta, self._draw(momenta, "gaussian"), cfg.chaos)

        # ---- bookkeeping
        s["c0"], s["c1"] = chaos.counters_after_update(s["c0"], s["c1"], is_new_minimum)
        s["best_objective"] = objective if best is None else torch.minimum(best, objective)
        s["momentum_sq"] = momentum_sq
        s["rescale"] = rescale
        s["speed"] = drift * momentum_sq.sqrt()
        s["steps"] += 1
        return loss

    def _potential(self, effective: Tensor) -> Tensor:
        """V = g(F_eff) = F_eff**η for F_eff > 0; F_eff itself otherwise (V ≤ 0: stopped)."""
        if self.config.loss_power == 1.0:
            return effective
        positive = torch.clamp(effective, min=torch.finfo(torch.float64).tiny)
        return torch.where(effective > 0, positive**self.config.loss_power, effective)

    def _initialize(
        self,
        particle: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor]]],
        potential: Tensor,
    ) -> None:
        """E = E(V0, δE) (eq. 13) and Π0 = −∇V/|∇V|·sqrt(Π²_target(E, V0)) (eq. 14)."""
        s, ham, cfg = self._ecd, self.hamiltonian, self.config
        device = potential.device
        energy = ham.initial_energy(potential, cfg.extra_energy)
        # the direction of ∇F_eff = ∇F + λ·Θ (∇V is parallel to it)
        directions = []
        for group, ps, gs, _ in particle:
            for p, g in zip(ps, gs, strict=True):
                d = g.to(momentum_dtype(p))
                if group["weight_decay"] != 0.0:
                    d = d + group["weight_decay"] * p.to(d.dtype)
                directions.append(d)
        norm_sq = sum_of_squares(directions, device)
        if bool(norm_sq <= 0):
            directions = self._draw(directions)  # zero gradient: a random direction, not NaN
            norm_sq = sum_of_squares(directions, device)
            sign = 1.0
        else:
            sign = -1.0
        speed = torch.sqrt(torch.clamp(ham.target_momentum_sq(energy, potential), min=0.0))
        scale = sign * speed / torch.sqrt(norm_sq)
        momenta = [m for _, _, _, ms in particle for m in ms]
        for m, d in zip(momenta, directions, strict=True):
            m.copy_(d * scale.to(d.device, d.dtype))
        s["energy"] = energy
        s["momentum_sq"] = sum_of_squares(momenta, device)
        s["initialized"] = True


class BBI(ECD):
    """Bouncing Born-Infeld (Algorithm 1 of the paper): ECD with H = sqrt(V(V + Π²)).

    Defaults of design.md §2: T0 = 1000 steps between N_b = 1 fixed bounces, a progress bounce
    after T1 = 3000 steps without a new minimum, no rotation. See :class:`ECD` for the arguments.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        *,
        loss_floor: float = 0.0,
        extra_energy: float = 0.0,
        bounce_period: int | None = 1000,
        n_bounces: int = 1,
        bounce_patience: int | None = 3000,
        loss_power: float = 1.0,
        conserve_energy: bool = True,
        energy_tol: float = 1e-10,
        stop_tol: float = 1e-40,
        weight_decay: float = 0.0,
        adapt_floor: bool = False,
        seed: int | None = None,
        bounce_direction: str = "gaussian",
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            hamiltonian="born_infeld",
            loss_power=loss_power,
            loss_floor=loss_floor,
            extra_energy=extra_energy,
            bounce_period=bounce_period,
            n_bounces=n_bounces,
            bounce_patience=bounce_patience,
            chaos=0.0,
            conserve_energy=conserve_energy,
            energy_tol=energy_tol,
            stop_tol=stop_tol,
            weight_decay=weight_decay,
            adapt_floor=adapt_floor,
            seed=seed,
            bounce_direction=bounce_direction,
            foreach=foreach,
        )


class ECDSep(ECD):
    """Separable ECD (De Luca, Gatti & Silverstein 2023): H = log V + log(s + Π²), V = F_eff**η.

    Chaos by a continuous rotation of Π of strength ν = ``chaos`` (default 1e-5) every step; no
    bounces. ``loss_power`` η ≥ 1 concentrates the measure near the minimum (their advice).
    See :class:`ECD` for the arguments.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        *,
        loss_power: float = 1.0,
        loss_floor: float = 0.0,
        extra_energy: float = 0.0,
        chaos: float = 1e-5,
        kinetic_offset: float = 1.0,
        conserve_energy: bool = True,
        energy_tol: float = 1e-10,
        stop_tol: float = 1e-40,
        weight_decay: float = 0.0,
        adapt_floor: bool = False,
        seed: int | None = None,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            hamiltonian="separable",
            loss_power=loss_power,
            loss_floor=loss_floor,
            extra_energy=extra_energy,
            bounce_period=None,
            n_bounces=0,
            bounce_patience=None,
            chaos=chaos,
            kinetic_offset=kinetic_offset,
            conserve_energy=conserve_energy,
            energy_tol=energy_tol,
            stop_tol=stop_tol,
            weight_decay=weight_decay,
            adapt_floor=adapt_floor,
            seed=seed,
            foreach=foreach,
        )
