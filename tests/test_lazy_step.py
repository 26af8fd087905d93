"""The CPU host path's lazy momentum: Π = σ·P (the restoration α multiplies σ, not a pass over
P) and Π² after the kick summed with the next step's |∇F|². It is on for particles of at least
``SCALE_MIN_NUMEL`` parameters; here the threshold is lowered so that the literal Algorithm 1
and the other paths check it in float64 on small problems."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import ecdopt._kernels
import ecdopt._step
from ecdopt import BBI, ECDSep, UnitSpeedECD
from ecdopt.reference import algorithm1
from test_optimizer import IDS, OPTIMIZERS, _groups, _problem, _run, _split

F64 = torch.float64


@pytest.fixture(params=["deferred", "streamed"])
def lazy_small(monkeypatch, request):
    """σ for every particle, however small; Π² deferred to the next step, or summed tensor by
    tensor as in large models (the 3-element tensor streamed, the 2-element ones not)."""
    monkeypatch.setattr(ecdopt._step, "SCALE_MIN_NUMEL", 0)
    if request.param == "streamed":
        monkeypatch.setattr(ecdopt._kernels, "STREAM_MIN_NUMEL", 3)
    return request.param


@pytest.mark.parametrize("info", OPTIMIZERS, ids=IDS)
def test_lazy_path_matches_the_literal_algorithm(lazy_small, info):
    x0, loss_fn = _problem(1)
    params = [torch.nn.Parameter(t) for t in _split(x0)]
    opt = info.cls(_groups(params, info.lr, 0.02), lr=info.lr, **{**info.kwargs, "seed": 7})
    fast = _run(opt, params, loss_fn, 300)
    ref_kwargs = {"T0": None, "T1": None, "eta": opt.config.loss_power, **info.reference_kwargs}
    ref = algorithm1(loss_fn, _groups(_split(x0), info.lr, 0.02), 300, **ref_kwargs, seed=7)
    for k, (a, b) in enumerate(zip(fast, ref.thetas, strict=True)):
        expected = torch.cat([t.reshape(-1) for t in b])
        torch.testing.assert_close(a, expected, rtol=1e-9, atol=1e-11, msg=f"step {k}")
    if lazy_small == "deferred":  # (streamed, a second group's Δt folds σ: nothing left)
        assert opt._ecd["momentum_scale"] != 1.0 or opt._ecd["deferred"] is not None
    assert opt._particle_shape[1][3] is (lazy_small == "streamed")
    assert opt.diagnostics()["momentum_sq"] == pytest.approx(ref.momentum_sq[-1], rel=1e-9)


def _mlp(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 MLP above the threshold (20,801 parameters) and a regression batch."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 200), torch.nn.Tanh(), torch.nn.Linear(200, 80), torch.nn.Tanh(),
        torch.nn.Linear(80, 1),
    ).to(F64)  # fmt: skip
    x = torch.randn(64, 20, dtype=F64)
    return model, x, x[:, :1].sin() + 0.1 * x[:, 1:2]


def _train(model, opt, x, y, steps, *, every=None):
    out = []
    for k in range(steps):
        batch = slice(k % 4 * 16, k % 4 * 16 + 16)  # the loss changes every step

        def closure(batch=batch):
            opt.zero_grad()
            loss = ((model(x[batch]) - y[batch]) ** 2).mean() + 0.5
            loss.backward()
            return loss

        opt.step(closure)
        if every is not None:
            every(k)
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return out


@pytest.mark.parametrize("streamed", [False, True], ids=["foreach", "streamed"])
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (BBI, {"extra_energy": 0.5, "bounce_period": 9, "n_bounces": 4, "bounce_patience": 13}),
        (ECDSep, {"chaos": 0.01, "extra_energy": 0.5}),
        (ECDSep, {"chaos": 0.01, "rotation_every": 3}),
        (UnitSpeedECD, {"chaos": 0.05, "loss_power": 2.0, "bounce_period": 11, "n_bounces": 3}),
    ],
    ids=["bbi", "ecdsep", "ecdsep_every_3", "unit_speed"],
)
def test_a_model_above_the_threshold_follows_the_exact_path(cls, kwargs, streamed, monkeypatch):
    """The same model with σ (the default above the threshold; its large tensors streamed one
    by one or not) and without either: the same trajectory to rounding, bounces and rotations
    included."""
    runs = []
    for lazy in (True, False):
        monkeypatch.setattr(ecdopt._step, "SCALE_MIN_NUMEL", 1 << 14 if lazy else 10**9)
        monkeypatch.setattr(
            ecdopt._kernels, "STREAM_MIN_NUMEL", 1000 if streamed and lazy else 10**9
        )
        model, x, y = _mlp()
        opt = cls(model.parameters(), lr=0.02, seed=1, **kwargs)
        runs.append(_train(model, opt, x, y, 80))
        assert (opt._ecd["momentum_scale"] != 1.0) is lazy
        assert opt._particle_shape[1][3] is (streamed and lazy)
    for k, (a, b) in enumerate(zip(*runs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"step {k}")


def test_state_dict_holds_the_true_momentum_and_resumes_bit_exact():
    model, x, y = _mlp()
    opt = BBI(model.parameters(), lr=0.02, extra_energy=0.5, bounce_period=7, n_bounces=5, seed=3)
    _train(model, opt, x, y, 30)
    sigma = opt._ecd["momentum_scale"]
    assert sigma != 1.0 and opt._ecd["deferred"] == "momentum_sq"
    true_momenta = [sigma * opt.state[p]["momentum"] for p in model.parameters()]
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    for i, expected in enumerate(true_momenta):
        torch.testing.assert_close(
            saved["opt"]["state"][i]["momentum"], expected, rtol=1e-15, atol=0
        )
    assert opt._ecd["momentum_scale"] == 1.0  # folded: the optimizer holds Π itself now
    pi_sq = sum(float((m.double() ** 2).sum()) for m in true_momenta)
    assert saved["opt"]["ecd"]["momentum_sq"] == pytest.approx(pi_sq, rel=1e-12)
    assert "momentum_scale" not in saved["opt"]["ecd"]
    straight = _train(model, opt, x, y, 40)

    resumed_model, _, _ = _mlp(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = BBI(resumed_model.parameters(), lr=0.02, extra_energy=0.5, bounce_period=7,
                  n_bounces=5)  # fmt: skip
    resumed.load_state_dict(saved["opt"])
    for a, b in zip(straight, _train(resumed_model, resumed, x, y, 40), strict=True):
        assert torch.equal(a, b)
    assert resumed.diagnostics() == opt.diagnostics()


def test_reading_diagnostics_does_not_change_the_run():
    """diagnostics() sums the deferred Π² exactly as the next step would: logging every step
    leaves the trajectory bit-identical."""
    runs = []
    for log in (False, True):
        model, x, y = _mlp()
        opt = BBI(model.parameters(), lr=0.02, extra_energy=0.5, bounce_period=6, n_bounces=4,
                  seed=2)  # fmt: skip
        logged: list[dict] = []

        def record(k: int, opt=opt, logged=logged) -> None:
            logged.append(opt.diagnostics())

        runs.append(_train(model, opt, x, y, 50, every=record if log else None))
        assert all(d["momentum_sq"] > 0 for d in logged)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_copies_and_pickles_continue_as_the_original():
    model, x, y = _mlp()
    opt = ECDSep(model.parameters(), lr=0.02, chaos=0.01, seed=6)
    _train(model, opt, x, y, 12)
    model2, opt2 = copy.deepcopy((model, opt))
    for a, b in zip(_train(model, opt, x, y, 20), _train(model2, opt2, x, y, 20), strict=True):
        assert torch.equal(a, b)
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.diagnostics() == opt.diagnostics()


def test_a_parameter_that_skips_steps_keeps_its_own_momentum(monkeypatch):
    """σ belongs to the parameters of the last step: when one has no gradient at a step, σ is
    folded into the momenta first, so its Π is not rescaled by the others' restoration."""
    runs = []
    for threshold in (ecdopt._step.SCALE_MIN_NUMEL, 10**9):
        monkeypatch.setattr(ecdopt._step, "SCALE_MIN_NUMEL", threshold)
        model, x, y = _mlp()
        first = model[0].weight
        opt = BBI(model.parameters(), lr=0.02, extra_energy=0.5, bounce_period=None, seed=1)

        def drop_a_gradient(k: int, first=first) -> None:
            if k % 5 == 3:
                first.grad = None

        out = []
        for k in range(40):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean() + 0.5 + 0.01 * (k % 3)
            loss.backward()
            drop_a_gradient(k)
            opt.step(loss=loss)
            out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        runs.append(out)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sigma_stays_within_its_range_when_the_loss_jumps():
    model, x, y = _mlp()
    opt = BBI(model.parameters(), lr=0.02, extra_energy=0.01, bounce_period=None, seed=1)
    low, high = ecdopt._step.SCALE_RANGE
    for k in range(60):
        opt.zero_grad()
        scale = 100.0 if k % 10 == 5 else 1.0  # a batch whose loss is 100 times larger
        loss = scale * ((model(x) - y) ** 2).mean() + 0.5
        loss.backward()
        opt.step(loss=loss)
        assert low <= opt._ecd["momentum_scale"] <= high
        assert all(torch.isfinite(opt.state[p]["momentum"]).all() for p in model.parameters())
    assert opt.diagnostics()["steps"] == 60


def test_step_hooks_and_the_profiler_still_see_the_step():
    model, x, y = _mlp()
    opt = BBI(model.parameters(), lr=0.02)
    calls = []
    opt.register_step_pre_hook(lambda *args: calls.append("pre"))
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    _train(model, opt, x, y, 2)
    assert calls == ["pre", "post", "pre", "post"]
    other = BBI(model.parameters(), lr=0.02)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _train(model, other, x, y, 1)
    assert any("Optimizer.step#BBI.step" in e.name for e in prof.events())
