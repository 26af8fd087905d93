"""PyTorch Lightning with ECD, against the real package: automatic and manual optimization,
gradient accumulation, bf16 and fp16 (a real GradScaler on the CPU)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ecdopt import BBI, MissingLossError
from ecdopt.integrations import LossRecorder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")

BATCH = 16


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    return x, (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).long()


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_data()), batch_size=BATCH)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


def _bbi(params) -> BBI:
    return BBI(params, lr=0.1, bounce_period=5, n_bounces=2, seed=0)


class Classifier(pl.LightningModule):
    """``mode``: "automatic"; "manual-loss" (``opt.step(loss=loss)``); "manual-lambda"
    (``opt.step(lambda: loss)``). ``record``: a LossRecorder told every training loss."""

    def __init__(self, mode: str = "automatic", record: bool = False) -> None:
        super().__init__()
        self.net = _net()
        self.mode, self.record = mode, record
        self.automatic_optimization = mode == "automatic"
        self.losses: list[float] = []
        self.recorder: LossRecorder | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x).float(), y)
        self.losses.append(float(loss.detach()))
        if self.recorder is not None:
            self.recorder.record(loss)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.mode == "manual-loss":
            opt.step(loss=loss)
        else:
            opt.step(lambda: loss)
        return None

    def configure_optimizers(self):
        opt = _bbi(self.parameters())
        if self.record:
            self.recorder = LossRecorder(opt)
        return opt


def _fit(module: Classifier, epochs: int = 3, **trainer_kwargs) -> BBI:
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers etc.
        trainer.fit(module, _loader())
    return trainer.optimizers[0]


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _reference(epochs: int, accumulate: int = 1) -> tuple[list[torch.Tensor], BBI]:
    """The plain loop: micro-batch losses divided by ``accumulate``, the step given the mean
    (in float64, as LossRecorder)."""
    net = _net()
    opt = _bbi(net.parameters())
    x, y = _data()
    xs, ys = x.split(BATCH), y.split(BATCH)
    for _ in range(epochs):
        for i in range(0, len(xs), accumulate):
            losses = []
            for xb, yb in zip(xs[i : i + accumulate], ys[i : i + accumulate], strict=True):
                loss = nn.functional.cross_entropy(net(xb), yb)
                (loss / accumulate).backward()
                losses.append(loss.detach())
            opt.step(loss=torch.stack(losses).double().mean())
            opt.zero_grad()
    return _params(net), opt


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_automatic_optimization_trains(precision):
    module = Classifier()
    opt = _fit(module, epochs=6, precision=precision)
    diag = opt.diagnostics()
    assert diag["steps"] == 6 * 4  # Lightning's closure reached the optimizer at every batch
    assert diag["bounces"] >= 1
    first, last = sum(module.losses[:4]) / 4, sum(module.losses[-4:]) / 4
    assert last < 0.7 * first, (first, last)


def test_automatic_and_both_manual_forms_are_bit_identical():
    """Lightning passes its own closure in manual mode too (returning None): ``loss=`` and
    ``lambda: loss`` both reach the optimizer, and all three modes equal the plain loop."""
    expected, _ = _reference(epochs=3)
    for mode in ("automatic", "manual-loss", "manual-lambda"):
        module = Classifier(mode)
        opt = _fit(module, epochs=3)
        assert opt.diagnostics()["steps"] == 12, mode
        for a, b in zip(_params(module), expected, strict=True):
            assert torch.equal(a, b), mode


def test_gradient_accumulation_needs_the_recorder():
    """With ``accumulate_grad_batches=2`` Lightning's closure returns only the last
    micro-batch's loss divided by 2: BBI's energy (δE = 0: the first loss given) would be set
    from that. With a LossRecorder told every loss the step gets the mean, and the run equals
    the plain loop bit for bit."""
    module = Classifier()
    opt = _fit(module, epochs=1, accumulate_grad_batches=2, max_steps=1)
    assert opt.diagnostics()["energy"] == pytest.approx(module.losses[1] / 2, rel=1e-6)

    module = Classifier(record=True)
    opt = _fit(module, epochs=1, accumulate_grad_batches=2, max_steps=1)
    assert opt.diagnostics()["energy"] == pytest.approx(sum(module.losses[:2]) / 2, rel=1e-6)

    module = Classifier(record=True)
    opt = _fit(module, epochs=4, accumulate_grad_batches=2)
    expected, reference_opt = _reference(epochs=4, accumulate=2)
    assert opt.diagnostics() == reference_opt.diagnostics()
    for a, b in zip(_params(module), expected, strict=True):
        assert torch.equal(a, b)
    assert module.recorder.pending == 0


# ---------------------------------------------------------------------- fp16 + GradScaler
def _fp16_plugin(init_scale: float):
    """Lightning turns precision="16-mixed" into bf16 on a CPU; its fp16 plugin with a CPU
    GradScaler is the real fp16 path (scaled backward, unscale, skipped steps)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return MixedPrecision("16-mixed", device="cpu", scaler=scaler)


def _fp16_reference(epochs: int, init_scale: float) -> tuple[list[torch.Tensor], BBI, int]:
    """Plain torch: fp16 autocast, scaled backward, unscale, ``scaler.step(opt, loss=loss)``."""
    net = _net()
    opt = _bbi(net.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    x, y = _data()
    skipped = 0
    for _ in range(epochs):
        for xb, yb in zip(x.split(BATCH), y.split(BATCH), strict=True):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(net(xb).float(), yb)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scale = scaler.get_scale()
            scaler.step(opt, loss=loss.detach())
            scaler.update()
            skipped += scaler.get_scale() < scale
    return _params(net), opt, skipped


def test_fp16_manual_optimization_with_loss_keyword():
    """fp16 (GradScaler): ``self.manual_backward(loss); opt.step(loss=loss)``. Lightning scales
    the backward, unscales, and skips the steps with inf gradients (here the first ones: the
    initial scale 2**24 overflows fp16) before the optimizer sees them; the loss reaches it
    unscaled. Equal to the plain torch loop bit for bit."""
    module = Classifier("manual-loss")
    opt = _fit(module, epochs=3, plugins=[_fp16_plugin(2.0**24)])
    expected, reference_opt, skipped = _fp16_reference(epochs=3, init_scale=2.0**24)
    assert skipped >= 1
    assert opt.diagnostics()["steps"] == 12 - skipped
    assert opt.diagnostics() == reference_opt.diagnostics()
    for a, b in zip(_params(module), expected, strict=True):
        assert torch.equal(a, b)


def test_fp16_lambda_does_not_reach_the_optimizer():
    """The one form where ``opt.step(lambda: loss)`` fails: under a GradScaler Lightning calls
    the closure itself, then ``scaler.step(optimizer)`` without it."""
    with pytest.raises(MissingLossError):
        _fit(Classifier("manual-lambda"), epochs=1, plugins=[_fp16_plugin(2.0**10)])


def test_fp16_automatic_optimization_with_recorder():
    """Automatic optimization under a GradScaler: Lightning runs the closure, then
    ``scaler.step(optimizer)`` with no loss; the recorder supplies it. Equal to manual mode when
    no step is skipped."""
    with pytest.raises(MissingLossError):
        _fit(Classifier(), epochs=1, plugins=[_fp16_plugin(2.0**10)])
    recorded = Classifier(record=True)
    opt = _fit(recorded, epochs=3, plugins=[_fp16_plugin(2.0**10)])
    manual = Classifier("manual-loss")
    manual_opt = _fit(manual, epochs=3, plugins=[_fp16_plugin(2.0**10)])
    assert opt.diagnostics()["steps"] == 12
    assert opt.diagnostics() == manual_opt.diagnostics()
    for a, b in zip(_params(recorded), _params(manual), strict=True):
        assert torch.equal(a, b)
