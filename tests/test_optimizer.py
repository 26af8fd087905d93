"""Generic optimizer tests driven by a table (like torch's OptimizerInfo), plus ECD specifics."""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import ecdopt
from ecdopt import BBI, ECD, ECDSep, MissingLossError, NonFiniteLossWarning, UnitSpeedECD
from ecdopt.reference import algorithm1

F64 = torch.float64


@dataclass(frozen=True)
class OptimizerInfo:
    """One row of the table: how to build the optimizer and how to run the reference."""

    name: str
    cls: type
    kwargs: dict[str, Any]
    reference_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-2


OPTIMIZERS = [
    OptimizerInfo(
        "bbi",
        BBI,
        {"extra_energy": 0.5, "bounce_period": 7, "n_bounces": 3, "bounce_patience": 11},
        {"T0": 7, "N_b": 3, "T1": 11, "delta_E": 0.5},
    ),
    OptimizerInfo(
        "bbi_uniform",
        BBI,
        {
            "extra_energy": 0.2,
            "bounce_period": 5,
            "n_bounces": 4,
            "bounce_patience": 9,
            "bounce_direction": "uniform",
        },
        {"T0": 5, "N_b": 4, "T1": 9, "delta_E": 0.2, "bounce_direction": "uniform"},
    ),
    OptimizerInfo(
        "inverse_mass",
        ECD,
        {"hamiltonian": "inverse_mass", "bounce_period": 13, "n_bounces": 2},
        {"hamiltonian": "inverse_mass", "T0": 13, "N_b": 2, "T1": 3000},
        lr=2e-3,
    ),
    OptimizerInfo(
        "ecdsep",
        ECDSep,
        {"chaos": 1e-3, "extra_energy": 1.0},
        {"hamiltonian": "separable", "nu": 1e-3, "delta_E": 1.0},
    ),
    OptimizerInfo(
        "unit_speed",
        UnitSpeedECD,
        {"chaos": 0.0},
        {"hamiltonian": "unit_speed", "T0": None, "T1": None},
    ),
    OptimizerInfo(
        "unit_speed_rotation",
        UnitSpeedECD,
        {"chaos": 0.05},
        {"hamiltonian": "unit_speed", "nu": 0.05, "T0": None, "T1": None},
    ),
    OptimizerInfo(
        "separable_eta",
        ECD,
        {"hamiltonian": "separable", "loss_power": 2.0, "kinetic_offset": 0.5, "chaos": 0.0},
        {"hamiltonian": "separable", "eta": 2.0, "s": 0.5, "T0": 1000, "N_b": 1, "T1": 3000},
    ),
]
IDS = [info.name for info in OPTIMIZERS]


def _problem(seed: int = 0) -> tuple[torch.Tensor, Callable[[list[torch.Tensor]], torch.Tensor]]:
    """A smooth non-quadratic loss on 7 numbers, with a floor-friendly minimum value 0.3."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(7, 7, generator=gen, dtype=F64)
    hessian = a @ a.T / 7 + 0.5 * torch.eye(7, dtype=F64)

    def loss_fn(params: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * x @ hessian @ x + 0.05 * (x**4).sum() + 0.3

    return torch.randn(7, generator=gen, dtype=F64), loss_fn


def _split(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[:3].clone(), x[3:5].reshape(2, 1).clone(), x[5:].clone()]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], loss_fn, steps: int) -> list:
    trajectory = []
    for _ in range(steps):

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(params)
            loss.backward()
            return loss

        opt.step(closure)
        trajectory.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return trajectory


def _groups(params: list[torch.Tensor], lr: float, weight_decay: float) -> list[dict]:
    return [
        {"params": [params[0]], "lr": lr},
        {"params": [params[1], params[2]], "lr": 2 * lr, "weight_decay": weight_decay},
    ]


# ----------------------------------------------------------------- fast == reference
@pytest.mark.parametrize("info", OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    ("weight_decay", "loss_floor", "loss_power"), [(0.0, 0.0, 1.0), (0.02, 0.1, 1.5)]
)
def test_matches_reference_float64(info, foreach, weight_decay, loss_floor, loss_power):
    """The optimizer follows the literal Algorithm 1 (with its bounces) step for step."""
    x0, loss_fn = _problem(1)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    kwargs = {**info.kwargs, "loss_floor": loss_floor, "seed": 7, "foreach": foreach}
    if "loss_power" not in info.kwargs:
        kwargs["loss_power"] = loss_power
    opt = info.cls(_groups(params, info.lr, weight_decay), lr=info.lr, **kwargs)
    steps = 300
    fast = _run(opt, params, loss_fn, steps)
    ref_kwargs = {
        "T0": None,
        "T1": None,
        "eta": kwargs["loss_power"],
        **info.reference_kwargs,
        "delta_V": loss_floor,
        "seed": 7,
    }
    ref = algorithm1(loss_fn, _groups(_split(x0), info.lr, weight_decay), steps, **ref_kwargs)
    assert len(ref.thetas) == steps
    for k, (a, b) in enumerate(zip(fast, ref.thetas, strict=True)):
        torch.testing.assert_close(
            a, torch.cat([t.reshape(-1) for t in b]), rtol=1e-9, atol=1e-11, msg=f"step {k}"
        )
    diag = opt.diagnostics()
    assert diag["bounces"] == ref.bounces
    assert diag["energy"] == pytest.approx(ref.energy, rel=1e-12)
    assert diag["momentum_sq"] == pytest.approx(ref.momentum_sq[-1], rel=1e-9)
    if ref.bounces:
        # Algorithm 1 spends an iteration (and the next gradient) per bounce; the merged step not.
        assert ref.iterations == steps + ref.bounces


def test_reference_test_is_sensitive():
    """The parity test above would notice a different step size or a missing bounce."""
    x0, loss_fn = _problem(1)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(
        _groups(params, 1e-2, 0.0),
        lr=1e-2,
        bounce_period=7,
        n_bounces=3,
        seed=7,
        bounce_patience=None,
    )
    fast = _run(opt, params, loss_fn, 60)
    ref = algorithm1(loss_fn, _groups(_split(x0), 1e-2, 0.0), 60, T0=7, N_b=2, seed=7)
    diffs = [
        float((a - torch.cat([t.reshape(-1) for t in b])).abs().max())
        for a, b in zip(fast, ref.thetas, strict=True)
    ]
    assert max(diffs[:10]) < 1e-12 and max(diffs) > 1e-6


# ------------------------------------------------------------------------ generic
@pytest.mark.parametrize("info", OPTIMIZERS, ids=IDS)
def test_goes_downhill(info):
    """Without bounces the particle reaches a loss well below its start (Theorem 2.1)."""
    x0, loss_fn = _problem(2)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    kwargs = {**info.kwargs, "seed": 0}
    if info.cls is not ECDSep:
        kwargs.update(bounce_period=None, bounce_patience=None)
    opt = info.cls(params, lr=info.lr, **kwargs)
    start = float(loss_fn(params).detach())
    best = start
    for _ in range(400):
        best = min(best, float(_run_one(opt, params, loss_fn)))
    assert best < 0.3 + 0.25 * (start - 0.3)


def _run_one(opt, params, loss_fn) -> torch.Tensor:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss

    return opt.step(closure).detach()


@pytest.mark.parametrize("info", OPTIMIZERS, ids=IDS)
def test_foreach_matches_per_tensor_with_empty_group_and_gradless_param(info):
    x0, loss_fn = _problem(3)
    runs = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(t) for t in _split(x0)]
        frozen = torch.nn.Parameter(torch.ones(4, dtype=F64))  # never gets a gradient
        groups = [*_groups(params, info.lr, 0.01), {"params": [frozen]}, {"params": []}]
        opt = info.cls(groups, lr=info.lr, **{**info.kwargs, "seed": 3, "foreach": foreach})
        runs.append(_run(opt, params, loss_fn, 120))
        assert torch.equal(frozen.detach(), torch.ones(4, dtype=F64))
        assert "momentum" not in opt.state[frozen]
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=IDS)
def test_state_dict_resume_is_bit_exact(info, tmp_path):
    x0, loss_fn = _problem(4)

    def make(params):
        return info.cls(_groups(params, info.lr, 0.01), lr=info.lr, **{**info.kwargs, "seed": 11})

    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = make(params)
    _run(opt, params, loss_fn, 37)
    path = tmp_path / "ckpt.pt"
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, path)
    straight = _run(opt, params, loss_fn, 60)

    checkpoint = torch.load(path, weights_only=True)
    resumed_params = [torch.nn.Parameter(t) for t in checkpoint["params"]]
    resumed = info.cls(_groups(resumed_params, 0.5, 0.0), lr=0.5, **info.kwargs)  # seed differs
    resumed.load_state_dict(checkpoint["opt"])
    again = _run(resumed, resumed_params, loss_fn, 60)
    for a, b in zip(straight, again, strict=True):
        assert torch.equal(a, b)
    assert resumed.diagnostics() == opt.diagnostics()


@pytest.mark.parametrize("info", OPTIMIZERS, ids=IDS)
def test_same_seed_same_trajectory_other_seed_differs(info):
    x0, loss_fn = _problem(5)
    kwargs = {**info.kwargs, "bounce_period": 3, "n_bounces": 5}
    if info.cls is ECDSep:
        kwargs = {**info.kwargs, "chaos": 0.05}
    ends = []
    for seed in (1, 1, 2):
        params = [torch.nn.Parameter(t) for t in _split(x0)]
        opt = info.cls(params, lr=info.lr, **{**kwargs, "seed": seed})
        ends.append(_run(opt, params, loss_fn, 40)[-1])
    assert torch.equal(ends[0], ends[1])
    assert not torch.equal(ends[0], ends[2])


ERROR_INPUTS = [
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"lr": -1e-3}, "lr must be"),
    ({"lr": float("nan")}, "lr must be"),
    ({"lr": float("inf")}, "lr must be"),
    ({"extra_energy": -1.0}, "extra_energy must be a finite number >= 0"),
    ({"bounce_period": 0}, "bounce_period must be an int >= 1"),
    ({"n_bounces": -1}, "n_bounces must be an int >= 0"),
    ({"bounce_patience": 0}, "bounce_patience must be an int >= 1"),
    ({"loss_power": 0.0}, "loss_power must be a finite number > 0"),
    ({"loss_power": -2.0}, "loss_power must be"),
    ({"chaos": -1e-5}, "chaos must be a finite number >= 0"),
    ({"hamiltonian": "newton"}, "hamiltonian must be one of 'born_infeld', 'inverse_mass'"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"kinetic_offset": 0.0}, "kinetic_offset must be a finite number > 0"),
    ({"bounce_direction": "sphere"}, "bounce_direction must be one of 'gaussian', 'uniform'"),
    ({"loss_floor": float("nan")}, "loss_floor must be a finite number"),
    ({"seed": -3}, r"seed must be an int with 0 <= seed < 2\*\*63, or None"),
]


@pytest.mark.parametrize(("kwargs", "message"), ERROR_INPUTS, ids=[str(k) for k, _ in ERROR_INPUTS])
def test_bad_arguments_are_refused(kwargs, message):
    params = [torch.nn.Parameter(torch.zeros(2))]
    kwargs = {"lr": 1e-2, **kwargs}
    with pytest.raises(ValueError, match=message):
        ECD(params, **kwargs)


def test_bad_group_lr_is_refused():
    with pytest.raises(ValueError, match="lr must be"):
        BBI([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1.0}], lr=1e-2)


def test_sparse_and_complex_gradients_are_refused():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = BBI(emb.parameters(), lr=1e-2)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step(loss=torch.tensor(1.0))
    z = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    opt = BBI([z], lr=1e-2)
    (z.abs() ** 2).sum().backward()
    with pytest.raises(ValueError, match="complex"):
        opt.step(loss=torch.tensor(1.0))


def test_missing_loss_error_shows_both_ways():
    p = torch.nn.Parameter(torch.ones(2))
    opt = BBI([p], lr=1e-2)
    (p**2).sum().backward()
    with pytest.raises(TypeError, match=r"step\(lambda: loss\).*step\(loss=loss\)") as info:
        opt.step()
    assert isinstance(info.value, MissingLossError)


def test_closure_returning_none_takes_the_loss_keyword():
    """Lightning's manual optimization passes its own closure (returning None) beside loss=."""
    ends = []
    for mode in ("lambda", "none-closure-and-loss"):
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        opt = BBI([p], lr=1e-2, seed=0)
        for _ in range(20):
            opt.zero_grad()
            loss = (p**2).sum() + 1.0
            loss.backward()
            if mode == "lambda":
                opt.step(lambda loss=loss: loss)
            else:
                opt.step(closure=lambda: None, loss=loss)
        ends.append(p.detach().clone())
    assert torch.equal(ends[0], ends[1])
    assert not torch.equal(ends[0], torch.tensor([1.0, -2.0], dtype=torch.float64))
    with pytest.raises(TypeError, match="pass one of them"):
        opt.step(closure=lambda: torch.tensor(1.0), loss=torch.tensor(1.0))


def test_loss_keyword_equals_closure():
    x0, loss_fn = _problem(6)
    ends = []
    for mode in ("closure", "loss"):
        params = [torch.nn.Parameter(t) for t in _split(x0)]
        opt = BBI(params, lr=1e-2, extra_energy=0.3, bounce_period=5, seed=2)
        for _ in range(50):
            if mode == "closure":
                _run(opt, params, loss_fn, 1)
            else:
                opt.zero_grad()
                loss = loss_fn(params)
                loss.backward()
                returned = opt.step(loss=loss)
                assert returned is loss
        ends.append(torch.cat([p.detach().reshape(-1) for p in params]))
    assert torch.equal(ends[0], ends[1])


# ------------------------------------------------------------------- robustness
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_and_changes_nothing(bad, where):
    x0, loss_fn = _problem(7)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(params, lr=1e-2, extra_energy=0.5, seed=0)
    _run(opt, params, loss_fn, 5)
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    loss = loss_fn(params)
    loss.backward()
    if where == "grad":
        params[1].grad[0, 0] = bad
    else:
        loss = loss * bad
    with pytest.warns(NonFiniteLossWarning, match="skipped"):
        opt.step(loss=loss)
    for a, b in zip(before_params, params, strict=True):
        assert torch.equal(a, b.detach())
    after_state = opt.state_dict()
    buf = io.BytesIO()
    torch.save(before_state, buf)
    for pid, s in before_state["state"].items():
        assert torch.equal(s["momentum"], after_state["state"][pid]["momentum"])
    assert before_state["ecd"]["steps"] == after_state["ecd"]["steps"]
    # and the next good step works
    _run(opt, params, loss_fn, 1)
    assert all(torch.isfinite(p).all() for p in params)


def test_zero_gradient_at_start_gets_a_random_direction():
    p = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    opt = BBI([p], lr=0.1, extra_energy=1.0, seed=0)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum() + 1.0  # gradient 0 at the start
        loss.backward()
        return loss

    opt.step(closure)
    m = opt.state[p]["momentum"]
    assert torch.isfinite(m).all() and m.norm() > 0
    # |Π| = sqrt(E²/V − V) with V = 1, E = 2
    assert float(m.norm()) == pytest.approx(math.sqrt(3.0), rel=1e-6)
    assert p.detach().abs().sum() > 0  # Θ moved (Theorem 2.1: 0 < V < E)


def test_loss_below_floor_at_first_step_is_a_clear_error():
    p = torch.nn.Parameter(torch.ones(2))
    opt = BBI([p], lr=1e-2, loss_floor=5.0)
    (p**2).sum().backward()
    with pytest.raises(ValueError, match=r"loss_floor.*adapt_floor=True"):
        opt.step(loss=(p**2).sum())


def test_adapt_floor_settles_on_the_true_minimum():
    """The paper's adaptive ΔV: minimum 3.7, started with F0 = 4.0."""
    x = torch.nn.Parameter(torch.tensor([2.0, -1.5], dtype=F64))
    opt = BBI(
        [x], lr=0.1, loss_floor=4.0, adapt_floor=True, bounce_period=None, bounce_patience=None
    )
    best = math.inf
    for _ in range(3000):

        def closure():
            opt.zero_grad()
            loss = 3.7 + x[0] ** 2 + 2 * x[1] ** 2 + 0.1 * (x**2).sum() ** 2
            loss.backward()
            return loss

        best = min(best, float(opt.step(closure)))
    floor = opt.diagnostics()["loss_floor"]
    assert abs(floor - 3.7) < 1e-3
    assert best < 3.701
    assert opt.diagnostics()["energy"] >= 0


def test_no_adapt_floor_stops_at_the_floor():
    x = torch.nn.Parameter(torch.tensor([2.0, -1.5], dtype=F64))
    opt = BBI([x], lr=0.05, loss_floor=4.0, bounce_period=None, bounce_patience=None)
    for _ in range(2000):

        def closure():
            opt.zero_grad()
            loss = 3.7 + x[0] ** 2 + 2 * x[1] ** 2
            loss.backward()
            return loss

        opt.step(closure)
    final = float(3.7 + x[0] ** 2 + 2 * x[1] ** 2)
    assert 3.99 < final <= 4.0 + 1e-3  # it stops at the floor (V ≤ ε2), never below much


def test_stopped_particle_does_not_move():
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=F64))
    opt = BBI([p], lr=1e-2, stop_tol=10.0)  # V = 2 < ε2: stopped from the start
    for _ in range(3):
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        opt.step(loss=loss)
    assert torch.equal(p.detach(), torch.tensor([1.0, 1.0], dtype=F64))


def test_fixed_bounce_schedule_counts():
    x0, loss_fn = _problem(8)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(params, lr=1e-3, bounce_period=5, n_bounces=3, bounce_patience=None, seed=0)
    _run(opt, params, loss_fn, 100)
    assert opt.diagnostics()["bounces"] == 3
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(params, lr=1e-3, bounce_period=5, n_bounces=0, bounce_patience=None, seed=0)
    _run(opt, params, loss_fn, 100)
    assert opt.diagnostics()["bounces"] == 0


def test_progress_bounce_after_patience_without_new_minimum():
    """A loss that never improves: a progress bounce every T1 + 1 steps (c1 reaches T1)."""
    p = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = BBI([p], lr=1e-3, bounce_period=None, bounce_patience=4, seed=0)
    for _ in range(21):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step(loss=torch.tensor(1.0, dtype=F64))  # constant loss: one minimum, then none
    # step 1 is the new minimum (c1 = 0); c1 reaches 4 after steps 2-5: bounce at step 6, ...
    assert opt.diagnostics()["bounces"] == 4


def test_lr_scheduler_changes_the_step():
    x0, loss_fn = _problem(9)
    ends = []
    for use_scheduler in (False, True):
        params = [torch.nn.Parameter(t) for t in _split(x0)]
        opt = BBI(params, lr=1e-2, seed=0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)
        for _ in range(20):
            _run(opt, params, loss_fn, 1)
            if use_scheduler:
                sched.step()
        ends.append(torch.cat([p.detach().reshape(-1) for p in params]))
        if use_scheduler:
            assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.1**4)
    assert not torch.allclose(ends[0], ends[1])


def test_diagnostics_keys_and_energy():
    x0, loss_fn = _problem(10)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(params, lr=1e-2, extra_energy=0.7, loss_floor=0.2, seed=0)
    v0 = float(loss_fn(params)) - 0.2
    _run(opt, params, loss_fn, 10)
    d = opt.diagnostics()
    for key in (
        "energy",
        "potential",
        "momentum_sq",
        "speed",
        "rescale",
        "steps",
        "bounces",
        "loss_floor",
    ):
        assert isinstance(d[key], float)
    assert d["energy"] == pytest.approx(v0 + 0.7, rel=1e-12)
    assert d["steps"] == 10 and d["loss_floor"] == 0.2


# ---------------------------------------------------------------- dtypes, layout
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [BBI, ECDSep])
def test_dtypes_train_a_small_network(dtype, cls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = model.to(dtype)
    x = torch.randn(64, 4, dtype=dtype)
    y = (x[:, :1] * 0.5).to(dtype)
    opt = cls(model.parameters(), lr=0.05, seed=0)
    losses = []
    for _ in range(150):

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure)))
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-10:]) < 0.6 * losses[0]
    for p in model.parameters():
        assert p.dtype == dtype
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        assert opt.state[p]["momentum"].dtype == wide


def test_sixteen_bit_momentum_survives_resume():
    p = torch.nn.Parameter(torch.randn(10).to(torch.bfloat16))
    opt = BBI([p], lr=1e-2, extra_energy=1.0)
    opt.zero_grad()
    (p.float() ** 2).sum().backward()
    opt.step(loss=(p.float() ** 2).sum().detach())
    saved = opt.state_dict()
    other = BBI([p], lr=1e-2)
    other.load_state_dict(saved)
    assert other.state[p]["momentum"].dtype == torch.float32
    assert torch.equal(other.state[p]["momentum"], opt.state[p]["momentum"])


def test_channels_last_parameters():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = BBI(conv.parameters(), lr=1e-2, seed=0)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    for _ in range(3):

        def closure():
            opt.zero_grad()
            loss = conv(x).pow(2).mean() + 0.1
            loss.backward()
            return loss

        opt.step(closure)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert opt.state[conv.weight]["momentum"].is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(conv.weight).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x0, loss_fn = _problem(11)
    ends = []
    for device in ("cpu", "cuda"):
        params = [torch.nn.Parameter(t.to(device)) for t in _split(x0)]
        opt = BBI(params, lr=1e-2, bounce_period=None, bounce_patience=None)
        ends.append(_run(opt, params, loss_fn, 50)[-1].cpu())
    torch.testing.assert_close(ends[0], ends[1], rtol=1e-10, atol=1e-12)


def test_public_api_and_light_import():
    import subprocess
    import sys

    code = (
        "import sys, ecdopt; "
        "bad = [m for m in ('optuna', 'matplotlib', 'scipy', 'sklearn') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert issubclass(ecdopt.BBI, torch.optim.Optimizer)


def test_warning_free_normal_step():
    x0, loss_fn = _problem(12)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(params, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(opt, params, loss_fn, 3)


def test_deepcopy_and_pickle_keep_the_particle():
    """torch's Optimizer pickles only defaults/state/groups; ECD keeps its config and E too."""
    import pickle

    x0, loss_fn = _problem(13)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = BBI(params, lr=1e-2, extra_energy=0.4, bounce_period=4, n_bounces=3, seed=2)
    _run(opt, params, loss_fn, 10)
    params2, opt2 = copy.deepcopy((params, opt))
    a = _run(opt, params, loss_fn, 20)
    b = _run(opt2, params2, loss_fn, 20)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.diagnostics() == opt.diagnostics()
    assert restored.config == opt.config
