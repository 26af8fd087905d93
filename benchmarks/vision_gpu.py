"""CIFAR-10 ResNet-18 training speed: BBI against SGD with momentum, on synthetic data.

Prepared for one NVIDIA GPU (an H200 in the project's notes): bfloat16 autocast, channels-last,
batch 512, 50,000 CIFAR-shaped uint8 images on the device with the training augmentation
(random crop, flip, normalisation) applied per batch exactly as ``ecdopt train cifar10`` does.
For each optimizer it reports

- ``epoch_s``: one full epoch of closure-based training steps (after a warm-up),
- ``step_ms``: the same per step,
- ``fwd_bwd_ms``: forward + backward alone (no optimizer step),
- ``opt_step_ms``: ``optimizer.step`` alone, with the gradients already in place,
- ``optimizer_share``: opt_step_ms / (fwd_bwd_ms + opt_step_ms).

Usage (GPU): ``python benchmarks/vision_gpu.py --json results/vision_gpu.json``
Smoke test (any machine, seconds): ``python benchmarks/vision_gpu.py --device cpu --smoke``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

try:
    import ecdopt  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ecdopt.experiments.vision import PRESETS, make_optimizer
from ecdopt.experiments.vision.data import cifar_transform
from ecdopt.experiments.vision.models import ResNet18

OPTIMIZER_NAMES = {"sgd": "sgdm", "bbi": "bbi"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Mean seconds per call of ``fn`` over ``repeats`` calls (after synchronising)."""
    _sync(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - tic) / repeats


def bench_one(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Time one optimizer on a fresh ResNet-18."""
    amp = args.amp if args.amp is not None else device.type == "cuda"
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda"
    torch.manual_seed(0)
    model = ResNet18().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    hyper = dict(PRESETS["cifar10"].hyperparameters[OPTIMIZER_NAMES[name]])
    opt = make_optimizer(OPTIMIZER_NAMES[name], model.parameters(), hyper, seed=0)

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    images, labels = images.to(device), labels.to(device)
    steps = max(1, args.images // args.batch_size)

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice((i % steps) * args.batch_size, (i % steps + 1) * args.batch_size)
        x = cifar_transform(images[sl], gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels[sl]

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        return loss

    counter = iter(range(10**9))

    def train_step() -> None:
        x, y = batch(next(counter))
        opt.step(lambda: forward_backward(x, y))

    for _ in range(args.warmup):
        train_step()
    epoch_s = _timed(train_step, steps, device) * steps

    x, y = batch(0)
    fwd_bwd_s = _timed(lambda: forward_backward(x, y), args.repeats, device)
    loss = forward_backward(x, y)
    opt_step_s = _timed(
        lambda: opt.step(loss=loss) if name == "bbi" else opt.step(), args.repeats, device
    )
    return {
        "optimizer": name,
        "hyperparameters": hyper,
        "steps": steps,
        "epoch_s": epoch_s,
        "step_ms": 1e3 * epoch_s / steps,
        "fwd_bwd_ms": 1e3 * fwd_bwd_s,
        "opt_step_ms": 1e3 * opt_step_s,
        "optimizer_share": opt_step_s / (fwd_bwd_s + opt_step_s),
        "amp_bf16": amp,
        "channels_last": channels_last,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--images", type=int, default=50_000, help="synthetic images per epoch")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=50, help="repeats of the split timings")
    p.add_argument("--optimizers", default="sgd,bbi")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.images, args.warmup, args.repeats = 2, 4, 1, 1
        if args.device == "cpu":
            torch.set_num_threads(1)  # smoke runs share small machines
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: use --device cpu --smoke for a smoke test", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_NAMES]
    if unknown:
        print(
            f"unknown optimizer(s) {unknown}; choose from {list(OPTIMIZER_NAMES)}", file=sys.stderr
        )
        return 2
    results = [bench_one(n, args, device) for n in names]
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "images": args.images,
        "smoke": args.smoke,
        "results": results,
    }
    print(
        f"{'optimizer':>9} {'epoch s':>9} {'step ms':>9} {'fwd+bwd ms':>11} {'step-only ms':>13} "
        f"{'opt share':>9}"
    )
    for r in results:
        print(
            f"{r['optimizer']:>9} {r['epoch_s']:9.3f} {r['step_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} "
            f"{r['opt_step_ms']:13.2f} {r['optimizer_share']:9.1%}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
