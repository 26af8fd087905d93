"""ms/iteration of the PDE ``paper`` preset (App. B, §4.4) on a GPU, with the fast paths.

One prepared script for an H200 (about a minute of device time). Every variant uses the forward
Laplacian, static point buffers (resampling copies into them in place) and, unless ``--no-tf32``,
TF32 matmuls. Variants, each timed over ``--iterations`` iterations after a warm-up:

* ``eager``: ``opt.step(closure)`` in a Python loop;
* ``eager_capturable``: ``eager`` with ``graph_full``'s optimizer settings (no capture);
* ``graph_loss``: the loss and its backward captured in one CUDA graph (gradients in static
  buffers), the optimizer step eager: ``graph.replay(); opt.step(loss=static_loss)``;
* ``graph_full``: the whole iteration (zero grads, loss, backward, optimizer step) replayed from
  one CUDA graph (:class:`ecdopt.experiments.pde.GraphedIteration`, the loop of
  ``ecdopt pde train --cuda-graph``), with the preset's bounces: the optimizer runs with
  ``capturable=True, rng="counter"``, so whether a bounce is due and its direction are decided
  inside the graph (ξ is drawn at every iteration and applied by mask). If capture fails the
  error is reported and the other numbers still come out. Its ``bounces`` say that the
  schedule ran inside the graph.

Also reported: the double-backward Laplacian in eager mode for comparison, and the projected
hours for the paper's 1.5M iterations. Prints one JSON document (and writes ``--json``)::

    python benchmarks/pde_gpu.py --device cuda --json pde_gpu.json          # on the H200
    python benchmarks/pde_gpu.py --device cpu --smoke                       # logic check, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ecdopt.experiments.pde import (
    PRESETS,
    GraphedIteration,
    PDELoss,
    ResNetAnsatz,
    graph_settings,
    make_optimizer,
    sample_ball,
    sample_sphere,
    smoke_preset,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run_once: Callable[[], None], iterations: int, warmup: int, device: torch.device):
    """Milliseconds per call of ``run_once`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        run_once()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        run_once()
    _sync(device)
    return 1e3 * (time.perf_counter() - start) / max(iterations, 1)


class Setup:
    """Model, optimizer and static point buffers of one variant (fresh for each variant)."""

    def __init__(
        self,
        preset,
        optimizer: str,
        device: torch.device,
        laplacian: str,
        capturable: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.preset, self.device = preset, device
        self.model = ResNetAnsatz(preset.dim, preset.width, preset.depth).to(device)
        self.loss_fn = PDELoss(
            preset.problem, gamma=preset.gamma, reg=preset.reg, laplacian=laplacian
        )
        self.gen = torch.Generator().manual_seed(0)
        self.x_int = torch.empty(preset.n_interior, preset.dim, device=device)
        self.f_int = torch.empty(preset.n_interior, device=device)
        self.x_bnd = torch.empty(preset.n_boundary, preset.dim, device=device)
        self.resample()
        settings = dict(preset.optimizers[optimizer])
        if capturable:  # bounces and rotations drawn inside the graph (rng="counter")
            settings = graph_settings(optimizer, settings)
        self.opt = make_optimizer(optimizer, self.model.parameters(), settings, seed=0)
        self.iteration = 0

    def resample(self) -> None:
        """New points, copied *into* the static buffers (a captured graph reads them there)."""
        p = self.preset
        xi = sample_ball(p.n_interior, p.dim, self.gen, dtype=torch.float64)
        self.f_int.copy_(p.problem.source(xi), non_blocking=True)
        self.x_int.copy_(xi, non_blocking=True)
        self.x_bnd.copy_(sample_sphere(p.n_boundary, p.dim, self.gen), non_blocking=True)

    def maybe_resample(self) -> None:
        k = self.preset.resample_every
        self.iteration += 1
        if k and self.iteration % k == 0:
            self.resample()

    def loss(self) -> torch.Tensor:
        return self.loss_fn(self.model, self.x_int, self.f_int, self.x_bnd)

    def closure(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        return loss


def variant_eager(setup: Setup) -> Callable[[], None]:
    def run_once() -> None:
        setup.maybe_resample()
        setup.opt.step(setup.closure)

    return run_once


def _static_grads(setup: Setup) -> None:
    for p in setup.model.parameters():
        p.grad = torch.zeros_like(p)


def _warm_side_stream(fn: Callable[[], None], device: torch.device, n: int = 3) -> None:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(n):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)


def variant_graph_loss(setup: Setup) -> Callable[[], None]:
    """Loss + backward in one CUDA graph, the optimizer step outside it."""
    _static_grads(setup)
    params = list(setup.model.parameters())
    holder: dict[str, torch.Tensor] = {}

    def body() -> None:
        for p in params:
            p.grad.zero_()
        loss = setup.loss()
        loss.backward()
        holder["loss"] = loss.detach()

    _warm_side_stream(body, setup.device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    static_loss = holder["loss"]

    def run_once() -> None:
        setup.maybe_resample()
        graph.replay()
        setup.opt.step(loss=static_loss)

    return run_once


def variant_graph_full(setup: Setup) -> Callable[[], None]:
    """The whole iteration replayed from one CUDA graph, bounces included (the experiment's
    :class:`GraphedIteration`: first step eager, warm-up on a side stream, then capture)."""
    iteration = GraphedIteration(
        setup.opt, list(setup.model.parameters()), setup.loss, setup.device
    )

    def run_once() -> None:
        setup.maybe_resample()
        iteration()

    return run_once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--optimizer", default="bbi")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--no-tf32", action="store_true")
    parser.add_argument(
        "--variants", default="eager,graph_loss,graph_full,eager_capturable,eager_double_backward"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, few iterations")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    iterations, warmup = args.iterations, args.warmup
    if args.smoke:
        preset = replace(smoke_preset(preset), resample_every=3)
        iterations, warmup = 5, 2
    tf32 = not args.no_tf32 and device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")

    builders = {
        "eager": (variant_eager, "forward"),
        "eager_double_backward": (variant_eager, "double_backward"),
        "graph_loss": (variant_graph_loss, "forward"),
        "graph_full": (variant_graph_full, "forward"),
        "eager_capturable": (variant_eager, "forward"),  # graph_full's optimizer, uncaptured
    }
    results: dict[str, dict] = {}
    for name in args.variants.split(","):
        build, laplacian = builders[name]
        if name.startswith("graph") and device.type != "cuda":
            results[name] = {"skipped": "CUDA graphs need a CUDA device"}
            continue
        try:
            capturable = name in ("graph_full", "eager_capturable")
            setup = Setup(preset, args.optimizer, device, laplacian, capturable)
            ms = _timed(build(setup), iterations, warmup, device)
            loss = float(setup.loss().detach())
            results[name] = {
                "ms_per_iteration": ms,
                "hours_for_paper_run": ms * 1.5e6 / 3.6e6,
                "loss_after": loss,
            }
            diagnostics = getattr(setup.opt, "diagnostics", None)
            if diagnostics is not None:  # ECD: did the schedule run (inside the graph)?
                results[name]["bounces"] = diagnostics()["bounces"]
                results[name]["steps"] = diagnostics()["steps"]
        except Exception as exc:  # report and carry on: one failed variant must not hide the rest
            results[name] = {
                "error": f"{type(exc).__name__}: {exc}"[:500],
                "traceback": traceback.format_exc()[-1500:],
            }
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)

    doc = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": preset.name,
        "optimizer": args.optimizer,
        "tf32": tf32,
        "iterations": iterations,
        "sizes": {
            "width": preset.width,
            "depth": preset.depth,
            "n_interior": preset.n_interior,
            "n_boundary": preset.n_boundary,
        },
        "results": results,
    }
    print(json.dumps(doc, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    failed = [n for n, r in results.items() if "error" in r and n != "graph_full"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
