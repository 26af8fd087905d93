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
from ._kernels import (
    ecd_drift_,
    ecd_kick_,
    fused_drift_,
    fused_kick_drift_,
    host_sum_of_squares,
    is_plain_cpu,
    sum_of_squares,
)
from .hamiltonians import (
    HAMILTONIANS,
    Hamiltonian,
    Scalar,
    adapted_floor,
    get_hamiltonian,
    restoration_factor,
    select,
    sqrt,
)

__all__ = ["BBI", "ECD", "ECDSep", "MissingLossError", "NonFiniteLossWarning"]


class MissingLossError(TypeError):
    """``step()`` was called without a closure and without a loss."""


class NonFiniteLossWarning(RuntimeWarning):
    """A step was skipped because the loss or a gradient was NaN or infinite."""


_MISSING_LOSS_MESSAGE = (
    "ECD optimizers need the loss value to define the potential V = F - F0. After "
    "loss.backward(), pass it as `optimizer.step(lambda: loss)` (works in every framework: "
    "Lightning, accelerate, plain loops), or `optimizer.step(loss=loss)`, or give step() a "
    "closure that zeroes the grads, computes the loss, calls backward() and returns it. Loops "
    "that call step() with no argument (Hugging Face Trainer): see ecdopt.integrations."
    "LossRecorder."
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


def _isfinite(x: Scalar) -> bool | Tensor:
    return torch.isfinite(x) if isinstance(x, Tensor) else math.isfinite(x)


def _power(x: Scalar, y: float) -> Scalar:
    """x**y; a float overflow gives inf (then the step is skipped) instead of raising."""
    if isinstance(x, Tensor):
        return x**y
    try:
        return x**y
    except OverflowError:
        return math.inf


def _not(x: bool | Tensor) -> bool | Tensor:
    return ~x if isinstance(x, Tensor) else not x


_SCALAR_KEYS = (
    "energy",
    "loss_floor",
    "best_objective",
    "potential",
    "momentum_sq",
    "rescale",
    "speed",
)
_COUNTER_KEYS = ("c0", "c1", "fixed_bounces_done", "bounces", "steps", "skipped")


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
        seed: seed of the random draws (bounces, rotations); None: fresh entropy.
        bounce_direction: ``"gaussian"`` (isotropic, default) or ``"uniform"`` (ξ in the cube
            [−½, ½]^n, as the authors' code: reproduces their figures, not isotropic).
        foreach: use the multi-tensor (``torch._foreach_*``) path; None: yes.
        fused: run the kick, drift and Π² of each param group as one ``torch.compile``-d
            function (one fused loop per tensor: SGD's memory traffic). Compiles on the first
            step (seconds to a minute); all params must be on one device. None: off.
        sync_free: keep every decision on the device (no host read per step). None: on for
            non-CPU devices, off on the CPU (where reading a value costs nothing).
        capturable: the step can be captured in a CUDA graph (implies ``sync_free``; needs the
            bounce-free dynamics: ``bounce_period=None``, ``bounce_patience=None``, ``chaos=0``).
        process_group: the ``torch.distributed`` group the particle is replicated over (None:
            the default group).
        reduce_loss: average the loss over ``process_group`` before it defines V, so that every
            replica of a data-parallel run sees the same V (DDP averages the gradients, this
            averages the loss: the replicas then follow the full-batch particle). None: on when
            ``torch.distributed`` is initialized with more than one rank. Turn it off only when
            the ranks train independent particles (e.g. one ensemble member per rank).

    ``step(closure)`` calls the closure once under ``torch.enable_grad()``;
    ``step(loss=loss)`` takes a loss whose ``backward()`` already ran. A NaN/inf loss or gradient
    leaves parameters and state unchanged (on the host path with a
    :class:`NonFiniteLossWarning`).
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
        fused: bool | None = None,
        sync_free: bool | None = None,
        capturable: bool = False,
        process_group: Any = None,
        reduce_loss: bool | None = None,
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
        self._has_chaos = (
            (bounce_period is not None and n_bounces > 0)
            or bounce_patience is not None
            or self.config.chaos > 0
        )
        if capturable and self._has_chaos:
            raise ValueError(
                "capturable=True needs the bounce-free dynamics (bounce_period=None or "
                "n_bounces=0, bounce_patience=None, chaos=0): random draws cannot be replayed "
                "by a CUDA graph"
            )
        if sync_free is not None and not isinstance(sync_free, bool):
            raise ValueError(f"sync_free must be True, False or None, got {sync_free!r}")
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused must be True, False or None, got {fused!r}")
        self.fused = bool(fused)
        self.seed = secrets.randbits(63) if seed is None else seed
        self._seed_given = seed is not None
        self.process_group = process_group
        self.reduce_loss = reduce_loss
        self.capturable = bool(capturable)
        self.sync_free = True if capturable else sync_free
        self.hamiltonian: Hamiltonian = get_hamiltonian(
            hamiltonian, kinetic_offset=self.config.kinetic_offset
        )
        defaults = {"lr": lr, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params, defaults)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._late_counters: tuple[Tensor, Any] | None = None
        self._ecd: dict[str, Any] = self._fresh_particle_state()

    # ------------------------------------------------------------------ state
    def _fresh_particle_state(self) -> dict[str, Any]:
        return {
            "initialized": False,
            "calls": 0,
            **dict.fromkeys(_COUNTER_KEYS, 0),
            **dict.fromkeys(_SCALAR_KEYS),
        }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            _validate_lr(param_group["lr"])
        if "weight_decay" in param_group:
            _validate_weight_decay(param_group["weight_decay"])
        super().add_param_group(param_group)

    _PICKLED = (
        "config",
        "hamiltonian",
        "seed",
        "_seed_given",
        "capturable",
        "sync_free",
        "fused",
        "reduce_loss",
        "_has_chaos",
        "_ecd",
    )

    def __getstate__(self) -> dict[str, Any]:
        """torch's Optimizer pickles only defaults, state and param_groups; ECD adds its
        configuration and the particle's state (generators are re-created, being keyed; a
        process group cannot be pickled and becomes the default group)."""
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in self._PICKLED if key in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("weight_decay", 0.0)
        self.__dict__.setdefault("_generators", {})
        self.__dict__.setdefault("_late_counters", None)
        self.__dict__.setdefault("process_group", None)
        self.__dict__.setdefault("_ecd", self._fresh_particle_state())

    def state_dict(self) -> dict[str, Any]:
        """The usual optimizer state plus ``"ecd"``: energy, counters, best V, floor, seed.

        Everything is a tensor, number, string or container of them, so
        ``torch.load(..., weights_only=True)`` reads it back.
        """
        sd = super().state_dict()
        particle = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self._ecd.items()}
        particle["seed"] = self.seed
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
        particle.pop("config", None)
        self._late_counters = None
        self._placed = None
        self._ecd = {
            **self._fresh_particle_state(),
            **{k: (v.clone() if isinstance(v, Tensor) else v) for k, v in particle.items()},
        }

    def _place_state(self, device: torch.device, sync_free: bool) -> None:
        """Scalars as floats/ints on the host path, as 0-dim device tensors on the sync-free one."""
        placed = (device, sync_free)
        if self.__dict__.get("_placed") == placed:
            return
        self._placed = placed
        s = self._ecd
        for key in (*_SCALAR_KEYS, *_COUNTER_KEYS):
            value = s[key]
            if value is None:
                continue
            if sync_free:
                dtype = torch.float64 if key in _SCALAR_KEYS else torch.int64
                if not (isinstance(value, Tensor) and value.device == device):
                    s[key] = torch.as_tensor(value, dtype=dtype).to(device)
            elif isinstance(value, Tensor):
                s[key] = value.item()

    # ------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, float]:
        """Plain floats for logging (this reads device values: call it when you log).

        ``energy`` E, ``potential`` V of the last step, ``momentum_sq`` Π² after it, ``speed``
        |Θ̇| = D·|Π| (per unit Δt), ``rescale`` the last α, ``steps`` updates done, ``bounces``
        performed, ``skipped`` steps skipped for a NaN/inf loss or gradient (the sync-free path
        cannot warn without a host read: check this), ``loss_floor`` the current F0.
        """
        s = self._ecd

        def as_float(v: Any) -> float:
            return float("nan") if v is None else float(v)

        floor = s["loss_floor"] if s["loss_floor"] is not None else self.config.loss_floor
        return {
            "energy": as_float(s["energy"]),
            "potential": as_float(s["potential"]),
            "momentum_sq": as_float(s["momentum_sq"]),
            "speed": as_float(s["speed"]),
            "rescale": as_float(s["rescale"]),
            "steps": float(s["steps"]),
            "bounces": float(s["bounces"]),
            "skipped": float(s["skipped"]),
            "loss_floor": float(floor),
        }

    # ------------------------------------------------------------------- step
    def _particle(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor]]]:
        """(group, params, grads, momenta) for the params that have a gradient."""
        out = []
        state = self.state
        plain = True  # every param (hence grad and Π) a float32/float64 CPU tensor
        for group in self.param_groups:
            params, grads, momenta = [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse or grad.dtype.is_complex:
                    kind = "sparse" if grad.is_sparse else "complex"
                    raise ValueError(f"ECD does not support {kind} gradients (got one for a param)")
                momentum = state[p].get("momentum")
                if momentum is None:
                    if p.dtype.is_complex:
                        raise ValueError("ECD does not support complex parameters")
                    momentum = state[p]["momentum"] = torch.zeros_like(
                        p, dtype=momentum_dtype(p), memory_format=torch.preserve_format
                    )
                plain = plain and is_plain_cpu(p) and grad.dtype == p.dtype and grad.is_cpu
                params.append(p)
                grads.append(grad)
                momenta.append(momentum)
            if params:
                out.append((group, params, grads, momenta))
        self._plain_cpu = plain
        return out

    def _scratch_like(self, tensors: list[Tensor]) -> list[Tensor]:
        """Buffers shaped like ``tensors``, kept between steps (not state: never saved)."""
        signature = [(t.shape, t.dtype, t.device) for t in tensors]
        if self.__dict__.get("_scratch_signature") != signature:
            self._scratch = [torch.empty_like(t) for t in tensors]
            self._scratch_signature = signature
        return self._scratch

    def _draw(
        self,
        like: list[Tensor],
        step: int,
        stream: int,
        kind: str,
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """ξ for ``stream`` at ``step``, keyed so other draws never shift it (into ``out``)."""
        key = chaos.keyed_seed(self.seed, step, stream)
        gens = {}
        for t in like:
            if t.device not in gens:
                gen = self._generators.get(t.device)
                if gen is None:
                    gen = self._generators[t.device] = torch.Generator(device=t.device)
                gens[t.device] = gen.manual_seed(key)
        xi = chaos.draw_direction(like, gens, kind, out=out)  # type: ignore[arg-type]
        if any(type(t) not in (Tensor, torch.nn.Parameter) for t in like):
            from .distributed import is_dtensor, shard_like  # FSDP2: every rank draws the full

            # ξ from the same key and keeps its own shard, as the unsharded run would bounce
            xi = [shard_like(x, t) if is_dtensor(t) else x for x, t in zip(xi, like, strict=True)]
        return xi

    def _known_counters(self) -> tuple[int, int, int] | None:
        """The counters at the start of this step as host ints, if the device already sent them
        (a non-blocking copy queued by the previous step); None when not (yet) known."""
        if self._late_counters is None:
            return None
        values, event = self._late_counters
        if event is not None and not event.query():
            return None
        c0, c1, done = values.tolist()
        return c0, c1, done

    def _send_counters(self, device: torch.device) -> None:
        s = self._ecd
        counters = torch.stack([s["c0"], s["c1"], s["fixed_bounces_done"]])
        if device.type == "cuda":
            # one pinned buffer is enough: the host reads it (in _known_counters) before the
            # next copy into it is queued, and copies run in stream order
            previous = self._late_counters
            values = (
                previous[0]
                if previous is not None and previous[0].is_pinned()
                else torch.empty(3, dtype=torch.int64, pin_memory=True)
            )
            values.copy_(counters, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._late_counters = (values, event)
        else:
            self._late_counters = (counters.cpu(), None)

    def _distributed(self) -> bool:
        """Whether the loss is averaged over the process group (see ``reduce_loss``)."""
        if self.reduce_loss is False or not torch.distributed.is_available():
            return False
        if not torch.distributed.is_initialized():
            if self.reduce_loss:
                raise RuntimeError("reduce_loss=True needs torch.distributed to be initialized")
            return False
        world = torch.distributed.get_world_size(self.process_group)
        if world > 1 and not self._seed_given and not self._ecd["initialized"]:
            # every replica must draw the same bounce directions: take rank 0's seed
            seed = [self.seed]
            torch.distributed.broadcast_object_list(seed, src=0, group=self.process_group)
            self.seed = int(seed[0])
            self._seed_given = True
        return world > 1

    def _start_loss_reduction(self, loss_value: Tensor) -> tuple[Any, int, Tensor]:
        """Start the all-reduce (sum) of a copy of the loss; returns (work, world, buffer)."""
        world = torch.distributed.get_world_size(self.process_group)
        buffer = loss_value.clone()
        work = torch.distributed.all_reduce(
            buffer, op=torch.distributed.ReduceOp.SUM, group=self.process_group, async_op=True
        )
        return work, world, buffer

    @torch.no_grad()
    def step(
        self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None
    ) -> Tensor | float | None:
        """One ECD step (see the module docstring). Returns the loss."""
        if closure is not None:
            with torch.enable_grad():
                returned = closure()
            if returned is not None and loss is not None:
                raise TypeError(
                    "the closure returned a loss and loss=... was passed too: pass one of them"
                )
            loss = returned if returned is not None else loss
        if loss is None:
            raise MissingLossError(_MISSING_LOSS_MESSAGE)
        particle = self._particle()
        if not particle:
            return loss
        cfg, ham, s = self.config, self.hamiltonian, self._ecd
        device = particle[0][1][0].device
        sync_free = self.sync_free if self.sync_free is not None else device.type != "cpu"
        host = not sync_free or not s["initialized"]  # the first step always reads values
        self._place_state(device, sync_free and s["initialized"])
        call = s["calls"]
        s["calls"] = call + 1

        # ---- pass 1: global reductions over the whole particle (float64, on the device)
        loss_value = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        if loss_value.numel() != 1:
            shape = tuple(loss_value.shape)
            raise ValueError(f"loss must be a single number (a 0-dim tensor), got shape {shape}")
        grads = [g for _, _, gs, _ in particle for g in gs]
        momenta = [m for _, _, _, ms in particle for m in ms]
        decayed = [
            (group["weight_decay"], ps)
            for group, ps, _, _ in particle
            if group["weight_decay"] != 0.0
        ]
        distributed = self._distributed()
        if host and device.type == "cpu" and not distributed:
            # the CPU host path: plain floats (reading a CPU value costs nothing)
            loss_f = loss_value.item()
            plain = self._plain_cpu
            grad_sq = host_sum_of_squares(grads, device, plain=plain)
            theta_sqs = [host_sum_of_squares(ps, device, plain=plain) for _, ps in decayed]
        else:
            loss_value = loss_value.to(device=device, dtype=torch.float64).reshape(())
            pending = self._start_loss_reduction(loss_value) if distributed else None
            sums = [sum_of_squares(grads, device)]
            sums += [sum_of_squares(ps, device) for _, ps in decayed]
            if pending is not None:  # the all-reduce ran while the local sums were computed
                work, world, total = pending
                work.wait()
                loss_value = total / world
            if host:  # first step, or a CPU particle under torch.distributed: one read
                loss_f, grad_sq, *theta_sqs = torch.stack([loss_value, *sums]).tolist()
            else:
                loss_f, grad_sq, *theta_sqs = [loss_value, *sums]
        objective = loss_f
        for (weight_decay, _), theta_sq in zip(decayed, theta_sqs, strict=True):
            objective = objective + 0.5 * weight_decay * theta_sq

        # ---- the decisions of this step, as host bools or device masks
        floor = s["loss_floor"] if s["loss_floor"] is not None else cfg.loss_floor
        finite = _isfinite(objective) & _isfinite(grad_sq)
        below_floor = (objective - floor <= 0) & finite
        if cfg.adapt_floor:
            floor = select(below_floor, adapted_floor(objective, floor), floor)
        effective = objective - floor  # F_eff
        potential = self._potential(effective)
        finite = finite & _isfinite(potential)  # F_eff**η can overflow for a finite loss
        moving = finite & _not(potential <= cfg.stop_tol)
        best = s["best_objective"] if s["best_objective"] is not None else math.inf
        new_minimum = objective < best

        if host:
            if not finite:
                s["skipped"] += 1
                warnings.warn(
                    "ECD step skipped: the loss or a gradient is NaN or infinite; parameters "
                    "and optimizer state are unchanged",
                    NonFiniteLossWarning,
                    stacklevel=2,
                )
                return loss
            if below_floor and not s["initialized"] and not cfg.adapt_floor:
                raise ValueError(
                    f"the loss ({loss_f:.6g}) is at or below loss_floor ({floor:.6g}) at the "
                    "first step, so V = F - F0 <= 0: pass a loss_floor below the loss, or "
                    "adapt_floor=True to lower it automatically"
                )
            s["loss_floor"], s["potential"] = floor, potential
            if not moving:
                return loss  # V <= ε2: the dynamics has reached the floor, nothing moves
            if not s["initialized"]:
                self._initialize(particle, potential, device)
        else:
            # a non-finite gradient must not reach Π or Θ: zero it (the step is masked anyway)
            for g in grads:
                g.masked_fill_(~finite, 0.0)
            self._store("skipped", s["skipped"] + ~finite)
            self._store("loss_floor", floor)
            self._store("potential", select(finite, potential, s["potential"]))
        energy = s["energy"]
        if cfg.adapt_floor:  # the floor moved: restart at E = E(V', δE), direction kept
            energy = select(below_floor, ham.initial_energy(potential, cfg.extra_energy), energy)
        self._update(
            particle,
            grads,
            momenta,
            energy,
            potential,
            effective,
            objective,
            moving,
            new_minimum,
            call,
            host,
            device,
        )
        if sync_free and host:  # the first step ran on the host: from now on, the device
            self._place_state(device, True)
            if self._has_chaos and not self.capturable:
                self._send_counters(device)
        return loss

    def _update(
        self,
        particle,
        grads,
        momenta,
        energy,
        potential,
        effective,
        objective,
        moving,
        new_minimum,
        call,
        host,
        device,
    ) -> None:
        """Bounce, restoration, kick, drift, rotation and bookkeeping (masked by ``moving``)."""
        cfg, ham, s = self.config, self.hamiltonian, self._ecd
        # ---- chaos: a bounce merged into this step
        c0, c1, done = s["c0"], s["c1"], s["fixed_bounces_done"]
        fixed, due = chaos.bounce_due(
            c0,
            c1,
            done,
            bounce_period=cfg.bounce_period,
            n_bounces=cfg.n_bounces,
            bounce_patience=cfg.bounce_patience,
        )
        if host:
            if due:
                xi = self._draw(momenta, call, chaos.STREAM_BOUNCE, cfg.bounce_direction)
                chaos.bounce_(momenta, xi)
                c0, c1, done = chaos.counters_after_bounce(
                    c0, c1, done, fixed, n_bounces=cfg.n_bounces
                )
                s["bounces"] += 1
        elif self._has_chaos and not self.capturable:
            due = due & moving
            known = self._known_counters()
            possibly_due = True
            if known is not None:  # the host knows the counters: no draw unless a bounce is due
                possibly_due = bool(
                    chaos.bounce_due(
                        *known,
                        bounce_period=cfg.bounce_period,
                        n_bounces=cfg.n_bounces,
                        bounce_patience=cfg.bounce_patience,
                    )[1]
                )
            if possibly_due:
                xi = self._draw(momenta, call, chaos.STREAM_BOUNCE, cfg.bounce_direction)
                chaos.bounce_(momenta, xi, mask=due)
            after = chaos.counters_after_bounce(c0, c1, done, fixed, n_bounces=cfg.n_bounces)
            c0, c1, done = (
                torch.where(due, a, b) for a, b in zip(after, (c0, c1, done), strict=True)
            )
            self._store("bounces", s["bounces"] + due)

        # ---- restoration, kick, drift (symplectic Euler: kick with the old Θ, drift with new Π)
        if cfg.conserve_energy:
            target = ham.target_momentum_sq(energy, potential)
            rescale = restoration_factor(s["momentum_sq"], target, cfg.energy_tol)
        else:
            rescale = 1.0
        # far above the energy shell (a minibatch with V > κE) BBI uses V clipped to κE
        dynamical = ham.dynamical_potential(energy, potential)
        kick = ham.kick_factor(energy, dynamical)
        if not host or dynamical != potential:  # the force of the rescaled potential
            kick = kick * (dynamical / potential)
        if cfg.loss_power != 1.0:  # ∇V = η·F_eff**(η−1)·∇F_eff
            kick = kick * cfg.loss_power * _power(effective, cfg.loss_power - 1.0)
        if not host:
            rescale = torch.where(moving, rescale, 1.0)
            kick = torch.where(moving, kick, 0.0)
        if self.fused:
            momentum_sq, drift = self._fused_kick_drift(
                particle, rescale, kick, energy, dynamical, moving, host, device
            )
        else:
            for group, ps, gs, ms in particle:
                ecd_kick_(
                    ps,
                    gs,
                    ms,
                    rescale=rescale,
                    kick=group["lr"] * kick,
                    weight_decay=group["weight_decay"],
                    foreach=group["foreach"] is not False,
                )
            if host and device.type == "cpu":
                momentum_sq = host_sum_of_squares(momenta, device, plain=self._plain_cpu)
            else:
                momentum_sq = sum_of_squares(momenta, device)
                if host:
                    momentum_sq = momentum_sq.item()
            drift = ham.drift_factor(energy, dynamical, momentum_sq)
            if not host:
                drift = torch.where(moving, drift, 0.0)
            for group, ps, _, ms in particle:
                ecd_drift_(ps, ms, drift=group["lr"] * drift, foreach=group["foreach"] is not False)
        if cfg.chaos > 0:
            # on the CPU a fresh model-sized ξ every step costs page faults: reuse one buffer
            plain_host = host and self._plain_cpu
            scratch = self._scratch_like(momenta) if plain_host else None
            xi = self._draw(momenta, call, chaos.STREAM_ROTATION, "gaussian", out=scratch)
            # the unfused host path summed Π² exactly after the kick (the drift leaves Π alone)
            known = momentum_sq if plain_host and not self.fused else None
            chaos.rotate_(momenta, xi, cfg.chaos, mask=None if host else moving, momentum_sq=known)

        # ---- bookkeeping
        c0_next, c1_next = chaos.counters_after_update(c0, c1, new_minimum)
        best = s["best_objective"] if s["best_objective"] is not None else math.inf
        if host:
            s["c0"], s["c1"], s["fixed_bounces_done"] = c0_next, c1_next, done
            s["best_objective"] = min(best, objective)
            s["steps"] += 1
        else:
            self._store("c0", torch.where(moving, c0_next, c0))
            self._store("c1", torch.where(moving, c1_next, c1))
            self._store("fixed_bounces_done", done)
            best_t = torch.as_tensor(best, dtype=torch.float64, device=device)
            self._store(
                "best_objective", torch.where(moving, torch.minimum(best_t, objective), best_t)
            )
            self._store("steps", s["steps"] + moving)
            if self._has_chaos and not self.capturable:
                self._send_counters(device)
        self._store("energy", energy)
        self._store("momentum_sq", momentum_sq)
        self._store("rescale", rescale)
        self._store("speed", drift * sqrt(momentum_sq))

    def _store(self, key: str, value: Any) -> None:
        """Set a particle value; a device tensor is updated in place, so that a step captured in
        a CUDA graph reads, on replay, what the previous replay wrote."""
        old = self._ecd.get(key)
        if (
            isinstance(old, Tensor)
            and isinstance(value, Tensor)
            and old is not value
            and old.shape == value.shape
            and old.dtype == value.dtype
            and old.device == value.device
        ):
            old.copy_(value)
        else:
            self._ecd[key] = value

    def _fused_kick_drift(self, particle, rescale, kick, energy, potential, moving, host, device):
        """The ``fused=True`` kick and drift; returns (Π² after the kick, the drift factor D)."""
        ham = self.hamiltonian

        def as_tensor(x: Scalar) -> Tensor:
            return (
                x if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64, device=device)
            )

        if any(p.device != device for _, ps, _, _ in particle for p in ps):
            raise ValueError("fused=True needs every parameter on one device")
        drift_first = not ham.drift_uses_momentum_sq
        drift = (
            ham.drift_factor(energy, potential, self._ecd["momentum_sq"]) if drift_first else None
        )
        if drift is not None and not host:
            drift = torch.where(moving, drift, 0.0)
        momentum_sq = torch.zeros((), dtype=torch.float64, device=device)
        for group, ps, gs, ms in particle:
            momentum_sq = momentum_sq + fused_kick_drift_(
                ps,
                gs,
                ms,
                rescale=as_tensor(rescale),
                kick=as_tensor(group["lr"] * kick),
                drift=None if drift is None else as_tensor(group["lr"] * drift),
                weight_decay=float(group["weight_decay"]),
            )
        if host:
            momentum_sq = momentum_sq.item()
        if drift is None:
            drift = ham.drift_factor(energy, potential, momentum_sq)
            if not host:
                drift = torch.where(moving, drift, 0.0)
            for group, ps, _, ms in particle:
                fused_drift_(ps, ms, drift=as_tensor(group["lr"] * drift))
        return momentum_sq, drift

    def _potential(self, effective: Scalar) -> Scalar:
        """V = g(F_eff) = F_eff**η for F_eff > 0; F_eff itself otherwise (V ≤ 0: stopped)."""
        eta = self.config.loss_power
        if eta == 1.0:
            return effective
        if isinstance(effective, Tensor):
            positive = torch.clamp(effective, min=torch.finfo(torch.float64).tiny)
            return torch.where(effective > 0, positive**eta, effective)
        return _power(effective, eta) if effective > 0 else effective

    def _initialize(self, particle, potential: float, device: torch.device) -> None:
        """E = E(V0, δE) (eq. 13) and Π0 = −∇V/|∇V|·sqrt(Π²_target(E, V0)) (eq. 14)."""
        s, ham, cfg = self._ecd, self.hamiltonian, self.config
        energy = ham.initial_energy(potential, cfg.extra_energy)
        # the direction of ∇F_eff = ∇F + λ·Θ (∇V is parallel to it)
        directions = []
        for group, ps, gs, _ in particle:
            for p, g in zip(ps, gs, strict=True):
                d = g.to(momentum_dtype(p))
                if group["weight_decay"] != 0.0:
                    d = d + group["weight_decay"] * p.to(d.dtype)
                directions.append(d)
        norm_sq = sum_of_squares(directions, device).item()
        sign = -1.0
        if not norm_sq > 0:  # zero gradient: a random direction, not NaN
            directions = self._draw(directions, 0, chaos.STREAM_INITIAL, "gaussian")
            norm_sq = sum_of_squares(directions, device).item()
            sign = 1.0
        speed = math.sqrt(max(ham.target_momentum_sq(energy, potential), 0.0))
        scale = sign * speed / math.sqrt(norm_sq)
        momenta = [m for _, _, _, ms in particle for m in ms]
        for m, d in zip(momenta, directions, strict=True):
            m.copy_(d).mul_(scale)
        s["energy"] = energy
        s["momentum_sq"] = sum_of_squares(momenta, device).item()
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
        fused: bool | None = None,
        sync_free: bool | None = None,
        capturable: bool = False,
        process_group: Any = None,
        reduce_loss: bool | None = None,
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
            fused=fused,
            sync_free=sync_free,
            capturable=capturable,
            process_group=process_group,
            reduce_loss=reduce_loss,
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
        fused: bool | None = None,
        sync_free: bool | None = None,
        process_group: Any = None,
        reduce_loss: bool | None = None,
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
            fused=fused,
            sync_free=sync_free,
            process_group=process_group,
            reduce_loss=reduce_loss,
        )
