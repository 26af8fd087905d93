"""The sync-free path (every decision a device mask), exercised on the CPU.

On CUDA it is the default; ``sync_free=True`` forces it on the CPU so its semantics can be tested
here: it must give the same trajectory as the host path (which reads values on the host, free on
the CPU) — bounces, progress bounces, floor adaptation, stops and skipped steps included — and it
must never read a device value during a step, except the counters the previous step sent ahead
(a non-blocking copy on CUDA, used only to avoid drawing ξ when no bounce can be due).
"""

from __future__ import annotations

import math

import pytest
import torch

from ecdopt import BBI, ECD, ECDSep, UnitSpeedECD, _state

F64 = torch.float64


def _loss_fn(x: torch.Tensor, step: int) -> torch.Tensor:
    """A noisy (minibatch-like) non-convex loss: the batch changes with the step."""
    noise = 0.05 * math.sin(0.7 * step)
    return (x**2).sum() + 0.3 * torch.sin(3 * x).sum() + 2.0 + noise + 0.01 * (x**4).sum()


def _trajectory(opt, x, steps, *, bad_steps=(), floor_trap=False):
    out = []
    for k in range(steps):
        opt.zero_grad()
        loss = _loss_fn(x, k)
        if floor_trap and k == steps // 2:
            loss = loss - 100.0  # far below the floor: V <= 0 for this batch
        loss.backward()
        if k in bad_steps:
            x.grad[0] = float("nan")
        opt.step(loss=loss)
        out.append(x.detach().clone())
    return out


CASES = {
    "bbi_bounces": (
        BBI,
        {"extra_energy": 1.0, "bounce_period": 6, "n_bounces": 4, "bounce_patience": 5},
    ),
    "bbi_uniform": (
        BBI,
        {"bounce_period": 3, "n_bounces": 9, "bounce_patience": 7, "bounce_direction": "uniform"},
    ),
    "adapt_floor": (
        BBI,
        {"loss_floor": 2.5, "adapt_floor": True, "bounce_patience": 9, "bounce_period": None},
    ),
    "stop_at_floor": (
        BBI,
        {"loss_floor": 1.0, "bounce_period": 4, "n_bounces": 2, "weight_decay": 0.01},
    ),
    "ecdsep": (ECDSep, {"chaos": 0.01, "loss_power": 1.5, "extra_energy": 0.5}),
    "unit_speed": (
        UnitSpeedECD,
        {"chaos": 0.2, "loss_power": 2.0, "bounce_period": 7, "n_bounces": 4, "weight_decay": 0.01},
    ),
    "inverse_mass": (
        ECD,
        {
            "hamiltonian": "inverse_mass",
            "bounce_period": 5,
            "n_bounces": 3,
            "bounce_patience": None,
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("foreach", [False, True])
def test_sync_free_matches_host_path(name, foreach):
    cls, kwargs = CASES[name]
    runs, diags = [], []
    for sync_free in (False, True):
        x = torch.nn.Parameter(torch.linspace(-1.5, 2.0, 6, dtype=F64))
        lr = 2e-3 if name == "inverse_mass" else 2e-2
        opt = cls([x], lr=lr, seed=5, foreach=foreach, sync_free=sync_free, **kwargs)
        with pytest.warns() if not sync_free else _no_warning():
            runs.append(_trajectory(opt, x, 120, bad_steps=(10, 11, 40), floor_trap=True))
        diags.append(opt.diagnostics())
    for k, (a, b) in enumerate(zip(*runs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"step {k}")
    assert diags[0]["skipped"] == diags[1]["skipped"] == 3
    for key in ("energy", "momentum_sq", "steps", "bounces", "loss_floor"):
        assert diags[0][key] == pytest.approx(diags[1][key], rel=1e-12), key
    if name in ("bbi_bounces", "bbi_uniform"):
        assert diags[0]["bounces"] >= 5  # the schedule really bounced, progress bounces too


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_skipped_step_changes_nothing_on_the_sync_free_path():
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
    opt = BBI([x], lr=1e-2, extra_energy=0.5, sync_free=True, seed=0)
    _trajectory(opt, x, 5)
    before = x.detach().clone()
    momentum = opt.state[x]["momentum"].clone()
    steps = opt.diagnostics()["steps"]
    opt.zero_grad()
    loss = _loss_fn(x, 0)
    loss.backward()
    x.grad[2] = float("inf")
    opt.step(loss=loss)
    assert torch.equal(before, x.detach())
    assert torch.equal(momentum, opt.state[x]["momentum"])
    assert opt.diagnostics()["steps"] == steps


def test_directions_are_drawn_only_when_a_bounce_is_due():
    """With the counters known on the host (always, on the CPU), ξ is drawn for bounces only."""
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
    opt = BBI([x], lr=2e-2, bounce_period=4, n_bounces=3, bounce_patience=6, sync_free=True, seed=1)
    draws = []
    original = opt._draw

    def counting_draw(*args, **kwargs):
        draws.append(args[1])
        return original(*args, **kwargs)

    opt._draw = counting_draw
    _trajectory(opt, x, 80)
    assert len(draws) == opt.diagnostics()["bounces"] >= 3


def test_late_counters_unknown_still_exact(monkeypatch):
    """A device that lags (counters not yet on the host) makes the step draw ξ every time and
    bounce by mask: same trajectory, only more draws. This is the CUDA fallback."""
    runs = []
    for lagging in (False, True):
        x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
        opt = BBI(
            [x], lr=2e-2, bounce_period=4, n_bounces=3, bounce_patience=6, sync_free=True, seed=1
        )
        if lagging:
            monkeypatch.setattr(_state, "known_counters", lambda opt: None)
        runs.append(_trajectory(opt, x, 80))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_no_host_reads_after_the_first_step(monkeypatch):
    """After the first step, the sync-free step reads no value of the particle on the host."""
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
    opt = BBI([x], lr=2e-2, bounce_period=4, n_bounces=3, bounce_patience=6, sync_free=True, seed=1)
    _trajectory(opt, x, 2)
    reads = []

    def recorder(name):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            late = opt._late_counters
            if late is None or self is not late[0]:
                reads.append(name)
            return original(self, *args, **kwargs)

        return wrapped

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, recorder(name))
    for k in range(30):
        opt.zero_grad()
        loss = _loss_fn(x, k)
        loss.backward()
        reads.clear()
        opt.step(loss=loss)
        assert reads == [], f"host reads in step {k}: {reads}"


def test_capturable_needs_bounce_free_dynamics():
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="capturable=True needs the bounce-free dynamics"):
        BBI([x], lr=1e-2, capturable=True)
    opt = BBI([x], lr=1e-2, capturable=True, bounce_period=None, bounce_patience=None)
    assert opt.sync_free is True


def test_capturable_matches_host_path_on_cpu():
    runs = []
    for capturable in (False, True):
        x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
        opt = BBI(
            [x],
            lr=2e-2,
            extra_energy=0.3,
            bounce_period=None,
            bounce_patience=None,
            capturable=capturable,
        )
        runs.append(_trajectory(opt, x, 50))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_replays_the_step():
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 64, device="cuda"))
    opt = BBI([x], lr=1e-2, bounce_period=None, bounce_patience=None, capturable=True)
    static_loss = torch.zeros((), device="cuda")

    def compute():
        opt.zero_grad(set_to_none=False)
        loss = (x**2).sum() + 1.0
        loss.backward()
        static_loss.copy_(loss.detach())
        opt.step(loss=static_loss)

    for _ in range(3):  # warm up on a side stream, as torch.cuda.graphs requires
        compute()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        compute()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(x).all() and float((x**2).sum()) < 64 * 0.34


def test_device_state_is_updated_in_place_for_cuda_graphs():
    """A captured step reads, on replay, the tensors it read at capture: the particle's values
    must be written into the same tensors every step (not rebound to new ones)."""
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
    opt = BBI(
        [x], lr=2e-2, extra_energy=0.3, bounce_period=None, bounce_patience=None, capturable=True
    )
    _trajectory(opt, x, 2)
    held = {k: opt._ecd[k] for k in ("momentum_sq", "potential", "c1", "steps", "best_objective")}
    before = {k: v.clone() for k, v in held.items()}
    _trajectory(opt, x, 3)
    for key, tensor in held.items():
        assert opt._ecd[key] is tensor, key
    assert int(held["steps"]) == int(before["steps"]) + 3
    assert not torch.equal(held["momentum_sq"], before["momentum_sq"])
