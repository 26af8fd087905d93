"""The PDE experiment of §4.4 and App. B: solving eq. 53 with the eq. 56 ansatz and the eq. 19 loss.

Pieces (the math lives in :mod:`~ecdopt.experiments.pde.problem` and
:mod:`~ecdopt.experiments.pde.model`; this module holds the harness):

* :class:`PDEPreset` — ``paper`` (App. B and §4.4 exactly; GPU-sized), ``small`` (a gentler
  manufactured solution of the same family, ``sin²(2 r²)`` in d = 2, CPU-sized) and ``twin``
  (``sin²(2 r²) − 4.6``: bounced runs from one start reach either of its two solutions).
* :func:`reference_solutions` — every radial solution by the shooting method (Fig. 7).
* :func:`train_run` / :func:`train_runs` — one or several runs; each trained network is classified
  by its relative L2 error to each reference solution (nearest solution).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ecdopt.experiments import registry
from ecdopt.experiments.pde.model import (
    LAPLACIANS,
    PDELoss,
    ResNetAnsatz,
    double_backward_laplacian,
    forward_laplacian,
    functorch_laplacian,
    sample_ball,
    sample_sphere,
)
from ecdopt.experiments.pde.problem import (
    RadialProblem,
    RadialSolution,
    SinSquaredProfile,
    bracket_bound,
    find_radial_solutions,
    paper_source_eq55,
    shoot,
)

Tensor = torch.Tensor

__all__ = [
    "LAPLACIANS",
    "OPTIMIZERS",
    "PRESETS",
    "GraphedIteration",
    "PDELoss",
    "PDEPreset",
    "RadialProblem",
    "RadialSolution",
    "ResNetAnsatz",
    "RunResult",
    "SinSquaredProfile",
    "bracket_bound",
    "classify",
    "double_backward_laplacian",
    "find_radial_solutions",
    "forward_laplacian",
    "functorch_laplacian",
    "graph_settings",
    "make_optimizer",
    "paper_source_eq55",
    "profile_description",
    "reference_solutions",
    "relative_l2_errors",
    "sample_ball",
    "sample_sphere",
    "shifted_preset",
    "shoot",
    "smoke_preset",
    "train_run",
    "train_runs",
]

OPTIMIZERS = registry.OPTIMIZERS


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class PDEPreset:
    """Everything that defines one PDE experiment (problem, ansatz, loss, optimizer settings)."""

    name: str
    profile: Callable[[Tensor], Tensor]  # u = profile(r²): the manufactured solution
    dim: int
    width: int  # N of eq. 56
    depth: int  # D of eq. 56
    n_interior: int
    n_boundary: int
    gamma: float  # γ of eq. 19
    reg: float  # R(Θ) = reg · Θ²
    iterations: int
    resample_every: int | None  # K: new points every K iterations (None: fixed points)
    optimizers: Mapping[str, Mapping[str, Any]]  # name -> keyword arguments (with lr)
    n_eval: int = 4096  # points in the ball for the relative L2 errors
    n_grid: int = 4001  # shooting-method scan of u(0)
    log_every: int = 10

    @property
    def problem(self) -> RadialProblem:
        """Eq. 53 for this preset's manufactured solution and dimension."""
        return RadialProblem(profile=self.profile, dim=self.dim)


PAPER = PDEPreset(
    name="paper",
    profile=SinSquaredProfile(20.0),  # eq. 54
    dim=2,
    width=200,
    depth=3,
    n_interior=10_000,
    n_boundary=1_000,
    gamma=1e5,
    reg=2e-4,
    iterations=1_500_000,  # 1500 epochs of 1000 iterations (§4.4)
    resample_every=1000,  # §4.4's noisy runs; pass --resample-every 0 for fixed points
    optimizers=_frozen(
        {
            # §4.4: Δt = 5e-6, δE = 2e6, N_b = 10, T0 = 1000, T1 = 5000, ΔV = 0
            "bbi": {
                "lr": 5e-6,
                "extra_energy": 2e6,
                "n_bounces": 10,
                "bounce_period": 1000,
                "bounce_patience": 5000,
                "loss_floor": 0.0,
            },
            # not in the paper: untested guesses, to be tuned on a GPU
            "ecdsep": {"lr": 1e-4, "extra_energy": 1.0, "chaos": 1e-5},
            "sgdm": {"lr": 1e-7, "momentum": 0.9},
            "adam": {"lr": 1e-3},
        }
    ),
)

SMALL = PDEPreset(
    name="small",
    profile=SinSquaredProfile(2.0),
    dim=2,
    width=32,
    depth=2,
    n_interior=1000,
    n_boundary=200,
    gamma=100.0,
    reg=2e-4,
    iterations=20_000,
    resample_every=None,
    optimizers=_frozen(
        {
            "bbi": {
                "lr": 1e-2,
                "extra_energy": 1.0,
                "n_bounces": 10,
                "bounce_period": 1000,
                "bounce_patience": 5000,
                "loss_floor": 0.0,
            },
            # scanned on 2000 / 20 000 iterations (docs/pde.md): ECDSep's speed is bounded by
            # 1/sqrt(s) whatever V is, so it needs a far larger Δt than BBI; SGDM diverges for
            # lr ≥ 1e-4 (momentum 0.9) on this stiff loss
            "ecdsep": {"lr": 0.05, "extra_energy": 1.0, "chaos": 1e-5},
            "sgdm": {"lr": 5e-5, "momentum": 0.9},
            "adam": {"lr": 3e-3},
        }
    ),
    n_grid=2001,
)

TWIN = replace(
    SMALL,
    name="twin",
    # u = sin²(2 r²) − 4.6: near the shift where BBI runs from init seed 0 switch from one
    # radial solution to the other (docs/pde.md), so that bounces decide which one they reach
    profile=SinSquaredProfile(2.0, shift=-4.6),
    iterations=10_000,
    optimizers=_frozen(
        {
            **SMALL.optimizers,
            "bbi": {
                **SMALL.optimizers["bbi"],
                "extra_energy": 50.0,
                "bounce_direction": "uniform",
            },
        }
    ),
)

PRESETS: Mapping[str, PDEPreset] = _frozen({"paper": PAPER, "small": SMALL, "twin": TWIN})


def shifted_preset(preset: PDEPreset, shift: float) -> PDEPreset:
    """The preset with its ``sin²`` profile shifted to ``u = shift + sin²(a r²)`` (renamed
    ``<name>_shift<c>`` so that its plots do not overwrite the preset's)."""
    if not isinstance(preset.profile, SinSquaredProfile):
        raise ValueError(
            f"shift needs a SinSquaredProfile; preset {preset.name!r} has "
            f"{type(preset.profile).__name__}"
        )
    return replace(
        preset,
        name=f"{preset.name}_shift{shift:g}",
        profile=replace(preset.profile, shift=float(shift)),
    )


def profile_description(profile: Callable[[Tensor], Tensor]) -> dict[str, Any]:
    """The manufactured profile for the JSON: its class and, for a dataclass, its fields."""
    fields = asdict(profile) if is_dataclass(profile) and not isinstance(profile, type) else {}
    return {"kind": type(profile).__name__, **fields}


def smoke_preset(preset: PDEPreset) -> PDEPreset:
    """The same problem at tiny sizes: a run takes a fraction of a second (for tests)."""
    return replace(
        preset,
        width=8,
        depth=1,
        n_interior=64,
        n_boundary=16,
        iterations=20,
        n_eval=256,
        n_grid=401,
        log_every=2,
    )


# --------------------------------------------------------------------------------------------
# reference solutions and classification
# --------------------------------------------------------------------------------------------


def reference_solutions(preset: PDEPreset) -> list[RadialSolution]:
    """All radial solutions of the preset's eq. 53 by the shooting method (Fig. 7)."""
    return find_radial_solutions(preset.problem, n_grid=preset.n_grid)


def relative_l2_errors(
    model: torch.nn.Module, solutions: Sequence[RadialSolution], x_eval: Tensor
) -> list[float]:
    """``‖N − u_k‖ / ‖u_k‖`` on the evaluation points (uniform in the ball) for each reference."""
    with torch.no_grad():
        p = next(model.parameters())
        u = model(x_eval.to(device=p.device, dtype=p.dtype)).double().cpu().numpy()
    r = x_eval.double().norm(dim=1).cpu().numpy()
    out = []
    for sol in solutions:
        ref = sol(r)
        out.append(float(np.linalg.norm(u - ref) / np.linalg.norm(ref)))
    return out


def classify(errors: Sequence[float]) -> int:
    """Index of the nearest reference solution (smallest relative L2 error); -1 if none finite."""
    finite = [(e, i) for i, e in enumerate(errors) if math.isfinite(e)]
    return min(finite)[1] if finite else -1


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def make_optimizer(
    name: str, params: Any, settings: Mapping[str, Any], *, seed: int | None = None
) -> torch.optim.Optimizer:
    """Build ``bbi`` / ``ecdsep`` (ecdopt, seeded) or ``sgdm`` / ``adam`` (torch) from settings."""
    return registry.make_optimizer(name, params, settings, seed=seed)


@dataclass
class RunResult:
    """One training run: its classification, errors, loss curve and timing."""

    nearest_solution: int
    relative_l2_error: float
    errors: list[float]
    final_loss: float
    wall_seconds: float
    iterations: int
    seed: int
    loss_steps: np.ndarray = field(repr=False)
    loss_values: np.ndarray = field(repr=False)
    section: np.ndarray = field(repr=False)  # N(t, 0, ..., 0) on SECTION_T
    # relative L2 error to each reference every ``trace_every`` iterations (empty if not asked)
    trace_steps: list[int] = field(default_factory=list, repr=False)
    trace_errors: list[list[float]] = field(default_factory=list, repr=False)
    # steps on which an ECD optimizer left its energy shell (None: SGD / Adam, or not counted)
    off_shell_steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form (non-finite numbers become ``null``)."""

        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "nearest_solution": self.nearest_solution,
            "relative_l2_error": num(self.relative_l2_error),
            "errors": [num(e) for e in self.errors],
            "final_loss": num(self.final_loss),
            "wall_seconds": self.wall_seconds,
            "ms_per_iteration": 1e3 * self.wall_seconds / max(self.iterations, 1),
            "iterations": self.iterations,
            "seed": self.seed,
            "off_shell_steps": self.off_shell_steps,
            **(
                {
                    "trace": {
                        "steps": list(self.trace_steps),
                        "errors": [[num(e) for e in row] for row in self.trace_errors],
                    }
                }
                if self.trace_steps
                else {}
            ),
        }


SECTION_T = np.linspace(-1.0, 1.0, 401)


def _section_points(dim: int) -> Tensor:
    x = torch.zeros(SECTION_T.size, dim, dtype=torch.float64)
    x[:, 0] = torch.from_numpy(SECTION_T)
    return x


class GraphedIteration:
    """One training iteration — zero the gradients, the loss, its backward, the optimizer step —
    replayed from one captured CUDA graph.

    The first call runs eagerly (an ECD optimizer's first step reads values on the host to fix
    E and Π0); the next ``warmup`` calls run eagerly on a side stream, as capture requires; the
    call after them captures the iteration and replays it, and every later call only replays.
    ``loss_of()`` must read its inputs from buffers updated in place (the graph replays the
    addresses it captured), and the optimizer must be capturable (ECD: ``capturable=True`` and
    ``rng="counter"``, so bounces and rotations are drawn inside the graph). Off CUDA every call
    runs the same iteration eagerly (how the loop is tested on a CPU). Each call returns the
    loss in a tensor that the next call overwrites.
    """

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        params: Sequence[Tensor],
        loss_of: Callable[[], Tensor],
        device: torch.device,
        *,
        warmup: int = 3,
    ) -> None:
        self.opt, self.params, self.loss_of, self.device = opt, list(params), loss_of, device
        self.warmup, self.calls = warmup, 0
        self.graph: Any = None
        self.loss: Tensor | None = None  # made by the first (eager) call, in the loss's dtype

    def _body(self) -> None:
        self.opt.zero_grad(set_to_none=False)
        loss = self.loss_of()
        loss.backward()
        if hasattr(self.opt, "config"):  # an ECD optimizer: the loss defines V
            self.opt.step(loss=loss)
        else:
            self.opt.step()
        if self.loss is None:
            self.loss = torch.empty((), dtype=loss.dtype, device=loss.device)
        self.loss.copy_(loss.detach())

    def __call__(self) -> Tensor:
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
        elif self.device.type != "cuda" or self.calls == 1:
            self._body()
        elif self.calls <= 1 + self.warmup:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._body()
            torch.cuda.current_stream(self.device).wait_stream(stream)
        else:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()
            self.graph.replay()
        assert self.loss is not None
        return self.loss


def graph_settings(optimizer: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of an optimizer replayed in a CUDA graph (see :class:`GraphedIteration`)."""
    if optimizer in ("bbi", "ecdsep"):
        return {**settings, "capturable": True, "rng": "counter"}
    if optimizer == "adam":
        return {**settings, "capturable": True}
    return settings


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_run(
    preset: PDEPreset,
    optimizer: str,
    solutions: Sequence[RadialSolution],
    *,
    seed: int = 0,
    init_seed: int | None = None,
    iterations: int | None = None,
    lr: float | None = None,
    overrides: Mapping[str, Any] | None = None,
    resample_every: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    laplacian: str = "forward",
    trace_every: int | None = None,
    cuda_graph: bool = False,
    progress: bool = False,
    desc: str = "",
) -> RunResult:
    """Train the eq. 56 ansatz on the eq. 19 loss once and classify the result.

    ``init_seed`` fixes the network's initialisation and the first set of points (default:
    ``seed``); ``seed`` drives the optimizer's randomness (bounces, rotations) and resampling. So
    several runs with one ``init_seed`` and different ``seed`` start from the same point, as in
    §4.4. ``resample_every`` (K): new interior and boundary points every K iterations
    (``None``: the preset's; ``0``: fixed points). ``overrides``: optimizer settings replacing
    the preset's (e.g. ``{"extra_energy": 50.0, "bounce_direction": "uniform"}``).
    ``trace_every`` (K): record the relative L2 error to each reference every K iterations (and
    at the end), to watch a run move between solutions; each record is one forward pass on the
    evaluation points (and a host sync), counted in ``wall_seconds``.
    ``cuda_graph``: every iteration replays one captured CUDA graph (:class:`GraphedIteration`;
    new points are copied into fixed buffers; BBI and ECDSep run with ``capturable=True`` and
    ``rng="counter"``, so bounces and rotations happen inside the graph). Off CUDA the same
    loop runs eagerly.
    """
    if trace_every is not None and trace_every < 1:
        raise ValueError(f"trace_every must be a positive number of iterations, got {trace_every}")
    dev = _resolve_device(device)
    n_iter = preset.iterations if iterations is None else iterations
    settings = dict(preset.optimizers[optimizer])
    if lr is not None:
        settings["lr"] = lr
    settings.update(overrides or {})
    if cuda_graph:
        settings = graph_settings(optimizer, settings)
    init_seed = seed if init_seed is None else init_seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = ResNetAnsatz(preset.dim, preset.width, preset.depth).to(device=dev, dtype=dtype)
    loss_fn = PDELoss(preset.problem, gamma=preset.gamma, reg=preset.reg, laplacian=laplacian)
    points = _Points(preset, dev, dtype, init_seed=init_seed, seed=seed, in_place=cuda_graph)
    opt = make_optimizer(optimizer, model.parameters(), settings, seed=seed)
    trace = _Trace(model, solutions, preset, every=trace_every)

    def loss_now() -> Tensor:
        return loss_fn(model, *points.current)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_now()
        loss.backward()
        return loss

    iteration = (
        GraphedIteration(opt, list(model.parameters()), loss_now, dev)
        if cuda_graph
        else lambda: opt.step(closure)
    )
    every = preset.resample_every if resample_every is None else (resample_every or None)
    log = _iterate(
        iteration,
        n_iter,
        resample_every=every,
        resample=points.resample,
        log_every=preset.log_every,
        trace=trace,
        bar=_progress_bar(progress, n_iter, desc or f"{preset.name}/{optimizer}"),
        device=dev,
    )
    with torch.no_grad():
        final_loss = float(loss_now()) if n_iter == 0 else float(log.last_loss)
        errors = trace.finish(n_iter)
        section = model(_section_points(preset.dim).to(device=dev, dtype=dtype))
    nearest = classify(errors)
    return RunResult(
        nearest_solution=nearest,
        relative_l2_error=errors[nearest] if nearest >= 0 else math.nan,
        errors=errors,
        final_loss=final_loss,
        wall_seconds=log.wall_seconds,
        iterations=n_iter,
        seed=seed,
        loss_steps=np.asarray(log.steps),
        loss_values=torch.stack(log.values).double().cpu().numpy() if log.values else np.zeros(0),
        section=section.double().cpu().numpy(),
        trace_steps=trace.steps,
        trace_errors=trace.errors,
        off_shell_steps=registry.off_shell_steps(opt),
    )


class _Points:
    """The collocation points of a run: interior points with their source values and boundary
    points (``current``), first drawn from ``init_seed``, redrawn from ``seed`` by
    :meth:`resample`. ``in_place``: new points are copied into the same tensors (a captured
    CUDA graph reads those addresses)."""

    def __init__(
        self, preset: PDEPreset, device: torch.device, dtype: torch.dtype, *, init_seed: int,
        seed: int, in_place: bool,
    ) -> None:  # fmt: skip
        self.preset, self.device, self.dtype, self.in_place = preset, device, dtype, in_place
        self.current = self._draw(torch.Generator().manual_seed(init_seed))
        self._resample_gen = torch.Generator().manual_seed((10_007 * seed + 1) % 2**64)

    def _draw(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        p = self.preset
        xi = sample_ball(p.n_interior, p.dim, gen, dtype=torch.float64)
        xb = sample_sphere(p.n_boundary, p.dim, gen, dtype=torch.float64)
        fi = p.problem.source(xi)
        x_int, f_int, x_bnd = (t.to(device=self.device, dtype=self.dtype) for t in (xi, fi, xb))
        return x_int, f_int, x_bnd

    def resample(self) -> None:
        fresh = self._draw(self._resample_gen)
        if not self.in_place:
            self.current = fresh
            return
        for buffer, values in zip(self.current, fresh, strict=True):
            buffer.copy_(values)


class _Trace:
    """Relative L2 errors to each reference solution, every ``every`` iterations (None: only at
    the end), on fixed evaluation points."""

    def __init__(
        self, model: torch.nn.Module, solutions: Sequence[RadialSolution], preset: PDEPreset,
        every: int | None,
    ) -> None:  # fmt: skip
        self.model, self.solutions, self.every = model, solutions, every
        gen = torch.Generator().manual_seed(12_345)
        self.points = sample_ball(preset.n_eval, preset.dim, gen, dtype=torch.float64)
        self.steps: list[int] = []
        self.errors: list[list[float]] = []

    def due(self, iteration: int) -> bool:
        return bool(self.every) and iteration % self.every == 0

    def record(self, iteration: int) -> list[float]:
        errors = relative_l2_errors(self.model, self.solutions, self.points)
        if self.every:
            self.steps.append(iteration)
            self.errors.append(errors)
        return errors

    def finish(self, iterations: int) -> list[float]:
        """The final errors (also the trace's last record)."""
        return self.record(iterations)


@dataclass
class _Log:
    """What the training loop keeps: the loss every ``log_every`` iterations and the time."""

    steps: list[int] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    last_loss: Any = None
    wall_seconds: float = 0.0


def _progress_bar(show: bool, total: int, desc: str) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _iterate(
    iteration: Callable[[], Tensor],
    n_iter: int,
    *,
    resample_every: int | None,
    resample: Callable[[], None],
    log_every: int,
    trace: _Trace,
    bar: Any,
    device: torch.device,
) -> _Log:
    """The training loop: ``n_iter`` iterations, new points every ``resample_every``."""
    log = _Log()
    start = time.perf_counter()
    for it in range(n_iter):
        if trace.due(it):
            trace.record(it)
        if resample_every and it > 0 and it % resample_every == 0:
            resample()
        loss = iteration()
        if it % log_every == 0 or it == n_iter - 1:
            log.values.append(loss.detach().clone())
            log.steps.append(it)
            if bar is not None and len(log.values) % 20 == 0:
                bar.set_postfix(loss=f"{float(loss):.3g}")
        if bar is not None and (it + 1) % 100 == 0:
            bar.update(100)
        log.last_loss = loss
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    log.wall_seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return log


def train_runs(
    preset: PDEPreset,
    optimizer: str,
    *,
    runs: int = 1,
    seed: int = 0,
    vary_init: bool = False,
    init_seed: int | None = None,
    solutions: Sequence[RadialSolution] | None = None,
    tolerance: float = 0.05,
    jobs: int = 1,
    on_run: Callable[[dict[str, Any], RunResult], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``runs`` runs; returns the JSON document ``{"runs": [...], "counts": {...}, ...}``.

    Run i has optimizer seed ``seed + i`` and the same initialisation ``init_seed`` (default
    ``seed``) as the others, unless ``vary_init`` (then ``seed + i``).

    ``counts[str(k)]`` is the number of runs nearest to solution k; ``converged_counts`` only
    counts runs within ``tolerance`` relative L2 error of it.

    ``jobs`` > 1 trains that many runs at a time in worker processes (spawned), each with one
    torch thread; a run's result does not depend on ``jobs`` (it equals a ``jobs=1`` run under
    ``torch.set_num_threads(1)``). The preset's profile must then be picklable (a module-level
    class, not a lambda).

    ``on_run(document, result)`` is called as each run finishes, with the document of the runs
    finished so far (in run order, ``runs_done`` of ``runs_total``), so a caller can save it.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if solutions is None:
        solutions = reference_solutions(preset)
    progress = kwargs.pop("progress", False)
    calls = [
        {
            "seed": registry.seed_plus(seed, i),
            "init_seed": registry.seed_plus(seed, i)
            if vary_init
            else (seed if init_seed is None else init_seed),
            "desc": f"{preset.name}/{optimizer} run {i + 1}/{runs}",
            **kwargs,
        }
        for i in range(runs)
    ]
    settings = dict(preset.optimizers[optimizer])
    if kwargs.get("lr") is not None:
        settings["lr"] = kwargs["lr"]
    settings.update(kwargs.get("overrides") or {})
    done: dict[int, RunResult] = {}

    def document() -> dict[str, Any]:
        finished = [done[i] for i in sorted(done)]
        return _runs_document(preset, optimizer, settings, solutions, finished, tolerance, runs)

    def finished(index: int, result: RunResult) -> None:
        done[index] = result
        if on_run is not None:
            on_run(document(), result)

    if jobs == 1 or runs == 1:
        for i, call in enumerate(calls):
            finished(i, train_run(preset, optimizer, solutions, progress=progress, **call))
    else:
        _train_in_workers(preset, optimizer, solutions, calls, jobs, progress, finished)
    return document()


def _runs_document(
    preset: PDEPreset,
    optimizer: str,
    settings: Mapping[str, Any],
    solutions: Sequence[RadialSolution],
    results: Sequence[RunResult],
    tolerance: float,
    runs_total: int,
) -> dict[str, Any]:
    """The JSON document of finished runs (plus ``_results`` / ``_solutions`` for the plots)."""
    counts = {str(k): 0 for k in range(len(solutions))}
    converged = dict(counts)
    for r in results:
        if r.nearest_solution >= 0:
            counts[str(r.nearest_solution)] += 1
            if r.relative_l2_error <= tolerance:
                converged[str(r.nearest_solution)] += 1
    return {
        "preset": preset.name,
        "profile": profile_description(preset.profile),
        "dim": preset.dim,
        "optimizer": optimizer,
        "optimizer_settings": dict(settings),
        "solutions": [s.as_dict() for s in solutions],
        "runs_total": runs_total,
        "runs_done": len(results),
        "runs": [r.as_dict() for r in results],
        "counts": counts,
        "converged_counts": converged,
        "tolerance": tolerance,
        "_results": list(results),  # not JSON: dropped by the CLI, used for plots
        "_solutions": list(solutions),
    }


def _train_job(
    preset: PDEPreset, optimizer: str, solutions: Sequence[RadialSolution], call: dict[str, Any]
) -> RunResult:
    """One run in a worker process, single-threaded (so runs do not fight over cores)."""
    torch.set_num_threads(1)
    return train_run(preset, optimizer, solutions, **call)


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (no traceback from every worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train_in_workers(
    preset: PDEPreset,
    optimizer: str,
    solutions: Sequence[RadialSolution],
    calls: list[dict[str, Any]],
    jobs: int,
    progress: bool,
    finished: Callable[[int, RunResult], None],
) -> None:
    """:func:`train_run` for each of ``calls`` in ``jobs`` spawned processes; ``finished(i,
    result)`` as each one ends. On an interruption the workers are stopped at once."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # the presets' mappings are read-only proxies, which do not pickle: send plain dicts
    portable = replace(preset, optimizers={k: dict(v) for k, v in preset.optimizers.items()})
    try:
        pickle.dumps(portable.profile)
    except Exception as exc:  # any pickling failure means the same thing
        raise ValueError(
            f"jobs > 1 needs a picklable profile (a module-level class); "
            f"{type(preset.profile).__name__} is not: {exc}"
        ) from exc
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(calls), desc=f"{preset.name}/{optimizer} ({jobs} jobs)", unit="run")
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)), mp_context=context, initializer=_ignore_interrupts
    )
    try:
        futures = {
            pool.submit(_train_job, portable, optimizer, list(solutions), call): i
            for i, call in enumerate(calls)
        }
        for future in as_completed(futures):
            finished(futures[future], future.result())
            if bar is not None:
                bar.update(1)
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if bar is not None:
        bar.close()
