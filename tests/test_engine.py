"""The ECD engine: one dynamics for the optimizer and the ensemble, the off-shell mode, checked
loading, numerics that never write a non-finite value, torch conventions and strict types."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ecdopt import BBI, ECD, ECDSep, NonFiniteLossWarning, UnitSpeedECD
from ecdopt.ensemble import particle_seeds, simulate
from ecdopt.landscapes import zakharov
from ecdopt.reference import algorithm1

F64 = torch.float64


def _landscape(t: torch.Tensor) -> torch.Tensor:
    """A non-convex 2-D landscape written elementwise (the same rounding batched or single)."""
    x, y = t[..., 0], t[..., 1]
    return 0.5 * x * x + y * y + 0.3 * torch.sin(3.0 * x) * torch.cos(2.0 * y) + 1.0


def _steps(opt: torch.optim.Optimizer, p: torch.Tensor, loss_fn, steps: int) -> torch.Tensor:
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(p)
        loss.backward()
        opt.step(loss=loss)
        out.append(p.detach().clone())
    return torch.stack(out)


# -------------------------------------------------------------- ensemble = optimizer
ENSEMBLE_CASES = {
    "bbi_gaussian_bounces_adapt_floor": {
        "hamiltonian": "born_infeld", "lr": 0.02, "extra_energy": 0.5, "bounce_period": 37,
        "n_bounces": 20, "bounce_patience": 23, "loss_floor": 0.9, "adapt_floor": True,
    },
    "bbi_uniform_bounces": {
        "hamiltonian": "born_infeld", "lr": 0.02, "extra_energy": 0.3, "bounce_period": 29,
        "n_bounces": 30, "bounce_patience": 41, "bounce_direction": "uniform",
    },
    "ecdsep_rotation_adapt_floor": {
        "hamiltonian": "separable", "lr": 0.05, "extra_energy": 0.5, "chaos": 0.05,
        "loss_power": 1.5, "bounce_period": None, "bounce_patience": None, "loss_floor": 0.95,
        "adapt_floor": True,
    },
    "unit_speed_rotation_bounces": {
        "hamiltonian": "unit_speed", "lr": 0.01, "chaos": 0.5, "loss_power": 2.0,
        "bounce_period": 50, "n_bounces": 10, "bounce_patience": None, "loss_floor": 0.5,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ENSEMBLE_CASES))
def test_ensemble_particles_are_the_optimizer_with_their_seeds(name):
    """16 particles per case (64 in all) through ``simulate(seeds=...)`` and through 16 single
    optimizers: equal to 1e-12 over 2000 steps, bounces, rotations and floor moves included."""
    kwargs, m, steps = ENSEMBLE_CASES[name], 16, 2000
    theta0 = (torch.rand(m, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 - 1) * 1.5
    seeds = list(range(100, 100 + m))
    result = simulate(_landscape, theta0, steps, seeds=seeds, record_every=1, **kwargs)
    bounces = []
    for i in range(m):
        p = torch.nn.Parameter(theta0[i].clone())
        opt = ECD([p], seed=seeds[i], **kwargs)
        trajectory = _steps(opt, p, _landscape, steps)
        torch.testing.assert_close(trajectory, result.history_theta[1:, i], rtol=0, atol=1e-12)
        assert opt.diagnostics()["bounces"] == int(result.bounces[i])
        bounces.append(int(result.bounces[i]))
    if kwargs.get("bounce_period"):
        assert min(bounces) >= 5  # the schedule really bounced
    if kwargs.get("adapt_floor"):
        assert float(result.history_value.min()) < kwargs["loss_floor"]  # the floor moved


def test_ensemble_seed_is_shorthand_for_particle_seeds():
    theta0 = torch.zeros(3, 2, dtype=F64) + 0.5
    kwargs = {"lr": 0.02, "bounce_period": 5, "n_bounces": 4, "extra_energy": 0.5}
    a = simulate(_landscape, theta0, 40, seed=9, **kwargs)
    b = simulate(_landscape, theta0, 40, seeds=particle_seeds(9, 3), **kwargs)
    assert torch.equal(a.theta, b.theta)
    assert not torch.equal(a.theta[0], a.theta[1])  # one start, different draws per particle
    torch.manual_seed(5)
    c = simulate(_landscape, theta0, 40, **kwargs)
    torch.manual_seed(5)
    d = simulate(_landscape, theta0, 40, **kwargs)
    assert torch.equal(c.theta, d.theta)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr must be"),
        ({"loss_power": -1.0}, "loss_power must be"),
        ({"extra_energy": -5.0}, "extra_energy must be"),
        ({"extra_energy": torch.tensor([0.1, -0.2])}, "extra_energy must be"),
        ({"lr": torch.tensor([0.1, float("nan")])}, "lr must be"),
        ({"bounce_period": True}, "bounce_period must be an int"),
        ({"adapt_floor": "no"}, "adapt_floor must be True or False"),
        ({"seeds": [1]}, "seeds must be 2 ints"),
        ({"seed": 1, "seeds": [1, 2]}, "not both"),
        ({"off_shell": "clip"}, "off_shell must be one of 'rescale', 'exact'"),
    ],
)
def test_ensemble_validates_what_the_optimizer_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(_landscape, torch.zeros(2, 2, dtype=F64), 3, **{"lr": 0.1, **kwargs})


# -------------------------------------------------------------------- off the shell
def test_exact_off_shell_is_algorithm1_where_the_guard_would_act():
    """Zakharov-10 from (−1,…,−1) at Δt = 0.00272 (bounces off): the discrete particle gets
    V > 2E at the third update. ``"exact"`` follows Algorithm 1 update for update until it
    overflows, then refuses the step instead of writing inf; ``"rescale"`` counts the steps it
    rescales and stays finite."""
    lr, x0 = 0.00272, -torch.ones(10, dtype=F64)
    ref = algorithm1(lambda ps: zakharov(ps[0][None])[0], [{"params": [x0], "lr": lr}], 10)
    finite = [t[0] for t in ref.thetas if torch.isfinite(t[0]).all()]
    assert 3 <= len(finite) < len(ref.thetas)  # the reference itself goes non-finite
    runs = {}
    for mode in ("exact", "rescale"):
        p = torch.nn.Parameter(x0.clone())
        opt = BBI([p], lr=lr, bounce_period=None, bounce_patience=None, off_shell=mode, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteLossWarning)
            runs[mode] = (_steps(opt, p, lambda x: zakharov(x[None])[0], 30), opt.diagnostics())
    exact, diag = runs["exact"]
    for k, expected in enumerate(finite):
        torch.testing.assert_close(exact[k], expected, rtol=1e-9, atol=1e-9)
    assert diag["off_shell_steps"] >= 1 and diag["skipped"] >= 1
    assert torch.isfinite(exact).all()
    rescaled, diag = runs["rescale"]
    assert diag["off_shell_steps"] >= 1 and diag["skipped"] == 0
    assert torch.isfinite(rescaled).all()
    assert not torch.allclose(rescaled[3], exact[3])


def test_below_the_guard_both_modes_are_algorithm1_and_count_nothing():
    x0 = -torch.ones(10, dtype=F64)
    for mode in ("exact", "rescale"):
        p = torch.nn.Parameter(x0.clone())
        opt = BBI([p], lr=0.0026, bounce_period=None, bounce_patience=None, off_shell=mode)
        _steps(opt, p, lambda x: zakharov(x[None])[0], 50)
        assert opt.diagnostics()["off_shell_steps"] == 0


# ---------------------------------------------------------------------- load checks
def _trained(cls=BBI, steps=5, **kwargs):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    opt = cls([p], lr=0.01, seed=0, **kwargs)
    _steps(opt, p, lambda x: (x * x).sum() + 1.0, steps)
    return p, opt


def _fresh(cls=BBI, **kwargs):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    return cls([p], lr=0.01, **kwargs)


def test_load_refuses_a_state_of_another_hamiltonian_or_loss_power():
    _, sep = _trained(ECDSep)
    with pytest.raises(ValueError, match="hamiltonian is 'separable' there and 'born_infeld'"):
        _fresh(BBI).load_state_dict(sep.state_dict())
    _, bbi = _trained(BBI, loss_power=2.0)
    with pytest.raises(ValueError, match=r"loss_power is 2\.0 there and 1\.0 here"):
        _fresh(BBI).load_state_dict(bbi.state_dict())
    _fresh(BBI, loss_power=2.0, bounce_period=7).load_state_dict(bbi.state_dict())  # schedule: ok


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda sd: sd["state"][0].update(momentum=torch.zeros(4, dtype=F64)), "has shape"),
        (lambda sd: sd["state"][0].update(momentum=torch.full((3,), math.nan)), "not finite"),
        (lambda sd: sd["ecd"].update(energy=None), "energy must be a finite number"),
        (lambda sd: sd["ecd"].update(energy=math.inf), "energy must be a finite number"),
        (lambda sd: sd["ecd"].update(c0="x"), "counter 'c0' must be an int"),
        (lambda sd: sd["ecd"].update(steps=2.5), "counter 'steps' must be an int"),
        (lambda sd: sd.pop("ecd"), "not an ECD state_dict"),
    ],
)
def test_load_refuses_a_broken_state(corrupt, message):
    _, opt = _trained()
    sd = opt.state_dict()
    corrupt(sd)
    fresh = _fresh()
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(sd)
    assert fresh.state == {}  # nothing was loaded


# ------------------------------------------------------------------------- numerics
def _quiet_steps(opt, p, losses):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLossWarning)
        for value in losses:
            opt.zero_grad()
            loss = value * (1.0 + 0.01 * (p * p).sum())
            loss.backward()
            opt.step(loss=loss)
            assert torch.isfinite(p).all(), value
            assert all(torch.isfinite(s["momentum"]).all() for s in opt.state.values())
    return opt.diagnostics()


def test_float32_sums_do_not_overflow():
    """Σx² of float32 tensors above 1.8e19 (whose float32 sum is inf): float64, finite."""
    from ecdopt._kernels import host_sum_of_squares, sum_of_squares

    big = [torch.full((70_000,), 1e20), torch.full((3,), 2e19)]  # a BLAS dot and a powsum
    expected = 70_000 * 1e40 + 3 * 4e38
    cpu = torch.device("cpu")
    assert host_sum_of_squares(big, cpu) == pytest.approx(expected, rel=1e-6)
    assert float(sum_of_squares(big, cpu)) == pytest.approx(expected, rel=1e-6)


def test_a_float32_gradient_beyond_1e19_is_a_normal_step():
    """|∇F|² = 1.6e39 > float32's largest value: the step is taken, not reported non-finite."""
    p = torch.nn.Parameter(torch.full((4,), 0.1))
    opt = BBI([p], lr=1e-12, seed=0)
    for _ in range(10):
        opt.zero_grad()
        loss = 1e20 * (p * p).sum() + 1e21
        loss.backward()
        opt.step(loss=loss)
    diag = opt.diagnostics()
    assert diag["skipped"] == 0 and diag["steps"] == 10
    assert all(math.isfinite(v) for v in diag.values())
    assert diag["momentum_sq"] > 1e10 and torch.isfinite(p).all()


@pytest.mark.parametrize(
    ("dtype", "kwargs", "losses"),
    [
        (torch.float32, {}, [5.0, 1e-39, 4.9]),  # a denormal batch loss
        (torch.float32, {}, [1e20, 1e-39, 1e20]),
        (torch.float32, {"lr": 1e30}, [5.0, 4.0, 3.0]),
        (torch.float64, {"stop_tol": 0.0}, [5.0, 5e-324, 4.9]),
        (torch.float64, {"extra_energy": 1e100, "stop_tol": 0.0}, [5.0, 1e-300, 4.0]),
        (torch.float16, {"lr": 1e4}, [5.0, 4.0]),
    ],
)
@pytest.mark.parametrize("cls", [BBI, ECDSep, UnitSpeedECD])
@pytest.mark.parametrize("sync_free", [False, True])
def test_nothing_non_finite_is_written(dtype, kwargs, losses, cls, sync_free):
    """Each case of the hardening list ends finite: the overflowing steps are refused and
    counted in ``skipped``, never written."""
    if cls is UnitSpeedECD:
        kwargs = {k: v for k, v in kwargs.items() if k != "extra_energy"}
    p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=dtype))
    opt = cls([p], **{"lr": 1e-2, "seed": 0, "sync_free": sync_free, **kwargs})
    diag = _quiet_steps(opt, p, losses)
    assert diag["steps"] + diag["skipped"] == len(losses)
    if diag["steps"]:  # (before the first step E and Π² are not defined yet: nan)
        assert math.isfinite(diag["energy"]) and math.isfinite(diag["momentum_sq"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extra_energy": 1e300}, "extra_energy must be a finite number >= 0 and at most 1e"),
        ({"weight_decay": 1e300}, "weight_decay must be"),
        ({"lr": 1e300}, "lr must be"),
        ({"extra_energy": 1e200}, "extra_energy must be"),
        ({"loss_floor": -1e300}, "loss_floor must be"),
    ],
)
def test_hyperparameters_beyond_the_limit_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BBI([torch.nn.Parameter(torch.zeros(2))], **{"lr": 0.1, **kwargs})


def test_a_nan_momentum_cannot_be_loaded_and_steps_go_on_after_a_nan_batch():
    p, opt = _trained(steps=3)
    diag = _quiet_steps(opt, p, [math.nan, 4.0, 3.0])
    assert diag["skipped"] == 1 and diag["steps"] == 5


# ------------------------------------------------------------------ torch conventions
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_a_one_element_lr_tensor_of_any_shape(shape):
    ends = []
    for lr in (0.01, torch.full(shape, 0.01, dtype=F64)):
        p = torch.nn.Parameter(torch.tensor(1.5, dtype=F64))  # a 0-dim parameter
        opt = BBI([p], lr=lr, seed=0)
        ends.append(_steps(opt, p, lambda x: x * x + 1.0, 10)[-1])
    assert torch.equal(ends[0], ends[1])


def test_a_multi_element_lr_tensor_is_refused_with_torchs_words():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        BBI([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor([0.1, 0.2]))


def test_lr_from_the_param_groups():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = BBI([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.02}])
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]
    with pytest.raises(ValueError, match="lr must be given"):
        BBI([{"params": [a], "lr": 0.01}, {"params": [b]}])


def test_torch_manual_seed_governs_an_unseeded_optimizer():
    ends = []
    for _ in range(2):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
        opt = BBI([p], lr=0.01, bounce_period=1, n_bounces=3, extra_energy=0.5)
        ends.append(_steps(opt, p, lambda x: (x * x).sum() + 1.0, 5)[-1])
        assert opt.state_dict()["ecd"]["seed"] == opt.seed
    assert torch.equal(ends[0], ends[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conserve_energy": "no"}, "conserve_energy must be True or False"),
        ({"adapt_floor": "no"}, "adapt_floor must be True or False"),
        ({"bounce_period": True}, "bounce_period must be an int >= 1 or None"),
        ({"n_bounces": True}, "n_bounces must be an int >= 0"),
        ({"bounce_period": 1.5}, "bounce_period must be an int"),
        ({"reduce_loss": "x"}, "reduce_loss must be True, False or None"),
        ({"sync_free": 1}, "sync_free must be True, False or None"),
        ({"capturable": None}, "capturable must be True or False"),
        ({"seed": 2**63}, "seed must be an int with 0 <= seed < 2"),
        ({"seed": 1.0}, "seed must be an int"),
        ({"off_shell": "clip"}, "off_shell must be one of 'rescale', 'exact'"),
    ],
)
def test_types_are_strict(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ECD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, **kwargs)


def test_presets_fix_their_hamiltonian_and_show_their_defaults():
    import inspect

    with pytest.raises(TypeError, match="BBI fixes hamiltonian"):
        BBI([torch.nn.Parameter(torch.zeros(2))], lr=0.1, hamiltonian="separable")
    with pytest.raises(TypeError, match="unexpected keyword arguments: learning_rate"):
        ECDSep([torch.nn.Parameter(torch.zeros(2))], learning_rate=0.1)
    assert inspect.signature(ECDSep).parameters["chaos"].default == 1e-5
    assert "hamiltonian" not in inspect.signature(UnitSpeedECD).parameters


def test_compiling_step_runs_it_eagerly_with_the_same_result():
    ends = []
    for compiled in (False, True):
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
        opt = BBI([p], lr=0.01, seed=0, bounce_period=5, n_bounces=3)
        step = torch.compile(opt.step) if compiled else opt.step
        for _ in range(12):
            opt.zero_grad()
            loss = (p * p).sum() + 1.0
            loss.backward()
            step(loss=loss)
        ends.append(p.detach().clone())
    assert torch.equal(ends[0], ends[1])
