"""The optimizer's bookkeeping around the step: gathering the particle from the param groups,
saving and checking its state, diagnostics, and the data-parallel seed agreement."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import _kernels
from ._config import ECDConfig
from ._kernels import is_plain_cpu
from ._step import COUNTER_KEYS, LAZY_KEYS, SCALAR_KEYS, Group, Particle

if TYPE_CHECKING:
    from .optimizer import ECD

__all__ = [
    "check_momenta",
    "check_particle_state",
    "diagnostics",
    "distributed",
    "gather",
    "momentum_dtype",
    "particle_state",
]

#: configuration fields whose change alters what the saved E, Π and V mean
DYNAMICS_KEYS = ("hamiltonian", "loss_power", "kinetic_offset")


def momentum_dtype(param: Tensor) -> torch.dtype:
    """The dtype of Π for ``param``: float32 for 16-bit floats (Π may overflow them)."""
    if param.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return param.dtype


def gather(opt: ECD) -> Particle | None:
    """(lr, λ, params, grads, Π) of every group's params that have a gradient; None if none.
    What depends only on which parameters take part (d, dtypes, limits) is cached."""
    groups, signature, all_grads, all_momenta = [], [], [], []
    state = opt.state
    for group in opt.param_groups:
        params, grads, momenta = [], [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            momentum = state[p].get("momentum")
            if momentum is None:
                momentum = _new_momentum(state, p)
            params.append(p)
            grads.append(grad)
            momenta.append(momentum)
            signature += (id(p), grad.dtype, grad.device, grad.layout)
        if params:
            foreach = group["foreach"] is not False
            groups.append(
                Group(group["lr"], group["weight_decay"], foreach, params, grads, momenta)
            )
            all_grads += grads
            all_momenta += momenta
    if not groups:
        return None
    cached = opt.__dict__.get("_particle_shape")
    reshaped = cached is None or cached[0] != signature
    if reshaped:
        cached = opt._particle_shape = (signature, _shape_of(groups))
    dim, limits, plain, streamed = cached[1]
    return Particle(
        groups=groups,
        device=all_grads[0].device,
        plain_cpu=plain,
        dim=dim,
        limits=limits,
        reshaped=reshaped,
        streamed=streamed,
        grads=all_grads,
        momenta=all_momenta,
    )


def _new_momentum(state: Any, p: Tensor) -> Tensor:
    if p.grad.is_sparse or p.grad.dtype.is_complex or p.dtype.is_complex:
        kind = "sparse" if p.grad.is_sparse else "complex"
        raise ValueError(f"ECD does not support {kind} gradients or parameters")
    state[p]["momentum"] = torch.zeros_like(
        p, dtype=momentum_dtype(p), memory_format=torch.preserve_format
    )
    return state[p]["momentum"]


def _shape_of(groups: list[Group]) -> tuple[int, tuple[float, float], bool, bool]:
    """d, the largest safe |Π| and |ΔΘ| entries (a sixteenth of the dtypes' largest values),
    whether every param, grad and Π is a float32/float64 CPU tensor, and whether such a
    particle has a tensor large enough to be streamed (:func:`ecdopt._kernels.host_kick_drift_`)."""
    params = [p for g in groups for p in g.params]
    for p in params:
        if p.grad.is_sparse or p.grad.dtype.is_complex:
            kind = "sparse" if p.grad.is_sparse else "complex"
            raise ValueError(f"ECD does not support {kind} gradients or parameters")
    momenta = [m for g in groups for m in g.momenta]
    momentum_limit = min(torch.finfo(m.dtype).max for m in momenta) / 16
    param_limit = min(torch.finfo(p.dtype).max for p in params) / 16
    plain = all(
        is_plain_cpu(p) and p.grad.dtype == p.dtype and p.grad.is_cpu and is_plain_cpu(m)
        for p, m in zip(params, momenta, strict=True)
    )
    streamed = plain and any(p.numel() >= _kernels.STREAM_MIN_NUMEL for p in params)
    return sum(p.numel() for p in params), (momentum_limit, param_limit), plain, streamed


def particle_state(state: dict[str, Any], seed: int, config: ECDConfig) -> dict[str, Any]:
    """The ``"ecd"`` entry of ``state_dict()``: tensors, numbers and strings only."""
    saved = {
        k: (v.clone() if isinstance(v, Tensor) else v)
        for k, v in state.items()
        if k not in LAZY_KEYS
    }
    saved["seed"] = seed
    saved["config"] = config.as_dict()
    return saved


def _number(value: Any) -> float | int | None:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        return value.item()
    if isinstance(value, numbers.Real):
        return value
    return None


def check_particle_state(state_dict: dict[str, Any], config: ECDConfig) -> dict[str, Any]:
    """The saved particle, checked against ``config``: a ``ValueError`` names what differs."""
    particle = state_dict.get("ecd")
    if not isinstance(particle, dict):
        raise ValueError("not an ECD state_dict: it has no 'ecd' entry (the particle's state)")
    particle = dict(particle)
    saved_config = particle.pop("config", None)
    if isinstance(saved_config, dict):
        for key in DYNAMICS_KEYS:
            mine, theirs = getattr(config, key), saved_config.get(key, getattr(config, key))
            if mine != theirs:
                raise ValueError(
                    f"the state_dict is from another dynamics: {key} is {theirs!r} there and "
                    f"{mine!r} here (its energy, momentum and potential mean something else)"
                )
        saved_rng = saved_config.get("rng", "torch")  # states before the option drew with torch
        if saved_rng != config.rng and (config.has_bounces or config.has_rotation):
            raise ValueError(
                f"the state_dict was saved with rng={saved_rng!r}, this optimizer has "
                f"rng={config.rng!r}: its random directions would not continue the saved run's "
                f"(pass rng={saved_rng!r})"
            )
    for key in ("calls", *COUNTER_KEYS):
        value = _number(particle.get(key, 0))
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"the state_dict's counter {key!r} must be an int >= 0, got {value!r}")
    for key in SCALAR_KEYS:
        value = particle.get(key)
        if value is not None and _number(value) is None:
            raise ValueError(f"the state_dict's {key!r} must be a number, got {value!r}")
    if particle.get("initialized"):
        energy = _number(particle.get("energy"))
        if energy is None or not math.isfinite(energy):
            raise ValueError(f"the state_dict's energy must be a finite number, got {energy!r}")
    if "seed" in particle and not isinstance(_number(particle["seed"]), int):
        raise ValueError(f"the state_dict's seed must be an int, got {particle['seed']!r}")
    return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in particle.items()}


def check_momenta(state_dict: dict[str, Any], params: list[Tensor]) -> dict[Tensor, Tensor]:
    """The saved Π of each parameter, checked: shaped like the parameter and finite."""
    saved_ids = [pid for g in state_dict.get("param_groups", []) for pid in g["params"]]
    if len(saved_ids) != len(params):
        raise ValueError(
            f"the state_dict has {len(saved_ids)} parameters, this optimizer {len(params)}"
        )
    momenta = {}
    for index, (pid, p) in enumerate(zip(saved_ids, params, strict=True)):
        momentum = state_dict.get("state", {}).get(pid, {}).get("momentum")
        if momentum is None:
            continue
        if not isinstance(momentum, Tensor) or momentum.shape != p.shape:
            shape = getattr(momentum, "shape", type(momentum).__name__)
            raise ValueError(
                f"the saved momentum of parameter {index} has shape {tuple(shape)}, "
                f"the parameter {tuple(p.shape)}"
            )
        if not bool(torch.isfinite(momentum).all()):
            raise ValueError(f"the saved momentum of parameter {index} is not finite")
        momenta[p] = momentum
    return momenta


def diagnostics(state: dict[str, Any], config: ECDConfig) -> dict[str, float]:
    """Plain floats of the particle's state (see :meth:`ecdopt.ECD.diagnostics`)."""

    def as_float(v: Any) -> float:
        return math.nan if v is None else float(v)

    floor = state["loss_floor"] if state["loss_floor"] is not None else config.loss_floor
    out = {
        key: as_float(state[key])
        for key in ("energy", "potential", "momentum_sq", "speed", "rescale")
    }
    out.update(
        {key: float(state[key]) for key in ("steps", "bounces", "skipped", "off_shell_steps")}
    )
    out["loss_floor"] = float(floor)
    return out


def distributed(opt: ECD) -> bool:
    """Whether the loss is averaged over the process group (see ``reduce_loss``); the first
    time, every replica takes rank 0's seed (they must draw the same bounce directions)."""
    if opt.reduce_loss is False or not torch.distributed.is_available():
        return False
    if not torch.distributed.is_initialized():
        if opt.reduce_loss:
            raise RuntimeError("reduce_loss=True needs torch.distributed to be initialized")
        return False
    world = torch.distributed.get_world_size(opt.process_group)
    if world > 1 and not opt._seed_given and not opt._ecd["initialized"]:
        seed = [opt.seed]
        torch.distributed.broadcast_object_list(seed, src=0, group=opt.process_group)
        opt.seed = int(seed[0])
        opt._seed_given = True
    return world > 1


def known_counters(opt: ECD) -> tuple[int, int, int] | None:
    """The counters (c0, c1, fixed bounces done) at the start of this step as host ints, if the
    previous step's non-blocking copy has arrived; None when not (yet) known."""
    if opt._late_counters is None:
        return None
    values, event = opt._late_counters
    if event is not None and not event.query():
        return None
    c0, c1, done = values.tolist()
    return c0, c1, done


def send_counters(opt: ECD, device: torch.device) -> None:
    """Queue a non-blocking copy of the counters to the host (one pinned buffer on CUDA)."""
    s = opt._ecd
    counters = torch.stack([s["c0"], s["c1"], s["fixed_bounces_done"]])
    if device.type != "cuda":
        opt._late_counters = (counters.cpu(), None)
        return
    previous = opt._late_counters
    pinned = previous is not None and previous[0].is_pinned()
    values = previous[0] if pinned else torch.empty(3, dtype=torch.int64, pin_memory=True)
    values.copy_(counters, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    opt._late_counters = (values, event)
