"""``fused=True``: the torch.compile-d kick/drift gives the eager trajectory (float64)."""

from __future__ import annotations

import pytest
import torch

from ecdopt import BBI, ECD, ECDSep

F64 = torch.float64

pytestmark = pytest.mark.xdist_group("compile")  # one worker compiles, the other runs the rest


def _run(opt, params, steps):
    out = []
    for k in range(steps):
        opt.zero_grad()
        x = torch.cat([p.reshape(-1) for p in params])
        loss = (x**2).sum() + 0.2 * torch.cos(3 * x).sum() + 1.5 + 0.01 * k % 3
        loss.backward()
        opt.step(loss=loss)
        out.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return out


CASES = [
    (BBI, {"extra_energy": 0.5, "bounce_period": 5, "n_bounces": 3, "bounce_patience": 7}),
    (ECDSep, {"chaos": 1e-3, "loss_power": 1.5}),
    (ECD, {"hamiltonian": "inverse_mass", "bounce_period": None, "bounce_patience": None}),
]


@pytest.mark.parametrize(("cls", "kwargs"), CASES, ids=["bbi", "ecdsep", "inverse_mass"])
@pytest.mark.parametrize("sync_free", [False, True])
def test_fused_matches_eager(cls, kwargs, sync_free):
    runs = []
    for fused in (False, True):
        torch.manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(4, dtype=F64)),
            torch.nn.Parameter(torch.randn(2, 3, dtype=F64)),
        ]
        groups = [
            {"params": [params[0]]},
            {"params": [params[1]], "lr": 5e-3, "weight_decay": 0.01},
        ]
        lr = 2e-3 if kwargs.get("hamiltonian") == "inverse_mass" else 1e-2
        opt = cls(groups, lr=lr, seed=3, fused=fused, sync_free=sync_free, **kwargs)
        runs.append(_run(opt, params, 60))
        if fused:
            assert opt.diagnostics()["steps"] == 60
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_fused_bfloat16_params_keep_float32_momentum():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1).to(torch.bfloat16)
    opt = BBI(model.parameters(), lr=0.05, fused=True, seed=0)
    x = torch.randn(32, 6, dtype=torch.bfloat16)
    y = x[:, :1] * 0.5
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).float(), y.float())
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(opt.state[p]["momentum"].dtype == torch.float32 for p in model.parameters())


def test_fused_must_be_a_bool():
    with pytest.raises(ValueError, match="fused must be True, False or None"):
        BBI([torch.nn.Parameter(torch.zeros(2))], lr=1e-2, fused="yes")
