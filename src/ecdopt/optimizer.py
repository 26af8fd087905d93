"""ECD optimizers as ``torch.optim.Optimizer``: :class:`ECD` and its presets :class:`BBI`,
:class:`ECDSep` and :class:`UnitSpeedECD`.

The class is plumbing: it gathers the parameters of all param groups into one particle, holds the
particle's state, and dispatches to :func:`ecdopt._step.host_step` (CPU, Python-float scalars)
or :func:`ecdopt._step.device_step` (every decision a device mask, no host read). The math lives
in :mod:`ecdopt.hamiltonians`, :mod:`ecdopt.chaos`, :mod:`ecdopt._step` and
:mod:`ecdopt._kernels`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from . import _state, chaos
from ._config import (
    PRESETS,
    ECDConfig,
    check_bool,
    check_lr,
    check_number,
    check_seed,
)
from ._step import (
    NonFiniteLossWarning,
    device_step,
    fold_scale,
    fresh_state,
    host_step,
    place_state,
    settle,
)
from .hamiltonians import Hamiltonian, get_hamiltonian

__all__ = ["BBI", "ECD", "ECDSep", "MissingLossError", "NonFiniteLossWarning", "UnitSpeedECD"]


class MissingLossError(TypeError):
    """``step()`` was called without a closure and without a loss."""


_MISSING_LOSS_MESSAGE = (
    "ECD optimizers need the loss value to define the potential V = F - F0. After "
    "loss.backward(), pass it as `optimizer.step(lambda: loss)` (works in every framework: "
    "Lightning, accelerate, plain loops), or `optimizer.step(loss=loss)`, or give step() a "
    "closure that zeroes the grads, computes the loss, calls backward() and returns it. Loops "
    "that call step() with no argument (Hugging Face Trainer): see ecdopt.integrations."
    "LossRecorder. Under a GradScaler (Lightning fp16) a closure does not reach step(): pass "
    "loss=loss."
)


def _wrapped_when_listened(func: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` wrapped by torch's ``profile_hook_step`` (a profiler range and the step hooks),
    entered only when something listens: a registered step hook or a running profiler.
    Otherwise ``step`` is called directly, which saves a few microseconds per step (a whole-step
    cost on small models)."""
    wrapped = torch.optim.Optimizer.profile_hook_step(func)

    @functools.wraps(func)
    def step(self: ECD, *args: Any, **kwargs: Any) -> Any:
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _GLOBAL_STEP_HOOKS[0]
            or _GLOBAL_STEP_HOOKS[1]
            or torch.autograd._profiler_enabled()
        ):
            return wrapped(self, *args, **kwargs)
        return func(self, *args, **kwargs)

    return step


class ECD(torch.optim.Optimizer):
    r"""Energy-Conserving Descent: one frictionless particle at fixed energy E.

    All parameters of all param groups form ONE particle Θ with momentum Π (one E, one V, one
    Π²). Paper symbols in brackets; the table of every argument is in docs/api.md.

    Args:
        params: parameters or param groups (per-group ``lr`` and ``weight_decay`` allowed).
        lr: Δt, the time step (> 0; a float or a 1-element tensor). None: every param group
            gives its own. Read every step, so LR schedulers work.
        hamiltonian: ``"born_infeld"`` (BBI, eqs. 3-6), ``"inverse_mass"`` (mass 1/V,
            eqs. 34-36), ``"separable"`` (ECDSep) or ``"unit_speed"`` (unit-speed ECD).
        loss_power: η; V = F_eff**η (unit speed: η scales the force, measure ∝ F_eff^(−ηd/2)).
        loss_floor: ΔV = F0 (eq. 1), the loss value treated as zero.
        extra_energy: δE ≥ 0, energy above the initial potential (eq. 13).
        bounce_period: T0, steps between fixed bounces (None: none).
        n_bounces: N_b, the number of fixed bounces.
        bounce_patience: T1, steps without a new minimum of V before a bounce (None: never).
        chaos: ν ≥ 0, the strength of the per-step rotation of Π; 0 turns it off.
        rotation_every: k ≥ 1; rotate every k-th step with strength ν·sqrt(k) instead of every
            step with ν (the same diffusion of the direction to first order in ν²; k draws
            fewer model-sized Gaussians). 1: every step, the dynamics of the paper.
        kinetic_offset: s > 0, the separable Hamiltonian's offset.
        conserve_energy: consEn, restore H = E every step by rescaling Π (α).
        energy_tol: ε1, skip the restoration when |Π² − Π²_target| < ε1.
        stop_tol: ε2, nothing moves when V ≤ ε2.
        weight_decay: λ ≥ 0, adds ½·λ·|Θ|² to the loss inside V (per group).
        adapt_floor: lower F0 when the particle overshoots it (V ≤ 0), the paper's adaptive ΔV.
        seed: seed of the random draws (bounces, rotations); None: drawn from torch's default
            generator, so ``torch.manual_seed`` makes runs repeat.
        bounce_direction: ``"gaussian"`` (isotropic, default) or ``"uniform"`` (the authors'
            cube [−½, ½]^n: reproduces their figures, not isotropic).
        off_shell: BBI with V > κE (κ = 2): ``"rescale"`` the batch to κE (default, counted in
            ``diagnostics()["off_shell_steps"]``) or ``"exact"`` (Algorithm 1 literally).
        rng: the generator of ξ: ``"torch"`` (a ``torch.Generator`` reseeded per draw, the
            default) or ``"counter"`` (a counter-based hash in tensor ops: the same numbers on
            every device, keyed by a device step counter under ``capturable``).
        foreach: the multi-tensor (``torch._foreach_*``) path; None: yes.
        fused: kick, drift and Π² of a param group as one ``torch.compile``-d function.
        sync_free: every decision on the device (no host read). None: on except on the CPU.
        capturable: the step can be captured in a CUDA graph (implies ``sync_free``; bounces
            and rotations need ``rng="counter"``).
        process_group: the ``torch.distributed`` group the particle is replicated over.
        reduce_loss: average the loss over ``process_group`` before it defines V, so DDP
            replicas follow the full-batch particle. None: when distributed with > 1 rank.

    ``step(closure)`` calls the closure once under ``torch.enable_grad()``; ``step(loss=loss)``
    takes a loss whose ``backward()`` already ran; ``step(lambda: loss)`` works everywhere. A
    NaN/inf loss or gradient, or an update that would overflow, leaves parameters and state
    unchanged and counts in ``diagnostics()["skipped"]`` (the host path also warns).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor | None = None,
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
        seed: int | None = None,
        bounce_direction: str = "gaussian",
        off_shell: str = "rescale",
        rng: str = "torch",
        foreach: bool | None = None,
        fused: bool | None = None,
        sync_free: bool | None = None,
        capturable: bool = False,
        process_group: Any = None,
        reduce_loss: bool | None = None,
    ) -> None:
        self.config = ECDConfig.from_arguments(locals())
        for name, value in (
            ("foreach", foreach),
            ("fused", fused),
            ("sync_free", sync_free),
            ("reduce_loss", reduce_loss),
        ):
            check_bool(name, value, none_ok=True)
        self.capturable = check_bool("capturable", capturable)
        random = self.config.has_bounces or self.config.has_rotation
        if capturable and random and self.config.rng != "counter":
            raise ValueError(
                "capturable=True needs the bounce-free dynamics (bounce_period=None or "
                "n_bounces=0, bounce_patience=None, chaos=0) or rng='counter': a torch "
                "generator's draws cannot be replayed by a CUDA graph, the counter generator's can"
            )
        defaults = {
            "lr": None if lr is None else check_lr(lr),
            "foreach": foreach,
            "weight_decay": _check_weight_decay(weight_decay),
        }
        self.fused = bool(fused)
        self.sync_free = True if capturable else sync_free
        self._seed_given = check_seed(seed) is not None
        self.seed = seed if self._seed_given else _seed_from_torch()
        self.process_group, self.reduce_loss = process_group, reduce_loss
        self.hamiltonian: Hamiltonian = get_hamiltonian(
            hamiltonian,
            kinetic_offset=self.config.kinetic_offset,
            loss_power=self.config.loss_power,
            off_shell=off_shell,
        )
        super().__init__(params, defaults)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._late_counters: tuple[Tensor, Any] | None = None
        self._lazy_momenta: list[Tensor] = []
        self._ecd: dict[str, Any] = fresh_state()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group`` with ECD's checks (lr and weight_decay per group)."""
        if param_group.get("lr", self.defaults.get("lr")) is None:
            raise ValueError("lr must be given, as an argument or in every param group")
        for key, check in (("lr", check_lr), ("weight_decay", _check_weight_decay)):
            if key in param_group:
                param_group[key] = check(param_group[key])
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
        "_ecd",
    )

    def __getstate__(self) -> dict[str, Any]:
        """torch pickles only defaults, state and param_groups: keep the configuration and the
        particle too (generators are keyed and re-created; a process group becomes the default).
        The momenta are made the true Π first, as for :meth:`state_dict`."""
        self._fold()
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in self._PICKLED if key in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("weight_decay", 0.0)
        for key, value in (
            ("_generators", {}),
            ("_late_counters", None),
            ("_lazy_momenta", []),
            ("process_group", None),
            ("_ecd", fresh_state()),
        ):
            self.__dict__.setdefault(key, value)

    def state_dict(self) -> dict[str, Any]:
        """The usual optimizer state plus ``"ecd"``: energy, counters, best value, floor, seed,
        configuration. Loads back with ``torch.load(..., weights_only=True)``.

        On the CPU host path the stored momenta hold Π/σ between steps (the restoration factor
        is applied lazily, see docs/performance.md); this folds σ into them first, so the saved
        ``momentum`` is the true Π and a resumed run continues bit-for-bit."""
        self._fold()
        sd = super().state_dict()
        sd["ecd"] = _state.particle_state(self._ecd, self.seed, self.config)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a resumed run continues bit-for-bit), after checking
        that it fits: the same dynamics, momenta shaped like their parameters, a finite energy."""
        particle = _state.check_particle_state(state_dict, self.config)
        params = [p for g in self.param_groups for p in g["params"]]
        momenta = _state.check_momenta(state_dict, params)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "ecd"})
        for p, momentum in momenta.items():  # torch casts to the param's dtype: Π may be wider
            self.state[p]["momentum"] = momentum.to(
                device=p.device, dtype=_state.momentum_dtype(p), copy=True
            )
        self.seed = int(particle.pop("seed", self.seed))
        self._late_counters, self._placed, self._lazy_momenta = None, None, []
        self._ecd = {**fresh_state(), **particle}

    def diagnostics(self) -> dict[str, float]:
        """Plain floats for logging (this reads device values: call it when you log).

        ``energy`` E, ``potential`` V of the last step, ``momentum_sq`` Π² after it, ``speed``
        |Θ̇| = D·|Π| (per unit Δt), ``rescale`` the last α, ``steps`` updates done, ``bounces``,
        ``skipped`` steps (NaN/inf loss or gradient, or an overflowing update),
        ``off_shell_steps`` steps with V > κE (BBI), ``loss_floor`` the current F0.
        """
        if self._ecd["deferred"] is not None:  # Π² of the last step, as the next step sums it
            settle(self._ecd, self._lazy_momenta)
        return _state.diagnostics(self._ecd, self.config)

    def _fold(self) -> None:
        """Make the stored momenta the true Π (the lazy host path keeps Π/σ between steps)."""
        s = self.__dict__.get("_ecd")
        if s is not None and (s["deferred"] is not None or s["momentum_scale"] != 1.0):
            fold_scale(s, self._lazy_momenta)

    #: torch's step wrapper (profiler range, step hooks), entered only when something listens
    profile_hook_step = staticmethod(_wrapped_when_listened)

    # ------------------------------------------------------------------- step
    def step(
        self,
        closure: Callable[[], Tensor | None] | None = None,
        *,
        loss: Tensor | float | None = None,
    ) -> Tensor | float | None:
        """One ECD step. Returns the loss. ``torch.compile`` leaves it eager: compile the model
        (``fused=True`` compiles the step's kernels)."""
        if torch.compiler.is_compiling():  # traced by torch.compile: run the step eagerly
            return _eager_step(self, closure, loss)
        return self._step(closure, loss)

    def _step(self, closure: Callable[[], Tensor | None] | None, loss: Any) -> Any:
        loss = _loss_of(closure, loss)
        if not torch.is_grad_enabled():
            self._update(loss)
            return loss
        torch.set_grad_enabled(False)  # as torch.no_grad(), without building a context
        try:
            self._update(loss)
        finally:
            torch.set_grad_enabled(True)
        return loss

    def _update(self, loss: Any) -> None:
        particle = _state.gather(self)
        if particle is None:
            return
        s = self._ecd
        sync_free = self.sync_free if self.sync_free is not None else particle.device.type != "cpu"
        on_device = sync_free and s["initialized"]  # the first step always reads values
        lazy = not (sync_free or self.fused) and particle.plain_cpu
        if (s["deferred"] is not None or s["momentum_scale"] != 1.0) and (
            particle.reshaped or not lazy
        ):
            fold_scale(s, self._lazy_momenta)  # σ belongs to the momenta of the last step
        self._place(particle.device if on_device else None)
        call = s["calls"]
        if isinstance(call, Tensor):  # capturable: a device counter, advanced in place
            call = call.clone()
            s["calls"].add_(1)
        else:
            s["calls"] = call + 1
        common = {
            "particle": particle,
            "state": s,
            "config": self.config,
            "hamiltonian": self.hamiltonian,
            "loss": self._reduced_loss(loss, particle.device),
            "draw": self._drawer(call),
            "fused": self.fused,
            "call": call,
        }
        if not on_device:
            for group in particle.groups:  # the host path's scalars are Python floats
                group.lr = float(group.lr)
            host_step(**common, lazy=lazy)
            if lazy:
                self._lazy_momenta = particle.momenta
        else:
            device_step(**common, counters_hint=_state.known_counters(self))
        if sync_free and s["initialized"]:
            self._place(particle.device)
            if self.config.has_bounces and not self.capturable:
                _state.send_counters(self, particle.device)

    def _place(self, device: torch.device | None) -> None:
        if self.__dict__.get("_placed") != device:
            place_state(self._ecd, device)
            calls = self._ecd["calls"]  # capturable: a device counter that replays advance
            if device is not None and self.capturable:
                self._ecd["calls"] = torch.as_tensor(calls, dtype=torch.int64).to(device)
            elif isinstance(calls, Tensor):
                self._ecd["calls"] = int(calls)
            self._placed = device

    def _drawer(self, call: int | Tensor) -> Callable[..., list[Tensor]]:
        def draw(like, stream, kind, *, out=None, reuse=False, step=None):
            if reuse:
                out = self._scratch_like(like)
            return self._draw(like, call if step is None else step, stream, kind, out=out)

        return draw

    def _draw(
        self, like: list[Tensor], step: int | Tensor, stream: int, kind: str, out=None
    ) -> list[Tensor]:
        """ξ for ``stream`` at ``step`` (keyed: other draws never shift it), into ``out``."""
        if self.config.rng == "counter":
            key = chaos.counter_key(self.seed, step, stream)
            return chaos.counter_draw(like, key=key, kind=kind, out=out)
        return chaos.keyed_draw(
            like,
            seed=self.seed,
            step=step,
            stream=stream,
            kind=kind,
            generators=self._generators,
            out=out,
        )

    def _scratch_like(self, tensors: list[Tensor]) -> list[Tensor]:
        """Buffers shaped like ``tensors``, kept between steps (not state: never saved)."""
        signature = [(t.shape, t.dtype, t.device) for t in tensors]
        if self.__dict__.get("_scratch_signature") != signature:
            self._scratch = [torch.empty_like(t) for t in tensors]
            self._scratch_signature = signature
        return self._scratch

    def _reduced_loss(self, loss: Tensor | float, device: torch.device) -> Tensor:
        """The loss as a 0-dim tensor, averaged over the process group under data parallelism."""
        value = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        if value.numel() != 1:
            raise ValueError(f"loss must be a single number, got shape {tuple(value.shape)}")
        if not _state.distributed(self):
            return value
        total = value.to(device=device, dtype=torch.float64).reshape(()).clone()
        torch.distributed.all_reduce(total, group=self.process_group)
        return total / torch.distributed.get_world_size(self.process_group)


_eager_step = torch.compiler.disable(ECD._step)
# torch's registries of global step hooks (register_optimizer_step_pre_hook/post_hook); if a
# torch version lacks them, a non-empty stand-in keeps torch's own wrapper always in use
_GLOBAL_STEP_HOOKS = (
    getattr(_torch_optimizer, "_global_optimizer_pre_hooks", {None: None}),
    getattr(_torch_optimizer, "_global_optimizer_post_hooks", {None: None}),
)


def _loss_of(closure: Callable[[], Tensor | None] | None, loss: Tensor | float | None) -> Any:
    """The step's loss: the closure's return value, else ``loss=`` (a closure returning None,
    as Lightning's in manual optimization, takes ``loss=``); both or neither: an error."""
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
    return loss


def _check_weight_decay(value: Any) -> float:
    return check_number("weight_decay", value, minimum=0.0, meaning="λ")


def _seed_from_torch() -> int:
    """A seed drawn from torch's default generator (so ``torch.manual_seed`` governs)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def _preset(name: str, doc: str) -> type[ECD]:
    """The optimizer class of ``PRESETS[name]``: :class:`ECD` with some options fixed and
    others defaulted; its signature (``help``) shows the preset's defaults."""
    preset = PRESETS[name]

    def __init__(self, params, lr=None, **options):
        fixed = sorted(set(options) & set(preset.fixed))
        if fixed:
            raise TypeError(f"{name} fixes {', '.join(fixed)}: use ECD(...) to change it")
        unknown = sorted(set(options) - set(_ECD_OPTIONS))
        if unknown:
            raise TypeError(f"{name} got unexpected keyword arguments: {', '.join(unknown)}")
        ECD.__init__(self, params, lr, **{**preset.fixed, **preset.defaults, **options})

    signature = inspect.signature(ECD.__init__)
    parameters = [
        p.replace(default=preset.defaults.get(p.name, p.default))
        for p in signature.parameters.values()
        if p.name not in preset.fixed
    ]
    __init__.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return type(name, (ECD,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


_ECD_OPTIONS = [
    p for p in inspect.signature(ECD.__init__).parameters if p not in ("self", "params", "lr")
]

BBI = _preset(
    "BBI",
    """Bouncing Born-Infeld (Algorithm 1 of the paper): ECD with H = sqrt(V(V + Π²)) (eq. 4).

    T0 = 1000 steps between N_b = 1 fixed bounces, a progress bounce after T1 = 3000 steps
    without a new minimum, no rotation. Arguments: see :class:`ECD`.
    """,
)
ECDSep = _preset(
    "ECDSep",
    """Separable ECD (De Luca, Gatti & Silverstein 2023): H = log V + log(s + Π²), V = F_eff**η.

    Chaos by a rotation of Π of strength ν = ``chaos`` (default 1e-5) every step; no bounces.
    ``loss_power`` η ≥ 1 concentrates the measure near the minimum. Arguments: see :class:`ECD`.
    """,
)
UnitSpeedECD = _preset(
    "UnitSpeedECD",
    """Unit-speed ECD: |Θ̇| = 1, ṗ = −(ηd/(2(d−1)))·(∇F − p(p·∇F))/F_eff; measure ∝ F_eff^(−ηd/2).

    The authors' transformer-era variant (h = Δt/√η per step, rotation ν/√d); their GPT-2
    settings are ``lr=1.0, loss_power=100, loss_floor=2.0, chaos=0``. No bounces by default.
    Arguments: see :class:`ECD`.
    """,
)
