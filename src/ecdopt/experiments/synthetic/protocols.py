"""The paper's three synthetic protocols (§4.1 Ackley, §4.2 Zakharov, §4.3 two basins).

Each ``*_protocol`` function returns ``(summary, extras)``: ``summary`` is the JSON-ready dict the
``ecdopt synthetic`` command writes, ``extras`` holds tensors for the plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ecdopt.ensemble import simulate
from ecdopt.experiments.registry import SEARCH_SPACES, ensemble_off_shell_steps, seed_plus
from ecdopt.experiments.synthetic.tuning import Method, TuningResult, run_method, tune
from ecdopt.landscapes import ackley, make_two_basin, two_basin, zakharov
from ecdopt.stats import count_ratio_interval, wilson_interval
from ecdopt.theory import hessians, in_basin, predicted_ratio

__all__ = [
    "ACKLEY_START",
    "AckleyConfig",
    "BasinsConfig",
    "ZakharovConfig",
    "ackley_methods",
    "ackley_protocol",
    "basins_protocol",
    "zakharov_methods",
    "zakharov_protocol",
]

F64 = torch.float64
#: the fixed start of the Ackley search (the authors' notebook)
ACKLEY_START = (-4.0, 3.0)
Progress = Callable[[int], None]
#: called with the summary so far after each finished method (or bounce direction)
OnResult = Callable[[dict], None]


def _noop(_: object) -> None:
    return None


def _progress_callback(progress: Progress, every: int = 200):
    """An ensemble callback that reports progress every ``every`` steps."""

    def cb(k: int, theta: Tensor, value: Tensor) -> None:
        if k and k % every == 0:
            progress(every)

    return cb


# --------------------------------------------------------------------------------------------
# §4.1 Ackley
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AckleyConfig:
    """Protocol numbers of §4.1 (defaults: the paper's)."""

    b: float = 0.2
    trials: int = 500
    tune_steps: int = 200
    batch: int = 50
    starts: int = 100
    repeats: int = 5
    steps: int = 30_000
    target: float = 5e-4
    seed: int = 0
    methods: tuple[str, ...] = ("bbi", "sgdm", "adam", "ecdsep")
    bounce_direction: str = "uniform"  # the authors' code drew uniform directions
    off_shell: str = "exact"  # Algorithm 1 literally: a figure labelled BBI is Algorithm 1's
    #: hyperparameters to use instead of tuning, per method (e.g. ``{"bbi": {"lr": 0.00982}}``)
    params: dict = field(default_factory=dict)


def ackley_methods() -> dict[str, Method]:
    """BBI (δE = 2, T0 = 20, N_b = 4, T1 = 100, ΔV = 1e-4; tune Δt) and the baselines."""
    space = SEARCH_SPACES["ackley"]
    return {
        "bbi": Method(
            "bbi",
            "ecd",
            dict(
                extra_energy=2.0,
                loss_floor=1e-4,
                bounce_period=20,
                n_bounces=4,
                bounce_patience=100,
            ),
            space["bbi"],
        ),
        "sgdm": Method("sgdm", "sgd", {}, space["sgdm"]),
        "adam": Method("adam", "adam", {}, space["adam"]),
        "ecdsep": Method(
            "ecdsep",
            "ecd",
            dict(
                hamiltonian="separable",
                extra_energy=2.0,
                loss_floor=1e-4,
                chaos=1e-5,
                bounce_period=None,
                bounce_patience=None,
            ),
            space["ecdsep"],
        ),
    }


def ackley_protocol(
    cfg: AckleyConfig,
    progress: Progress = _noop,
    record_curves: bool = True,
    on_result: OnResult = _noop,
) -> tuple[dict, dict]:
    """§4.1: tune each method at (−4, 3), then evolve ``starts`` × ``repeats`` runs.

    A run stops once it visits F < target; a start succeeds if any of its runs did.
    ``on_result(summary)`` is called after each method with the summary so far.
    """
    fn = lambda t: ackley(t, b=cfg.b)  # noqa: E731
    start = torch.tensor(ACKLEY_START, dtype=F64)
    gen = torch.Generator().manual_seed(cfg.seed)
    starts = torch.rand(cfg.starts, 2, generator=gen, dtype=F64) * 8.0 - 4.0
    theta0 = starts.repeat_interleave(cfg.repeats, dim=0)
    methods = ackley_methods()
    results, hyper, extras = {}, {}, {"starts": starts, "curves": {}}
    for name in cfg.methods:
        method = methods[name]
        if name == "bbi":
            method = replace(
                method, fixed={**method.fixed, "bounce_direction": cfg.bounce_direction}
            )
        method = _with_off_shell(method, cfg.off_shell)
        if name in cfg.params:  # given, not tuned (the demo uses the full protocol's values)
            tuned = TuningResult(dict(cfg.params[name]), math.inf, 0)
        else:
            tuned = tune(
                method,
                fn,
                start,
                trials=cfg.trials,
                steps=cfg.tune_steps,
                batch=cfg.batch,
                seed=cfg.seed,
                on_batch=lambda k: progress(k * cfg.tune_steps),
            )
        hyper[name] = {
            **_jsonable(method.fixed),
            **tuned.params,
            "tuning_objective": None if name in cfg.params else tuned.value,
            "tuned": name not in cfg.params,
        }
        res = run_method(
            method,
            fn,
            theta0,
            cfg.steps,
            tuned.params,
            seed=seed_plus(cfg.seed, 1),
            target=cfg.target,
            stop_at_target=True,
            callback=_progress_callback(progress),
        )
        progress(max(0, cfg.steps - (res.steps // 200) * 200))
        hit = (res.steps_to_target >= 0).view(cfg.starts, cfg.repeats)
        steps_ok = res.steps_to_target[res.steps_to_target >= 0].double()
        successes, run_successes = int(hit.any(dim=1).sum()), int(hit.sum())
        results[name] = {
            "starts": cfg.starts,
            "successes": successes,
            "success_rate": wilson_interval(successes, cfg.starts).as_dict(),
            "run_successes": run_successes,
            "run_success_rate": wilson_interval(run_successes, cfg.starts * cfg.repeats).as_dict(),
            "runs": cfg.starts * cfg.repeats,
            "median_steps": float(steps_ok.median()) if steps_ok.numel() else None,
            "off_shell_steps": ensemble_off_shell_steps(res),
        }
        if record_curves:  # Figs. 2-3: one run from the tuning start, with the tuned values
            curve = run_method(
                method,
                fn,
                start[None],
                cfg.steps,
                tuned.params,
                seed=seed_plus(cfg.seed, 2),
                target=cfg.target,
                stop_at_target=True,
                record_every=1,
            )
            extras["curves"][name] = (curve.history_theta[:, 0], curve.history_value[:, 0])
        on_result(_ackley_summary(cfg, results, hyper))
    return _ackley_summary(cfg, results, hyper), extras


def _ackley_summary(cfg: AckleyConfig, results: dict, hyper: dict) -> dict:
    return {
        "target": cfg.target,
        "ackley_b": cfg.b,
        "start_for_tuning": list(ACKLEY_START),
        "protocol": {
            "trials": cfg.trials,
            "tune_steps": cfg.tune_steps,
            "starts": cfg.starts,
            "repeats": cfg.repeats,
            "steps": cfg.steps,
            "seed": cfg.seed,
        },
        "methods_done": list(results),
        "results": dict(results),
        "hyperparameters": dict(hyper),
    }


def _with_off_shell(method: Method, off_shell: str) -> Method:
    """``method`` with the protocol's ``off_shell`` mode when it is an ECD optimizer."""
    if method.kind != "ecd":
        return method
    return replace(method, fixed={**method.fixed, "off_shell": off_shell})


# --------------------------------------------------------------------------------------------
# §4.2 Zakharov
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZakharovConfig:
    """Protocol numbers of §4.2 (defaults: the paper's)."""

    dim: int = 10
    trials: int = 500
    tune_steps: int = 2500
    batch: int = 50
    steps: int = 10_000
    seed: int = 0
    methods: tuple[str, ...] = ("bbi", "sgdm", "sgdm_narrow", "adam", "ecdsep")
    thresholds: tuple[float, ...] = (1e-6, 1e-10, 1e-20)
    off_shell: str = "exact"  # Algorithm 1 literally: a figure labelled BBI is Algorithm 1's


def zakharov_methods() -> dict[str, Method]:
    """BBI (δE = 0, bounces off, ΔV = 1e-22; Δt ∈ [1e-6, 1e-2]) and the baselines."""
    space = SEARCH_SPACES["zakharov"]
    return {
        "bbi": Method(
            "bbi",
            "ecd",
            dict(extra_energy=0.0, loss_floor=1e-22, bounce_period=None, bounce_patience=None),
            space["bbi"],
        ),
        "sgdm": Method("sgdm", "sgd", {}, space["sgdm"]),
        "sgdm_narrow": Method("sgdm_narrow", "sgd", {}, space["sgdm_narrow"]),
        "adam": Method("adam", "adam", {}, space["adam"]),
        "ecdsep": Method(
            "ecdsep",
            "ecd",
            dict(
                hamiltonian="separable",
                loss_floor=1e-22,
                chaos=1e-5,
                bounce_period=None,
                bounce_patience=None,
            ),
            space["ecdsep"],
        ),
    }


def _first_below(values: Tensor, threshold: float) -> int | None:
    idx = torch.nonzero(values < threshold)
    return int(idx[0]) if idx.numel() else None


def zakharov_protocol(
    cfg: ZakharovConfig, progress: Progress = _noop, on_result: OnResult = _noop
) -> tuple[dict, dict]:
    """§4.2: tune each method from (−1, …, −1), then run ``steps`` steps with the best values.

    ``on_result(summary)`` is called after each method with the summary so far.
    """
    start = -torch.ones(cfg.dim, dtype=F64)
    methods = zakharov_methods()
    results, hyper, curves = {}, {}, {}
    for name in cfg.methods:
        method = _with_off_shell(methods[name], cfg.off_shell)
        tuned = tune(
            method,
            zakharov,
            start,
            trials=cfg.trials,
            steps=cfg.tune_steps,
            batch=cfg.batch,
            seed=cfg.seed,
            on_batch=lambda k: progress(k * cfg.tune_steps),
        )
        hyper[name] = {**_jsonable(method.fixed), **tuned.params, "tuning_objective": tuned.value}
        res = run_method(
            method, zakharov, start[None], cfg.steps, tuned.params, seed=cfg.seed, record_every=1
        )
        progress(cfg.steps)
        values = res.history_value[:, 0]
        curves[name] = values
        results[name] = {
            "final_loss": float(res.value[0]),
            "best_loss": float(res.best_value[0]),
            "steps_to": {f"{t:.0e}": _first_below(values, t) for t in cfg.thresholds},
            "off_shell_steps": ensemble_off_shell_steps(res),
        }
        on_result(_zakharov_summary(cfg, results, hyper))
    return _zakharov_summary(cfg, results, hyper), {"curves": curves}


def _zakharov_summary(cfg: ZakharovConfig, results: dict, hyper: dict) -> dict:
    return {
        "dim": cfg.dim,
        "start": -1.0,
        "protocol": {
            "trials": cfg.trials,
            "tune_steps": cfg.tune_steps,
            "steps": cfg.steps,
            "seed": cfg.seed,
        },
        "methods_done": list(results),
        "results": dict(results),
        "hyperparameters": dict(hyper),
    }


# --------------------------------------------------------------------------------------------
# §4.3 two basins
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BasinsConfig:
    """The two-basin protocol as the authors' notebook ran it (§4.3, Figs. 5-6)."""

    runs: int = 4000
    steps: int = 25_000
    lr: float = 1e-2
    loss_floor: float = 1e-3
    extra_energy: float = 0.0
    bounce_period: int = 20
    n_bounces: int = 1
    bounce_patience: int = 750
    epsilon: float = 2.75e-6
    start: tuple[float, float] = (10.0, -10.0)
    bounce_direction: str = "gaussian"
    off_shell: str = "exact"  # Algorithm 1 literally
    seed: int = 0
    trajectories: int = 10


def basin_regions(epsilon: float) -> tuple[Tensor, Tensor]:
    """Centres c_I (the exact minima) and Hessians H_I of eq. 17 for the |η_I| < 1 regions."""
    land = make_two_basin(epsilon)
    return land.minima, hessians(land.fn, land.minima)


def _classifier(centers: Tensor, hess: Tensor, labels: Tensor, progress: Progress):
    """Callback: label a run 1 or 2 when it first enters |η_I| < 1, and freeze it there."""

    def cb(k: int, theta: Tensor, value: Tensor) -> Tensor:
        in1 = in_basin(theta, centers[0], hess[0])
        in2 = in_basin(theta, centers[1], hess[1])
        new = labels == 0
        labels[new & in1] = 1
        labels[new & in2 & ~in1] = 2
        if k and k % 200 == 0:
            progress(200)
        return labels > 0

    return cb


def _first_passage(cfg: BasinsConfig, direction: str, progress: Progress) -> dict:
    fn = lambda t: two_basin(t, epsilon=cfg.epsilon)  # noqa: E731
    centers, hess = basin_regions(cfg.epsilon)
    theta0 = torch.tensor(cfg.start, dtype=F64).expand(cfg.runs, 2).clone()
    labels = torch.zeros(cfg.runs, dtype=torch.int64)
    res = simulate(
        fn,
        theta0,
        cfg.steps,
        lr=cfg.lr,
        loss_floor=cfg.loss_floor,
        extra_energy=cfg.extra_energy,
        bounce_period=cfg.bounce_period,
        n_bounces=cfg.n_bounces,
        bounce_patience=cfg.bounce_patience,
        bounce_direction=direction,
        off_shell=cfg.off_shell,
        seed=cfg.seed,
        callback=_classifier(centers, hess, labels, progress),
    )
    progress(max(0, cfg.steps - (res.steps // 200) * 200))
    n1, n2 = int((labels == 1).sum()), int((labels == 2).sum())
    return {
        "measured_ratio": n1 / n2 if n2 else None,
        "ratio_interval": count_ratio_interval(n1, n2).as_dict(),
        "counts": {"basin1": n1, "basin2": n2, "neither": cfg.runs - n1 - n2},
        "fraction_basin1": wilson_interval(n1, cfg.runs).as_dict(),
        "fraction_basin2": wilson_interval(n2, cfg.runs).as_dict(),
        "off_shell_steps": ensemble_off_shell_steps(res),
        "running_ratio": running_count_ratio(labels),
    }


def running_count_ratio(labels: Tensor, points: int = 200) -> dict[str, list[float]]:
    """The ratio (#label 1)/(#label 2) after the first n runs, with its Wilson-based 95%
    interval, at up to ``points`` values of n spaced evenly on a log scale."""
    cum1 = torch.cumsum(labels == 1, 0).tolist()
    cum2 = torch.cumsum(labels == 2, 0).tolist()
    grid = torch.unique(torch.logspace(0, math.log10(max(1, labels.numel())), points).round())
    out: dict[str, list[float]] = {"runs": [], "ratio": [], "low": [], "high": []}
    for n in grid.long().tolist():
        a, b = cum1[n - 1], cum2[n - 1]
        if b == 0:
            continue
        iv = count_ratio_interval(a, b)
        out["runs"].append(n)
        out["ratio"].append(iv.value)
        out["low"].append(iv.low)
        out["high"].append(iv.high)
    return out


def basins_protocol(
    cfg: BasinsConfig,
    directions: tuple[str, ...],
    progress: Progress = _noop,
    on_result: OnResult = _noop,
) -> tuple[dict, dict]:
    """§4.3: first-passage basin counts from (10, −10), per bounce direction, and the prediction.

    The top-level fields describe ``directions[0]``; ``by_direction`` holds every direction.
    ``on_result(summary)`` is called after each direction with the summary so far.
    """
    land = make_two_basin(cfg.epsilon)
    e0 = float(two_basin(torch.tensor(cfg.start, dtype=F64), epsilon=cfg.epsilon))
    pred = predicted_ratio(land.fn, land.minima, energy=e0 - cfg.loss_floor)
    by_dir, extras = {}, {"running": {}, "trajectories": None}
    for d in directions:
        fp = _first_passage(cfg, d, progress)
        extras["running"][d] = fp["running_ratio"]
        by_dir[d] = {**fp, "bounce_direction": d}
        on_result(_basins_summary(cfg, by_dir, pred, e0))
    if cfg.trajectories > 0:  # Fig. 5: ten bounced trajectories from the same start
        extras.update(_trajectories(cfg, land, directions[0]))
    return _basins_summary(cfg, by_dir, pred, e0), extras


def _trajectories(cfg: BasinsConfig, land, direction: str) -> dict:
    centers, hess = basin_regions(cfg.epsilon)
    labels = torch.zeros(cfg.trajectories, dtype=torch.int64)
    tr = simulate(
        land.fn,
        torch.tensor(cfg.start, dtype=F64).expand(cfg.trajectories, 2).clone(),
        min(cfg.steps, 6000),
        lr=cfg.lr,
        loss_floor=cfg.loss_floor,
        extra_energy=cfg.extra_energy,
        bounce_period=cfg.bounce_period,
        n_bounces=cfg.n_bounces,
        bounce_patience=cfg.bounce_patience,
        bounce_direction=direction,
        off_shell=cfg.off_shell,
        seed=seed_plus(cfg.seed, 3),
        record_every=5,
        callback=_classifier(centers, hess, labels, _noop),
    )
    return {
        "trajectories": tr.history_theta,
        "trajectory_labels": labels,
        "centers": centers,
        "hessians": hess,
    }


def _basins_summary(cfg: BasinsConfig, by_dir: dict, pred: float, e0: float) -> dict:
    first = next(iter(by_dir.values()))
    return {
        "predicted_ratio": pred,
        "measured_ratio": first["measured_ratio"],
        "runs": cfg.runs,
        "counts": first["counts"],
        "bounce_direction": first["bounce_direction"],
        "directions_done": list(by_dir),
        "by_direction": dict(by_dir),
        "protocol": {
            "start": list(cfg.start),
            "lr": cfg.lr,
            "loss_floor": cfg.loss_floor,
            "extra_energy": cfg.extra_energy,
            "bounce_period": cfg.bounce_period,
            "n_bounces": cfg.n_bounces,
            "bounce_patience": cfg.bounce_patience,
            "steps": cfg.steps,
            "epsilon": cfg.epsilon,
            "seed": cfg.seed,
            "energy": e0 - cfg.loss_floor,
        },
    }


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str | bool | None)}
