"""The counter-based generator (``rng="counter"``): its integers against a literal splitmix64,
the statistics of its normals and uniforms and the isotropy of its directions, and the paths it
opens: ``capturable=True`` with bounces and rotations (the same trajectory as the host path),
the literal Algorithm 1 with the same draws, and ensembles drawn in one vectorised call that
equal the optimizer particle by particle."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from ecdopt import BBI, ECD, ECDSep, UnitSpeedECD, chaos, reference
from ecdopt.ensemble import simulate

F64 = torch.float64
MASK = (1 << 64) - 1


def _splitmix64(key: int, index: int) -> int:
    """The literal splitmix64 output at ``index`` of the stream seeded ``key`` (Python ints)."""
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


# ----------------------------------------------------------------- the integers
def test_bits_are_splitmix64_and_keys_are_keyed_seed():
    rnd = random.Random(0)
    for _ in range(100):
        seed, step, stream = rnd.randrange(2**63), rnd.randrange(2**40), rnd.randrange(4)
        key = chaos.keyed_seed(seed, step, stream)
        as_tensor = chaos.counter_key(torch.tensor(chaos._signed(seed)), torch.tensor(step), stream)
        assert int(as_tensor) == key == chaos.counter_key(seed, step, stream)
        assert int(chaos.counter_key(seed, torch.tensor(step), stream)) == key
        index = torch.tensor([0, 1, 7, 2**20 + 3, 2**40 + 11])
        bits = chaos.counter_bits(key, index).tolist()
        assert [b & MASK for b in bits] == [_splitmix64(key, i) for i in index.tolist()]
        key_tensor = torch.tensor(chaos._signed(key))
        assert torch.equal(chaos.counter_bits(key_tensor, index), chaos.counter_bits(key, index))


def test_draw_is_one_stream_over_the_particle_whatever_its_tensors():
    """Element i of the tensors flattened in order (row-major over each shape, whatever the
    memory layout) is index i: splitting, chunking or a layout never changes a number."""
    key = chaos.keyed_seed(3, 5, chaos.STREAM_BOUNCE)
    whole = chaos.counter_draw([torch.empty(200_037, dtype=F64)], key=key, kind="gaussian")[0]
    parts = [torch.empty(70_000, dtype=F64), torch.empty(30, 1000, dtype=F64).t(), torch.empty(7)]
    drawn = chaos.counter_draw(parts, key=key, kind="gaussian")
    assert torch.equal(drawn[0], whole[:70_000])
    assert torch.equal(drawn[1], whole[70_000:100_000].view(1000, 30))
    assert torch.equal(drawn[2], whole[100_000:100_007].float())
    into = [torch.empty_like(p) for p in parts]  # a transposed buffer: drawn in logical order
    assert not into[1].is_contiguous()
    redrawn = chaos.counter_draw(parts, key=key, kind="gaussian", out=into)
    for a, b in zip(redrawn, drawn, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_the_cpu_integers_and_floats_to_rounding():
    key = chaos.keyed_seed(11, 2, chaos.STREAM_ROTATION)
    index = torch.arange(1 << 20)
    assert torch.equal(chaos.counter_bits(key, index.cuda()).cpu(), chaos.counter_bits(key, index))
    for dtype in (torch.float32, F64):
        cpu = chaos.counter_draw([torch.empty(1 << 20, dtype=dtype)], key=key, kind="gaussian")[0]
        gpu = chaos.counter_draw(
            [torch.empty(1 << 20, dtype=dtype, device="cuda")], key=key, kind="gaussian"
        )[0]
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=4 * torch.finfo(dtype).eps, atol=0)


# ----------------------------------------------------------------- statistics
def _ks_distance(sample: torch.Tensor, cdf) -> float:
    x = sample.double().sort().values
    n = x.numel()
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=F64) / n - f
    lower = f - torch.arange(0, n, dtype=F64) / n
    return float(torch.maximum(upper, lower).max())


def test_normals_have_the_moments_and_distribution_of_n01():
    n = 1 << 21
    x = chaos.counter_draw([torch.empty(n, dtype=F64)], key=12345, kind="gaussian")[0]
    se = 1 / math.sqrt(n)
    assert abs(float(x.mean())) < 5 * se
    assert abs(float(x.var()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((x**3).mean())) < 5 * math.sqrt(15) * se  # skewness 0
    assert abs(float((x**4).mean()) - 3) < 5 * math.sqrt(96) * se  # kurtosis 3
    normal_cdf = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731
    assert _ks_distance(x, normal_cdf) < 1.95 / math.sqrt(n)  # KS at the 0.1% level
    lag = float((x[1:] * x[:-1]).mean())  # neighbouring indices are independent
    assert abs(lag) < 5 * se


def test_uniforms_are_uniform_on_the_authors_cube():
    n = 1 << 20
    x = chaos.counter_draw([torch.empty(n, dtype=F64)], key=777, kind="uniform")[0]
    assert float(x.min()) >= -0.5 and float(x.max()) < 0.5
    assert abs(float(x.mean())) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(x.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    assert _ks_distance(x, lambda t: t + 0.5) < 1.95 / math.sqrt(n)


def test_directions_are_isotropic_and_draws_of_other_keys_independent():
    """ξ/|ξ| in 3-D over 20,000 keys: mean 0 and second moment I/3 (isotropy); in 1000-D the
    cosine between the directions of consecutive steps is N(0, 1/d) (independent draws)."""
    m = 20_000
    seeds = torch.arange(m, dtype=torch.int64)
    keys = chaos.counter_key(seeds, torch.zeros(m, dtype=torch.int64), chaos.STREAM_BOUNCE)
    bits = chaos.counter_bits(keys[:, None], torch.arange(3)[None, :])
    u = chaos._counter_values(bits, "gaussian")
    u = u / u.norm(dim=1, keepdim=True)
    assert float(u.mean(0).abs().max()) < 5 * math.sqrt(1 / 3 / m)
    second = u.T @ u / m
    torch.testing.assert_close(second, torch.eye(3, dtype=F64) / 3, rtol=0, atol=1.5 / math.sqrt(m))
    d, steps = 1000, 400
    keys = chaos.counter_key(7, torch.arange(steps), chaos.STREAM_ROTATION)[:, None]
    xi = chaos._counter_values(chaos.counter_bits(keys, torch.arange(d)[None, :]), "gaussian")
    xi = xi / xi.norm(dim=1, keepdim=True)
    cos = (xi[1:] * xi[:-1]).sum(1)
    assert abs(float(cos.mean())) < 5 / math.sqrt(d * steps)
    assert abs(float(cos.var()) * d - 1) < 0.25


# ----------------------------------------------------------------- the paths it opens
def _loss(x: torch.Tensor, step: int) -> torch.Tensor:
    noise = 0.05 * math.sin(0.7 * step)
    return (x**2).sum() + 0.3 * torch.sin(3 * x).sum() + 2.0 + noise + 0.01 * (x**4).sum()


def _trajectory(opt, x, steps):
    out = []
    for k in range(steps):
        opt.zero_grad()
        loss = _loss(x, k)
        loss.backward()
        opt.step(loss=loss)
        out.append(x.detach().clone())
    return out


CAPTURABLE_CASES = {
    "bbi_bounces": (
        BBI,
        {"extra_energy": 1.0, "bounce_period": 6, "n_bounces": 4, "bounce_patience": 5},
    ),
    "bbi_uniform": (
        BBI,
        {"bounce_period": 3, "n_bounces": 9, "bounce_patience": 7, "bounce_direction": "uniform"},
    ),
    "ecdsep_rotation": (ECDSep, {"chaos": 0.05, "loss_power": 1.5, "extra_energy": 0.5}),
    "ecdsep_rotation_every_3": (ECDSep, {"chaos": 0.05, "rotation_every": 3}),
    "unit_speed_rotation_bounces": (
        UnitSpeedECD,
        {"chaos": 0.2, "loss_power": 2.0, "bounce_period": 7, "n_bounces": 4},
    ),
}


@pytest.mark.parametrize("name", sorted(CAPTURABLE_CASES))
def test_capturable_with_bounces_and_rotations_matches_the_host_path(name):
    """``capturable=True`` (every decision a mask, ξ keyed by a device step counter, drawn every
    step and applied by mask) follows the host path's trajectory with the same draws."""
    cls, kwargs = CAPTURABLE_CASES[name]
    runs, diags = [], []
    for capturable in (False, True):
        x = torch.nn.Parameter(torch.linspace(-1.5, 2.0, 6, dtype=F64))
        opt = cls([x], lr=2e-2, seed=5, rng="counter", capturable=capturable, **kwargs)
        runs.append(_trajectory(opt, x, 90))
        diags.append(opt.diagnostics())
        if capturable:
            assert isinstance(opt._ecd["calls"], torch.Tensor)  # the device step counter
    for k, (a, b) in enumerate(zip(*runs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"step {k}")
    for key in ("energy", "momentum_sq", "steps", "bounces"):
        assert diags[0][key] == pytest.approx(diags[1][key], rel=1e-12), key
    if "bounce_period" in kwargs:
        assert diags[0]["bounces"] >= 4


def test_capturable_state_dict_resumes_bit_exact():
    x = torch.nn.Parameter(torch.linspace(-1.5, 2.0, 6, dtype=F64))
    kwargs = {"bounce_period": 4, "n_bounces": 9, "seed": 2, "rng": "counter", "capturable": True}
    opt = BBI([x], lr=2e-2, **kwargs)
    _trajectory(opt, x, 13)
    saved, theta = copy.deepcopy(opt.state_dict()), x.detach().clone()  # as torch.save does
    straight = _trajectory(opt, x, 20)
    y = torch.nn.Parameter(theta)
    again = BBI([y], lr=2e-2, **kwargs)
    again.load_state_dict(saved)
    for a, b in zip(straight, _trajectory(again, y, 20), strict=True):
        assert torch.equal(a, b)


def test_host_path_with_counter_draws_is_the_literal_algorithm(monkeypatch):
    """The literal Algorithm 1, given the counter generator's ξ, is the optimizer with
    ``rng="counter"`` step for step (bounces of both kinds, float64)."""

    def counter_xi(self, like, stream, kind):
        key = chaos.keyed_seed(self.o["seed"], len(self.result.thetas), stream)
        return chaos.counter_draw(like, key=key, kind=kind)

    monkeypatch.setattr(reference._Literal, "xi", counter_xi)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=gen, dtype=F64)
    hessian = a @ a.T / 5 + 0.5 * torch.eye(5, dtype=F64)

    def loss_fn(params):
        x = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * x @ hessian @ x + 0.05 * (x**4).sum() + 0.3

    x0 = torch.randn(5, generator=gen, dtype=F64)
    params = [torch.nn.Parameter(x0[:2].clone()), torch.nn.Parameter(x0[2:].clone())]
    opt = BBI(params, lr=1e-2, extra_energy=0.5, bounce_period=7, n_bounces=3,
              bounce_patience=11, seed=7, rng="counter")  # fmt: skip
    fast = []
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        opt.step(loss=loss)
        fast.append(torch.cat([p.detach().reshape(-1) for p in params]))
    groups = [{"params": [x0[:2].clone(), x0[2:].clone()], "lr": 1e-2}]
    ref = reference.algorithm1(loss_fn, groups, 200, T0=7, N_b=3, T1=11, delta_E=0.5, seed=7)
    for k, (u, v) in enumerate(zip(fast, ref.thetas, strict=True)):
        torch.testing.assert_close(u, torch.cat(v), rtol=1e-9, atol=1e-11, msg=f"step {k}")
    assert opt.diagnostics()["bounces"] == ref.bounces >= 3


def _landscape(t: torch.Tensor) -> torch.Tensor:
    x, y = t[..., 0], t[..., 1]
    return 0.5 * x * x + y * y + 0.3 * torch.sin(3.0 * x) * torch.cos(2.0 * y) + 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hamiltonian": "born_infeld", "extra_energy": 0.5, "bounce_period": 13, "n_bounces": 9,
         "bounce_patience": 17},
        {"hamiltonian": "separable", "chaos": 0.05, "bounce_period": None,
         "bounce_patience": None},
        {"hamiltonian": "separable", "chaos": 0.05, "rotation_every": 4, "bounce_period": None,
         "bounce_patience": None},
    ],
    ids=["bbi_bounces", "ecdsep_rotation", "ecdsep_rotation_every_4"],
)  # fmt: skip
def test_vectorised_ensemble_is_the_optimizer_with_the_same_rng(kwargs):
    m, steps = 8, 400
    theta0 = (torch.rand(m, 2, generator=torch.Generator().manual_seed(2), dtype=F64) - 0.5) * 3
    seeds = list(range(40, 40 + m))
    result = simulate(_landscape, theta0, steps, lr=0.02, seeds=seeds, rng="counter",
                      record_every=1, **kwargs)  # fmt: skip
    for i in range(m):
        p = torch.nn.Parameter(theta0[i].clone())
        opt = ECD([p], lr=0.02, seed=seeds[i], rng="counter", **kwargs)
        out = []
        for _ in range(steps):
            opt.zero_grad()
            loss = _landscape(p)
            loss.backward()
            opt.step(loss=loss)
            out.append(p.detach().clone())
        torch.testing.assert_close(
            torch.stack(out), result.history_theta[1:, i], rtol=0, atol=1e-12
        )
        assert opt.diagnostics()["bounces"] == int(result.bounces[i])


# ----------------------------------------------------------------- arguments and states
def test_rng_is_checked_and_capturable_randomness_needs_the_counter_generator():
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rng must be one of 'torch', 'counter'"):
        BBI([x], lr=1e-2, rng="philox")
    with pytest.raises(ValueError, match="rng='counter'"):
        ECDSep([x], lr=1e-2, capturable=True)
    with pytest.raises(ValueError, match="rng must be one of"):
        simulate(_landscape, torch.zeros(2, 2), 3, lr=0.1, rng=None)
    assert BBI([x], lr=1e-2, capturable=True, rng="counter").sync_free is True


def test_a_state_of_the_other_generator_is_refused_and_old_states_load():
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4, dtype=F64))
    opt = BBI([x], lr=1e-2, bounce_period=3, n_bounces=2, seed=1, rng="counter")
    _trajectory(opt, x, 5)
    saved = opt.state_dict()
    with pytest.raises(ValueError, match=r"saved with rng='counter'.*pass rng='counter'"):
        BBI([x], lr=1e-2, bounce_period=3, n_bounces=2).load_state_dict(saved)
    old = BBI([x], lr=1e-2, bounce_period=3, n_bounces=2, seed=1)
    _trajectory(old, x, 5)
    legacy = old.state_dict()
    del legacy["ecd"]["config"]["rng"]  # a state saved before the option existed
    BBI([x], lr=1e-2, bounce_period=3, n_bounces=2).load_state_dict(legacy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_bounces():
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 64, device="cuda"))
    opt = BBI([x], lr=1e-2, bounce_period=5, n_bounces=100, bounce_patience=None,
              capturable=True, rng="counter", seed=0)  # fmt: skip
    static_loss = torch.zeros((), device="cuda")

    def compute():
        opt.zero_grad(set_to_none=False)
        loss = (x**2).sum() + 1.0
        loss.backward()
        static_loss.copy_(loss.detach())
        opt.step(loss=static_loss)

    compute()  # the first step initialises E and Π on the host
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            compute()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        compute()
    for _ in range(40):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(x).all() and opt.diagnostics()["bounces"] >= 8


@pytest.mark.parametrize("name", ["bbi_bounces", "ecdsep_rotation_every_3"])
def test_capturable_steps_with_draws_read_nothing_on_the_host(name, monkeypatch):
    """What a CUDA graph needs: after the first step, a capturable step with bounces or
    rotations reads no device value on the host (keys, masks and draws stay on the device)."""
    cls, kwargs = CAPTURABLE_CASES[name]
    x = torch.nn.Parameter(torch.linspace(-1.5, 2.0, 6, dtype=F64))
    opt = cls([x], lr=2e-2, seed=5, rng="counter", capturable=True, **kwargs)
    _trajectory(opt, x, 2)
    reads = []

    def recorder(method):
        original = getattr(torch.Tensor, method)

        def wrapped(self, *args, **kw):
            reads.append(method)
            return original(self, *args, **kw)

        return wrapped

    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, recorder(method))
    for k in range(12):
        opt.zero_grad()
        loss = _loss(x, k)
        loss.backward()
        reads.clear()
        opt.step(loss=loss)
        assert reads == [], f"host reads in step {k}: {reads}"
    monkeypatch.undo()
    assert opt.diagnostics()["bounces"] >= (2 if "bounce_period" in kwargs else 0)


@pytest.mark.parametrize("name", ["bbi_bounces", "ecdsep_rotation"])
def test_capturable_steps_build_no_tensor_from_host_numbers(name, monkeypatch):
    """On a GPU a tensor made from a Python number is a host-to-device copy, which a CUDA graph
    cannot capture: after the first step, a capturable step makes none (constants are filled on
    the device). Floor adaptation and η ≠ 1 take the scalar helpers' every branch."""
    cls, kwargs = CAPTURABLE_CASES[name]
    x = torch.nn.Parameter(torch.linspace(-1.5, 2.0, 6, dtype=F64))
    extra = {"loss_power": 1.5, "adapt_floor": True, "loss_floor": 2.5}
    opt = cls([x], lr=2e-2, seed=5, rng="counter", capturable=True, **{**kwargs, **extra})
    _trajectory(opt, x, 2)
    made = []
    for factory in ("as_tensor", "tensor"):
        original = getattr(torch, factory)

        def recording(data, *args, _original=original, **kw):
            if not isinstance(data, torch.Tensor):
                made.append(data)
            return _original(data, *args, **kw)

        monkeypatch.setattr(torch, factory, recording)
    _trajectory(opt, x, 12)
    monkeypatch.undo()
    assert made == []
    assert opt.diagnostics()["steps"] == 14
