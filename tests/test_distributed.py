"""Data-parallel (DDP) and sharded (FSDP2) training with ECD on real gloo process groups.

The tests launch this file as a script, once per rank (``python test_distributed.py worker
...``), on 127.0.0.1 with a free port. One launch runs every scenario in the same process group
(process start-up dominates the cost) and saves each rank's final parameters; the test process
compares them with each other and with a single-process full-batch run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ecdopt import BBI
from ecdopt.distributed import free_port, replica_divergence, shard_like, sum_of_squares

F64 = torch.float64
WORLD = 2
STEPS = 60
N_SAMPLES = 32
BBI_KWARGS: dict[str, Any] = {
    "lr": 0.05,
    "extra_energy": 0.5,
    "bounce_period": 5,
    "n_bounces": 4,
    "bounce_patience": 7,
}


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 3, generator=gen, dtype=F64)
    y = torch.sin(x @ torch.tensor([[1.0], [-0.5], [0.25]], dtype=F64))
    return x, y


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(F64)


def train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(STEPS):

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def flat_params(params: Any) -> torch.Tensor:
    out = []
    for p in params:
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out.append(full.detach().reshape(-1))
    return torch.cat(out)


def single_process_run(seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = make_data()
    model = make_model()
    opt = BBI(model.parameters(), seed=seed, **BBI_KWARGS)
    train(model, opt, x, y)
    return flat_params(model.parameters()), opt.diagnostics()


# ---------------------------------------------------------------------------- the worker side
def _scenario_ddp(rank: int, seed: int | None, reduce_loss: bool | None) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = make_data()
    shard = slice(rank * N_SAMPLES // WORLD, (rank + 1) * N_SAMPLES // WORLD)
    model = DDP(make_model())
    opt = BBI(model.parameters(), seed=seed, reduce_loss=reduce_loss, **BBI_KWARGS)
    train(model, opt, x[shard], y[shard])
    return {
        "params": flat_params(model.parameters()),
        "seed": opt.seed,
        "bounces": opt.diagnostics()["bounces"],
        "divergence": replica_divergence(model.parameters()),
    }


def _scenario_fsdp(rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    x, y = make_data()
    shard = slice(rank * N_SAMPLES // WORLD, (rank + 1) * N_SAMPLES // WORLD)
    model = make_model()
    reference_sq = sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    out: dict[str, Any] = {
        # the helper's global Σθ² over the shards equals the unsharded one
        "theta_sq": float(sum_of_squares(list(model.parameters()), "cpu")),
        "theta_sq_reference": reference_sq,
    }
    full = torch.arange(24, dtype=F64).reshape(8, 3)
    out["shard_like_ok"] = bool(torch.equal(shard_like(full, model[0].weight).full_tensor(), full))
    try:
        opt = BBI(model.parameters(), seed=0, **BBI_KWARGS)
        train(model, opt, x[shard], y[shard])
        out["params"] = flat_params(model.parameters())
    except Exception:  # reported to the test, which xfails with the reason
        out["error"] = traceback.format_exc(limit=3)
    return out


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {
            "ddp": _scenario_ddp(rank, seed=None, reduce_loss=None),
            "naive": _scenario_ddp(rank, seed=0, reduce_loss=False),
            "fsdp": _scenario_fsdp(rank),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- the test side
def _launch(out_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    last = ""
    for _attempt in range(3):  # the free port may be taken in between: retry
        port = free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "worker", str(r), str(WORLD), str(port), str(out_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(WORLD)
        ]
        outputs = []
        for p in procs:
            try:
                outputs.append(p.communicate(timeout=180)[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                pytest.fail("distributed workers timed out")
        if all(p.returncode == 0 for p in procs):
            return
        last = "\n".join(outputs)
        if "address already in use" not in last.lower():
            break
    pytest.fail(f"distributed workers failed:\n{last[-4000:]}")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = tmp_path_factory.mktemp("ddp")
    _launch(out_dir)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_ddp_replicas_are_bit_identical(results):
    a, b = (r["ddp"] for r in results)
    assert torch.equal(a["params"], b["params"])
    assert a["divergence"] == b["divergence"] == 0.0
    assert a["bounces"] >= 4  # the run did bounce: same directions on both ranks
    assert a["seed"] == b["seed"]  # seed=None: rank 0's seed was broadcast


def test_ddp_follows_the_single_process_full_batch_run(results):
    ddp = results[0]["ddp"]
    reference, diag = single_process_run(ddp["seed"])
    assert diag["bounces"] == ddp["bounces"]
    gap = (ddp["params"] - reference).abs().max().item()
    assert gap < 1e-8, gap
    # and the run moved: the comparison is not between two untouched models
    assert (reference - flat_params(make_model().parameters())).abs().max() > 1e-2


def test_without_loss_reduction_replicas_drift_apart(results):
    """The failure reduce_loss prevents: each rank's own minibatch loss defines its V."""
    a, b = (r["naive"] for r in results)
    gap = (a["params"] - b["params"]).abs().max().item()
    assert gap > 1e-6, gap
    assert a["divergence"] == gap


def test_fsdp2_global_sums_over_shards(results):
    for r in results:
        fsdp = r["fsdp"]
        assert abs(fsdp["theta_sq"] - fsdp["theta_sq_reference"]) < 1e-12
        assert fsdp["shard_like_ok"]


def test_fsdp2_matches_the_single_process_run(results):
    a, b = (r["fsdp"] for r in results)
    assert "error" not in a, a.get("error")
    assert torch.equal(a["params"], b["params"])
    reference, _ = single_process_run(0)
    assert (a["params"] - reference).abs().max().item() < 1e-8


def test_reduce_loss_true_without_process_group_is_an_error():
    model = make_model()
    opt = BBI(model.parameters(), lr=0.01, reduce_loss=True)
    x, y = make_data()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    with pytest.raises(RuntimeError, match=r"torch\.distributed"):
        opt.step(loss=loss)


def test_helpers_without_process_group():
    t = [torch.ones(3, dtype=F64), torch.full((2,), 2.0, dtype=torch.bfloat16)]
    assert float(sum_of_squares(t, "cpu")) == 11.0
    assert replica_divergence([torch.ones(2)]) == 0.0
    full = torch.ones(2)
    assert shard_like(full, torch.zeros(2)) is full
    assert 0 < free_port() < 65536


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    sys.stdout.flush()
    sys.stderr.flush()
    # the results are saved and the process group destroyed; skip the interpreter's teardown,
    # where gloo's threads can still abort the process ("terminate called without an active
    # exception", seen once in ~10 full runs on this 2-core machine)
    os._exit(0)
elif __name__ == "__main__":  # pragma: no cover
    print(json.dumps({"usage": "pytest tests/test_distributed.py"}))
