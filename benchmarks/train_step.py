"""End to end: what a whole training step costs (forward, backward, optimizer step) with BBI,
ECDSep and unit-speed ECD against SGD with momentum and AdamW, side by side.

Three models, each with synthetic batches of its real shapes (no data is read):

- ``digits``: the digits CNN of ``ecdopt train digits`` (0.17M parameters, 8×8 images, batch 32);
- ``resnet18``: the CIFAR ResNet-18 of ``ecdopt train cifar10`` (11.2M parameters, batch 32);
- ``gpt``: the GPT experiment's default model and batch (``ecdopt.experiments.gpt``) when that
  package is installed; otherwise a stand-in of the same shape (a pre-LayerNorm causal decoder
  from ``torch.nn.TransformerEncoderLayer``: byte vocabulary, context 64, 4 layers, 4 heads,
  width 64, tied output, batch 32), named ``gpt-standin`` in the output.

The optimizers take the experiments' preset hyperparameters (BBI with its bounces, ECDSep with
its every-step rotation; ``ecdsep_every8`` rotates every 8th step with ν·sqrt(8)); SGD-momentum
and AdamW use ``foreach=True``. Every optimizer trains its own copy of the model from the same
initial weights on the same batches; rounds alternate between optimizers (a change of the
machine's speed hits all alike). Each figure is the median over rounds of the time per step;
the ratio to SGD-momentum is the median over rounds of the ratio within each round (paired, so
a slow round slows both sides of its ratio). The clock is ``time.process_time`` on the CPU
(the CPU time of this process, robust to other processes' load) and the synchronised wall
clock on CUDA.

    python benchmarks/train_step.py [--models digits,resnet18,gpt] [--threads 1] [--rounds 7]
        [--steps 4] [--device cpu|cuda] [--json FILE]
    python benchmarks/train_step.py --smoke        # seconds: tiny rounds, for the tests
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

try:
    import ecdopt
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ecdopt

from ecdopt.experiments.vision import PRESETS as VISION
from ecdopt.experiments.vision.models import DigitsCNN, ResNet18

OPTIMIZERS = ("sgdm", "adamw", "bbi", "ecdsep", "ecdsep_every8", "unit_speed")


@dataclass
class Workload:
    """A model builder, a batch maker, the loss and the optimizers' hyperparameters."""

    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    hyper: dict[str, dict[str, float]]


def _classification_loss(model: nn.Module, batch) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def _vision_hyper(preset: str) -> dict[str, dict[str, float]]:
    hyper = VISION[preset].hyperparameters
    return {
        "sgdm": dict(hyper["sgdm"]),
        "adamw": {"lr": 1e-3, "weight_decay": 0.01},
        "bbi": dict(hyper["bbi"]),
        "ecdsep": dict(hyper["ecdsep"]),
        "unit_speed": {"lr": 0.5, "loss_power": 2.0},
    }


def digits(batch_size: int = 32) -> Workload:
    def batch(gen):
        x = torch.rand(batch_size, 1, 8, 8, generator=gen) * 16
        return x, torch.randint(0, 10, (batch_size,), generator=gen)

    return Workload("digits", DigitsCNN, batch, _classification_loss, _vision_hyper("digits"))


def resnet18(batch_size: int = 32) -> Workload:
    def batch(gen):
        x = torch.randn(batch_size, 3, 32, 32, generator=gen)
        return x, torch.randint(0, 10, (batch_size,), generator=gen)

    return Workload("resnet18", ResNet18, batch, _classification_loss, _vision_hyper("cifar10"))


class StandInGPT(nn.Module):
    """A pre-LayerNorm causal decoder with the GPT experiment's default shape, from torch's
    ``TransformerEncoderLayer`` (used when ``ecdopt.experiments.gpt`` is not installed)."""

    def __init__(self, vocab: int = 256, context: int = 64, layers: int = 4, width: int = 64):
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.token.weight

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        x, y = tokens[:, :-1], tokens[:, 1:]
        length = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
        h = self.token(x) + self.position(torch.arange(length, device=x.device))
        logits = self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def gpt() -> Workload:
    """The GPT experiment's default model when installed, else :class:`StandInGPT`."""
    try:
        from ecdopt.experiments.gpt import GPT, PRESETS
    except ImportError:
        config, batch_size, name = None, 32, "gpt-standin"
        context = 64

        def build() -> nn.Module:
            return StandInGPT(context=context)
    else:
        preset = PRESETS["default"]
        config, batch_size, name = preset.model, preset.batch_size, "gpt"
        context = config.context

        def build() -> nn.Module:
            return GPT(config)

    def batch(gen):
        tokens = torch.randint(0, 256, (batch_size, context + 1), generator=gen)
        return tokens, tokens

    def loss(model, batch):
        return model.loss(batch[0])

    hyper = {
        "sgdm": {"lr": 0.081, "momentum": 0.85},
        "adamw": {"lr": 1.2e-3, "weight_decay": 0.13},
        "bbi": {"lr": 0.24, "loss_floor": 1.06},
        "ecdsep": {"lr": 0.24, "loss_floor": 1.06},
        "unit_speed": {"lr": 0.81, "loss_power": 100.0, "loss_floor": 1.85},
    }
    return Workload(name, build, batch, loss, hyper)


WORKLOADS = {"digits": digits, "resnet18": resnet18, "gpt": gpt}


def make_optimizer(name: str, params, hyper: dict[str, dict[str, float]]):
    if name == "sgdm":
        return torch.optim.SGD(params, foreach=True, **hyper["sgdm"])
    if name == "adamw":
        return torch.optim.AdamW(params, foreach=True, **hyper["adamw"])
    if name == "bbi":
        return ecdopt.BBI(params, seed=0, **hyper["bbi"])
    if name == "ecdsep":
        return ecdopt.ECDSep(params, seed=0, **hyper["ecdsep"])
    if name == "ecdsep_every8":
        return ecdopt.ECDSep(params, seed=0, rotation_every=8, **hyper["ecdsep"])
    if name == "unit_speed":
        return ecdopt.UnitSpeedECD(params, seed=0, **hyper["unit_speed"])
    raise ValueError(f"unknown optimizer {name!r}")


class Trainer:
    """One optimizer training its own copy of the model on a fixed cycle of batches."""

    def __init__(self, workload: Workload, optimizer: str, device: torch.device, batches: list):
        torch.manual_seed(0)
        self.model = workload.build().to(device)
        self.opt = make_optimizer(optimizer, self.model.parameters(), workload.hyper)
        self.workload, self.batches, self.i = workload, batches, 0
        self.ecd = isinstance(self.opt, ecdopt.ECD)

    def step(self) -> float:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        loss = self.workload.loss(self.model, batch)
        loss.backward()
        if self.ecd:
            self.opt.step(lambda: loss)
        else:
            self.opt.step()
        return float(loss.detach())  # every loop reads its loss (logging, divergence checks)


def bench_workload(
    workload: Workload,
    optimizers: list[str],
    device: torch.device,
    *,
    rounds: int,
    steps: int,
    warmup: int,
    clock: Callable[[], float],
) -> dict:
    gen = torch.Generator().manual_seed(1)
    batches = [tuple(t.to(device) for t in workload.batch(gen)) for _ in range(8)]
    trainers = {name: Trainer(workload, name, device, batches) for name in optimizers}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(rounds):
        for name, trainer in trainers.items():
            sync()
            start = clock()
            for _ in range(steps):
                trainer.step()
            sync()
            times[name].append((clock() - start) / steps)
    base = times.get("sgdm")
    params = sum(p.numel() for p in trainers[optimizers[0]].model.parameters())
    rows = {}
    for name, values in times.items():
        paired = [t / b for t, b in zip(values, base, strict=True)] if base else [math.nan]
        rows[name] = {
            "median_ms": 1e3 * statistics.median(values),
            "ratio_to_sgdm": statistics.median(paired),
            "final_loss": trainers[name].step(),
        }
    return {"params": params, "optimizers": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,resnet18,gpt")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="1 round of 2 steps, small ResNet")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models = args.models.split(",")
    optimizers = args.optimizers.split(",")
    for name in models:
        if name not in WORKLOADS:
            parser.error(f"--models: unknown model {name!r}; choose from {', '.join(WORKLOADS)}")
    for name in optimizers:
        if name not in OPTIMIZERS:
            parser.error(f"--optimizers: unknown {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if "sgdm" not in optimizers:
        parser.error("--optimizers must include sgdm (the reference of the ratios)")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rounds, steps, warmup = args.rounds, args.steps, args.warmup
    if args.smoke:
        rounds, steps, warmup = 1, 2, 1
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    doc = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "clock": "wall" if device.type == "cuda" else "process",
        "rounds": rounds,
        "steps_per_round": steps,
        "models": {},
    }
    print(f"{'model':<14}{'optimizer':<16}{'median ms':>11}{'x SGD-momentum':>16}")
    for name in models:
        workload = WORKLOADS[name](8) if args.smoke and name == "resnet18" else WORKLOADS[name]()
        result = bench_workload(
            workload, optimizers, device, rounds=rounds, steps=steps, warmup=warmup, clock=clock
        )
        doc["models"][workload.name] = result
        for opt_name, row in result["optimizers"].items():
            print(
                f"{workload.name:<14}{opt_name:<16}{row['median_ms']:>11.2f}"
                f"{row['ratio_to_sgdm']:>16.3f}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
