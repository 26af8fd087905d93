"""The PDE loop that replays one CUDA graph per iteration (``train_run(..., cuda_graph=True)``,
``ecdopt pde train --cuda-graph``): its CPU-runnable logic. Off CUDA the same loop runs eagerly
— fixed point buffers refilled in place, a capturable optimizer with the counter generator —
and must be the ordinary loop with those optimizer settings, bounces included; on CUDA (when
present) the captured replay must train and bounce."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ecdopt import BBI
from ecdopt.experiments.pde import (
    PRESETS,
    GraphedIteration,
    find_radial_solutions,
    graph_settings,
    smoke_preset,
    train_run,
)

ROOT = Path(__file__).resolve().parents[1]
BOUNCY = {"bounce_period": 3, "n_bounces": 20, "bounce_patience": 4, "extra_energy": 2.0}


@pytest.fixture(scope="module")
def small():
    preset = replace(smoke_preset(PRESETS["small"]), resample_every=4)
    return preset, find_radial_solutions(preset.problem, n_grid=preset.n_grid)


def test_graph_loop_is_the_eager_loop_with_capturable_settings(small):
    preset, solutions = small
    common = {"seed": 2, "iterations": 30, "dtype": torch.float64}
    graphed = train_run(preset, "bbi", solutions, cuda_graph=True, overrides=BOUNCY, **common)
    eager = train_run(
        preset, "bbi", solutions, overrides={**BOUNCY, "capturable": True, "rng": "counter"},
        **common,
    )  # fmt: skip
    plain = train_run(preset, "bbi", solutions, overrides=BOUNCY, **common)
    assert np.array_equal(graphed.loss_values, eager.loss_values)
    assert graphed.errors == eager.errors and graphed.final_loss == eager.final_loss
    assert not np.array_equal(graphed.loss_values, plain.loss_values)  # other draws (rng)


def test_graph_settings_make_ecd_capturable_with_the_counter_generator():
    assert graph_settings("bbi", {"lr": 1.0}) == {"lr": 1.0, "capturable": True, "rng": "counter"}
    assert graph_settings("adam", {"lr": 1.0}) == {"lr": 1.0, "capturable": True}
    assert graph_settings("sgdm", {"lr": 1.0}) == {"lr": 1.0}


def _iteration_setup(device: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.to(device)
    x = torch.randn(64, 2, device=device)
    y = (x**2).sum(1, keepdim=True)
    opt = BBI(model.parameters(), lr=0.01, seed=1, **BOUNCY, **graph_settings("bbi", {}))
    return model, opt, x, y


def test_graphed_iteration_off_cuda_is_the_closure_loop():
    model, opt, x, y = _iteration_setup("cpu")
    iteration = GraphedIteration(
        opt, list(model.parameters()), lambda: ((model(x) - y) ** 2).mean() + 0.1, x.device
    )
    twin, twin_opt, _, _ = _iteration_setup("cpu")
    for _ in range(25):
        loss = iteration()

        def closure():
            twin_opt.zero_grad()
            value = ((twin(x) - y) ** 2).mean() + 0.1
            value.backward()
            return value

        assert float(twin_opt.step(closure).detach()) == float(loss)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.diagnostics()["bounces"] >= 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_train_and_bounce():
    model, opt, x, y = _iteration_setup("cuda")
    iteration = GraphedIteration(
        opt, list(model.parameters()), lambda: ((model(x) - y) ** 2).mean() + 0.1, x.device
    )
    first = float(iteration())
    for _ in range(40):
        last = iteration()
    assert iteration.graph is not None
    assert float(last) < first and opt.diagnostics()["bounces"] >= 8


def test_cli_cuda_graph_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the error is for machines without CUDA")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from ecdopt.cli import main; sys.exit(main())", "pde",
         "train", "--device", "cpu", "--cuda-graph", "--smoke", "--json", str(tmp_path / "x.json"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "ecdopt pde train: error: --cuda-graph needs a CUDA device (--device cuda)"
    )
    assert not (tmp_path / "x.json").exists()
