"""Hardening: fuzzed hyperparameters and problems, bad gradients, odd losses, checkpoints.

The promise (docs/reliability.md): no NaN/Inf is ever written to a parameter or to Π, the energy
H(V, Π) = E holds after every restoration, and a checkpoint continues bit-for-bit in a new
process (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

from ecdopt import BBI, ECD, ECDSep, NonFiniteLossWarning
from ecdopt.hamiltonians import get_hamiltonian

F64 = torch.float64


def _quadratic(dim: int, log_eigs: list[float], seed: int):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    hess = q @ torch.diag(torch.tensor([10.0**e for e in log_eigs], dtype=F64)) @ q.T
    center = torch.randn(dim, generator=gen, dtype=F64)

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        d = theta - center
        return 0.5 * d @ hess @ d

    return loss_fn


def _rosenbrock(theta: torch.Tensor) -> torch.Tensor:
    x, y = theta[:-1], theta[1:]
    return (100.0 * (y - x * x) ** 2 + (1.0 - x) ** 2).sum()


optimizer_configs = st.one_of(
    st.builds(
        lambda **kw: ("born_infeld", kw),
        bounce_period=st.one_of(st.none(), st.integers(1, 15)),
        n_bounces=st.integers(0, 4),
        bounce_patience=st.one_of(st.none(), st.integers(1, 15)),
        bounce_direction=st.sampled_from(["gaussian", "uniform"]),
    ),
    st.builds(
        lambda **kw: ("inverse_mass", kw),
        bounce_period=st.one_of(st.none(), st.integers(1, 15)),
        n_bounces=st.integers(0, 4),
        chaos=st.sampled_from([0.0, 1e-3, 0.3]),
    ),
    st.builds(
        lambda **kw: ("separable", kw),
        chaos=st.sampled_from([0.0, 1e-5, 0.1]),
        kinetic_offset=st.floats(0.1, 10.0),
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(
    config=optimizer_configs,
    lr=st.floats(1e-4, 1.0),
    extra_energy=st.sampled_from([0.0, 1e-3, 0.5, 10.0]),
    loss_power=st.sampled_from([0.5, 1.0, 2.0]),
    weight_decay=st.sampled_from([0.0, 1e-2]),
    problem=st.sampled_from(["quadratic", "rosenbrock"]),
    dim=st.integers(1, 5),
    log_eigs=st.lists(st.floats(-3.0, 3.0), min_size=5, max_size=5),
    seed=st.integers(0, 2**16),
)
# cases found by earlier runs: BBI with Δt = 1, δE = 0, pushed off its shell
@example(("born_infeld", {"bounce_period": None, "n_bounces": 0, "bounce_patience": None}),
         1.0, 0.0, 1.0, 0.0, "rosenbrock", 1, [0.0] * 5, 125)  # fmt: skip
@example(("born_infeld", {"bounce_period": None, "n_bounces": 0, "bounce_patience": None}),
         1.0, 0.0, 1.0, 0.0, "quadratic", 1, [1.0] + [0.0] * 4, 0)  # fmt: skip
@example(("inverse_mass", {"bounce_period": None, "n_bounces": 0, "chaos": 0.0}),
         1.0, 0.0, 2.0, 0.0, "quadratic", 1, [0.0] * 5, 0)  # fmt: skip
def test_fuzz_no_nan_written_and_energy_restored(
    config, lr, extra_energy, loss_power, weight_decay, problem, dim, log_eigs, seed
):
    hamiltonian, kwargs = config
    gen = torch.Generator().manual_seed(seed)
    if problem == "quadratic":
        loss_fn = _quadratic(dim, log_eigs[:dim], seed)
        theta = nn.Parameter(torch.randn(dim, generator=gen, dtype=F64))
    else:
        loss_fn = _rosenbrock
        theta = nn.Parameter(torch.rand(max(dim, 2), generator=gen, dtype=F64) * 4 - 2)
    opt = ECD(
        [theta],
        lr=lr,
        hamiltonian=hamiltonian,
        extra_energy=extra_energy,
        loss_power=loss_power,
        weight_decay=weight_decay,
        loss_floor=-1e-3,  # below every loss here (they are >= 0)
        seed=seed,
        **kwargs,
    )
    ham = get_hamiltonian(hamiltonian, kinetic_offset=kwargs.get("kinetic_offset", 1.0))
    prev_pi2 = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLossWarning)
        for _ in range(40):
            before = opt.diagnostics()

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(theta)
                loss.backward()
                return loss

            opt.step(closure)
            d = opt.diagnostics()
            momentum = opt.state[theta]["momentum"]
            # never a NaN/Inf written, whatever the step did (a skipped step writes nothing)
            assert torch.isfinite(theta).all() and torch.isfinite(momentum).all()
            moved = d["steps"] > before["steps"]
            if moved and prev_pi2 is not None and d["rescale"] != 1.0:
                restored = float(ham.energy(d["potential"], d["rescale"] ** 2 * prev_pi2))
                tol = 1e-9 * max(1.0, abs(d["energy"]))
                assert abs(restored - d["energy"]) <= tol, (restored, d)
            if moved:
                prev_pi2 = d["momentum_sq"]
                assert math.isfinite(prev_pi2)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(
    hamiltonian=st.sampled_from(["born_infeld", "inverse_mass", "separable", "unit_speed"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    log_lr=st.floats(-12.0, 30.0),
    log_extra=st.one_of(st.just(None), st.floats(-3.0, 100.0)),
    log_decay=st.one_of(st.just(None), st.floats(-6.0, 100.0)),
    log_losses=st.lists(st.floats(-320.0, 38.0), min_size=2, max_size=8),
    scale=st.floats(-30.0, 30.0),
    stop_tol=st.sampled_from([0.0, 1e-40]),
    sync_free=st.booleans(),
)
def test_fuzz_extreme_numbers_never_write_non_finite_values(
    hamiltonian, dtype, log_lr, log_extra, log_decay, log_losses, scale, stop_tol, sync_free
):
    """Losses from denormal to 1e38 in any order, Δt up to 1e30, δE and λ up to 1e100, params
    up to 1e30, 16-bit to 64-bit: no exception, nothing non-finite written, finite scalars."""
    theta = nn.Parameter((torch.tensor([0.5, -1.0, 2.0]) * 10.0**scale).to(dtype))
    assume(bool(torch.isfinite(theta).all()))
    opt = ECD(
        [theta],
        lr=10.0**log_lr,
        hamiltonian=hamiltonian,
        extra_energy=0.0 if log_extra is None else 10.0**log_extra,
        weight_decay=0.0 if log_decay is None else 10.0**log_decay,
        stop_tol=stop_tol,
        loss_floor=-1e-300,  # below every loss (>= 0): V is never <= 0, can be denormal
        bounce_period=2,
        n_bounces=3,
        chaos=0.1,
        sync_free=sync_free,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLossWarning)
        for log_loss in log_losses:
            opt.zero_grad()
            value = 10.0**log_loss
            loss = value * (1.0 + (theta.float() / (1.0 + theta.float().abs())).square().sum())
            loss.backward()
            opt.step(loss=loss)
            assert torch.isfinite(theta).all()
            assert torch.isfinite(opt.state[theta]["momentum"]).all()
    d = opt.diagnostics()
    assert d["steps"] + d["skipped"] <= len(log_losses)
    if d["steps"]:
        assert math.isfinite(d["energy"]) and math.isfinite(d["momentum_sq"]), d


def test_potential_overflow_of_a_finite_loss_is_a_skipped_step():
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    opt = ECD([theta], lr=0.1, loss_power=2.0, bounce_period=None, bounce_patience=None)
    opt.zero_grad()
    (theta**2).sum().backward()
    opt.step(loss=torch.tensor(1.0, dtype=F64))
    before = theta.detach().clone()
    opt.zero_grad()
    (theta**2).sum().backward()
    with pytest.warns(NonFiniteLossWarning):
        opt.step(loss=torch.tensor(1e200, dtype=F64))  # finite, but V = 1e400 is not
    assert torch.equal(theta, before)
    assert opt.diagnostics()["skipped"] == 1


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_gradient_of_one_parameter_mid_run(sync_free, bad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)
    x = torch.randn(16, 3, dtype=F64)
    y = x.sum(1, keepdim=True)
    opt = BBI(
        model.parameters(), lr=0.05, bounce_period=4, n_bounces=3, seed=0, sync_free=sync_free
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    params = [p.detach().clone() for p in model.parameters()]
    momenta = [opt.state[p]["momentum"].clone() for p in model.parameters()]
    energy = opt.diagnostics()["energy"]
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    model[2].bias.grad.fill_(bad)  # one parameter's gradient only
    loss = ((model(x) - y) ** 2).mean().detach()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step(loss=loss)
    assert any(issubclass(w.category, NonFiniteLossWarning) for w in caught) is (not sync_free)
    for p, before in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, before)
    for p, before in zip(model.parameters(), momenta, strict=True):
        assert torch.equal(opt.state[p]["momentum"], before)
    assert opt.diagnostics()["skipped"] == 1
    for _ in range(20):  # and the run goes on, finite, at the same energy
        opt.step(closure)
    assert opt.diagnostics()["energy"] == energy
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.diagnostics()["steps"] == 25


@pytest.mark.parametrize("cls", [BBI, ECDSep])
def test_zero_gradient_at_the_start(cls):
    theta = nn.Parameter(torch.zeros(4, dtype=F64))  # the minimum of |θ|² + 1
    opt = cls([theta], lr=0.1, extra_energy=1.0, seed=3)
    for _ in range(30):

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (theta**2).sum() + 1.0
            loss.backward()
            return loss

        opt.step(closure)
    assert torch.isfinite(theta).all() and theta.abs().max() > 1e-3  # set off, not NaN
    d = opt.diagnostics()
    assert math.isfinite(d["momentum_sq"]) and d["steps"] == 30


def test_zero_gradient_and_no_extra_energy_stays_put_without_nan():
    theta = nn.Parameter(torch.zeros(3, dtype=F64))
    opt = BBI([theta], lr=0.1, seed=0)
    for _ in range(5):
        opt.zero_grad()
        loss = (theta**2).sum() + 2.0
        loss.backward()
        opt.step(loss=loss)
    assert torch.equal(theta, torch.zeros(3, dtype=F64))  # E = V0: no kinetic energy
    assert torch.isfinite(opt.state[theta]["momentum"]).all()


def test_loss_floor_above_the_loss():
    theta = nn.Parameter(torch.tensor([2.0, -1.0], dtype=F64))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((theta - 1.0) ** 2).sum() + 3.0  # minimum 3
        loss.backward()
        return loss

    opt = BBI([theta], lr=0.05, loss_floor=10.0)
    with pytest.raises(ValueError, match="loss_floor"):
        opt.step(closure)
    assert torch.equal(theta, torch.tensor([2.0, -1.0], dtype=F64))  # nothing written
    opt = BBI([theta], lr=0.05, loss_floor=10.0, adapt_floor=True, bounce_period=None)
    for _ in range(300):
        opt.step(closure)
    d = opt.diagnostics()
    final = float(closure().detach())
    assert 3.0 - 1e-9 <= d["loss_floor"] < 3.5 and final < 3.5  # the floor came down to the loss
    assert torch.isfinite(theta).all() and d["skipped"] == 0 and d["steps"] == 300


@pytest.mark.parametrize(
    ("cls", "decades"),
    [(ECDSep, 2.0), (ECDSep, 6.0), (BBI, 0.5), (BBI, 1.0)],
)
def test_loss_jumping_by_orders_of_magnitude_between_minibatches(cls, decades):
    """Batch losses scaled by 10**-decades, 1, 10**decades in turn (every 3 steps)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, dtype=F64))
    x = torch.randn(40, 5, dtype=F64)
    y = x @ torch.arange(5.0, dtype=F64)
    kwargs = {"bounce_period": 10, "n_bounces": 3} if cls is BBI else {}
    opt = cls([w], lr=0.01, extra_energy=1.0, seed=0, **kwargs)
    energies = set()
    for t in range(300):
        scale = 10.0 ** (decades * ((t // 3) % 3 - 1))
        rows = slice(t % 4 * 10, (t % 4 + 1) * 10)
        opt.zero_grad()
        loss = scale * ((x[rows] @ w - y[rows]) ** 2).mean()
        loss.backward()
        opt.step(loss=loss)
        energies.add(opt.diagnostics()["energy"])
        assert torch.isfinite(w).all() and torch.isfinite(opt.state[w]["momentum"]).all()
    d = opt.diagnostics()
    assert d["skipped"] == 0 and d["steps"] == 300 and len(energies) == 1
    full = ((x @ w - y) ** 2).mean().item()
    assert full < ((x @ torch.zeros(5, dtype=F64) - y) ** 2).mean().item()


def test_bbi_survives_a_1e12_jump_above_its_energy():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, dtype=F64))
    x = torch.randn(40, 5, dtype=F64)
    y = x @ torch.arange(5.0, dtype=F64)
    opt = BBI([w], lr=0.01, bounce_period=10, n_bounces=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLossWarning)
        for t in range(200):
            scale = 10.0 ** (6 * ((t // 3) % 3 - 1))
            rows = slice(t % 4 * 10, (t % 4 + 1) * 10)
            opt.zero_grad()
            loss = scale * ((x[rows] @ w - y[rows]) ** 2).mean()
            loss.backward()
            opt.step(loss=loss)
    d = opt.diagnostics()
    assert d["skipped"] == 0 and math.isfinite(d["momentum_sq"])
    assert w.abs().max() < 1e3


# ------------------------------------------------------------------ checkpoints
_PROBLEM = textwrap.dedent(
    """
    import torch
    from torch import nn
    from ecdopt import BBI, ECDSep

    def build(cls_name):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).to(torch.float64)
        if cls_name == "BBI":
            opt = BBI(model.parameters(), lr=0.05, extra_energy=0.3, bounce_period=3,
                      n_bounces=20, bounce_patience=5, seed=11)
        else:
            opt = ECDSep(model.parameters(), lr=0.05, extra_energy=0.3, chaos=0.05, seed=11)
        return model, opt

    def run(model, opt, start, stop):
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(200, 16, 3, generator=gen, dtype=torch.float64)
        for t in range(start, stop):
            def closure():
                opt.zero_grad()
                loss = ((model(x[t]) - x[t].sum(1, keepdim=True).sin()) ** 2).mean()
                loss.backward()
                return loss
            opt.step(closure)
    """
)
_RESUME = _PROBLEM + textwrap.dedent(
    """
    import sys
    torch.set_num_threads(1)
    cls_name, ckpt, out = sys.argv[1:4]
    model, opt = build(cls_name)
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    run(model, opt, state["t"], 60)
    torch.save({"params": [p.detach() for p in model.parameters()],
                "diag": opt.diagnostics()}, out)
    """
)


@pytest.mark.parametrize("cls_name", ["BBI", "ECDSep"])
def test_checkpoint_mid_run_resumes_bit_exact_in_a_new_process(cls_name, tmp_path: Path):
    namespace: dict = {}
    exec(_PROBLEM, namespace)  # the same code as the new process runs
    model, opt = namespace["build"](cls_name)
    namespace["run"](model, opt, 0, 25)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "t": 25}, ckpt)
    namespace["run"](model, opt, 25, 60)  # the uninterrupted run
    out = tmp_path / "resumed.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _RESUME, cls_name, str(ckpt), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(out, weights_only=True)
    for a, b in zip(resumed["params"], model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed["diag"] == opt.diagnostics()
    if cls_name == "BBI":
        assert opt.diagnostics()["bounces"] > 5  # bounces on both sides of the checkpoint
