"""Hugging Face ``Trainer`` and ``accelerate`` with ECD, against the real packages.

A tiny GPT-2 (2 layers, width 32, byte-level vocabulary of 256) is built from a config in code
and trained on the bytes of a Python standard-library module: nothing is downloaded.
"""

from __future__ import annotations

import inspect
import shutil
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from ecdopt import BBI
from ecdopt.integrations import LossRecorder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
accelerate = pytest.importorskip("accelerate", reason="accelerate is not installed")

BLOCK = 33  # 32 predicted tokens per row


def _text_blocks(rows: int = 32) -> torch.Tensor:
    """``rows`` rows of BLOCK bytes of real text (the source of ``textwrap``)."""
    data = inspect.getsource(textwrap).encode()[: rows * BLOCK]
    return torch.tensor(list(data), dtype=torch.long).view(rows, BLOCK)


class _CausalLMData(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256,
        n_positions=BLOCK,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    # transformers 5 infers the loss type from the class name, which "GPT2LMHeadModel" does not
    # match; Trainer then counts the unshifted labels (33 per row, not 32) for
    # num_items_in_batch and every loss comes out 32/33 of the true mean. Naming it fixes that.
    model.loss_type = "ForCausalLM"
    return model


def _trainer(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    out: Path,
    steps: int,
    save_steps: int | None = None,
    dataset: torch.utils.data.Dataset | None = None,
) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=steps,
        lr_scheduler_type="constant",  # the default "linear" would decay BBI's lr to 0
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    data = dataset if dataset is not None else _CausalLMData(_text_blocks())
    return transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))


def _train(trainer: transformers.Trainer, **kwargs) -> None:
    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(**kwargs)


def _capture_step_losses(
    model: nn.Module, opt: BBI, true_loss: Callable[[list[dict]], float]
) -> list[tuple[float, float]]:
    """Wrap ``opt.step`` (before a LossRecorder wraps it in turn) to keep, for every step, the
    loss the optimizer was given and the true loss of the accumulated batch computed from the
    micro-batches that the model saw in training since the previous step."""
    seen: list[dict] = []
    pairs: list[tuple[float, float]] = []

    def keep_inputs(module, args, kwargs):
        if torch.is_grad_enabled():
            seen.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    model.register_forward_pre_hook(keep_inputs, with_kwargs=True)
    own_step = opt.step

    def step(closure=None, *, loss=None):
        with torch.no_grad():
            pairs.append((float(loss), true_loss(seen)))
        seen.clear()
        return own_step(closure, loss=loss)

    opt.step = step
    return pairs


def _gpt2_window_loss(model: nn.Module) -> Callable[[list[dict]], float]:
    def true_loss(batches: list[dict]) -> float:
        ids = torch.cat([b["input_ids"] for b in batches])
        return float(model(input_ids=ids, labels=ids).loss)  # mean over all predicted tokens

    return true_loss


# ----------------------------------------------------------------------- HF Trainer
@pytest.mark.parametrize("reduction", ["auto", "sum", "mean"])
def test_trainer_causal_lm_energy_is_set_from_the_true_loss(tmp_path, reduction):
    """Causal LM, gradient accumulation 2: Trainer hands the model ``num_items_in_batch`` and
    each micro-batch loss is divided by the token count of both micro-batches. "auto" (the
    default) and "sum" give the optimizer the true loss of the accumulated batch, "mean" half
    of it — the reason "auto" exists."""
    model = _tiny_gpt2()
    opt = BBI(model.parameters(), lr=0.3, seed=0)
    pairs = _capture_step_losses(model, opt, _gpt2_window_loss(model))
    LossRecorder(opt, reduction=reduction).watch(model)
    _train(_trainer(model, opt, tmp_path, steps=12 if reduction == "auto" else 3))
    assert len(pairs) == (12 if reduction == "auto" else 3)
    ratio = 0.5 if reduction == "mean" else 1.0
    for given, true in pairs:
        assert given == pytest.approx(ratio * true, rel=1e-5)
    if reduction == "auto":  # and it trains: ln(256) = 5.55 at the start
        assert pairs[-1][1] < pairs[0][1] - 0.8, pairs


class _PlainLossModel(nn.Module):
    """A model whose forward takes no ``num_items_in_batch``: Trainer divides its (mean) loss by
    the number of micro-batches before backward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.cross_entropy(self.net(x), labels)}


class _PairData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=gen)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def test_trainer_model_without_loss_kwargs_gets_the_mean(tmp_path):
    model = _PlainLossModel()
    opt = BBI(model.parameters(), lr=0.1, seed=0)

    def true_loss(batches: list[dict]) -> float:
        x = torch.cat([b["x"] for b in batches])
        return float(model(x, torch.cat([b["labels"] for b in batches]))["loss"])

    pairs = _capture_step_losses(model, opt, true_loss)
    LossRecorder(opt).watch(model)  # "auto": no num_items_in_batch was given, so the mean
    _train(_trainer(model, opt, tmp_path, steps=4, dataset=_PairData()))
    assert len(pairs) == 4
    for given, true in pairs:
        assert given == pytest.approx(true, rel=1e-5)


def _bbi_trainer(out: Path, steps: int, save_steps: int | None = None):
    model = _tiny_gpt2()
    opt = BBI(model.parameters(), lr=0.3, seed=0, bounce_period=3, n_bounces=3)
    LossRecorder(opt).watch(model)
    return _trainer(model, opt, out, steps, save_steps), model, opt


def test_trainer_resume_from_checkpoint_is_bit_exact(tmp_path):
    """Trainer checkpoint (optimizer.pt with BBI's energy, counters and generator) at step 4,
    resume to step 8 in a new Trainer: the same parameters, bit for bit, as 8 steps in one go,
    with bounces on both sides of the interruption."""
    full, full_model, full_opt = _bbi_trainer(tmp_path / "full", 8, save_steps=4)
    _train(full)
    assert full_opt.diagnostics()["bounces"] == 2  # at steps 3 and 6
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert (checkpoint / "optimizer.pt").is_file()

    resumed, resumed_model, resumed_opt = _bbi_trainer(tmp_path / "resumed", 8)
    _train(resumed, resume_from_checkpoint=str(checkpoint))
    assert resumed_opt.diagnostics() == full_opt.diagnostics()
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)

    # the same resume without optimizer.pt (a fresh BBI at step 4) does not match: the test
    # above is sensitive to the optimizer state
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / "optimizer.pt").unlink()
    fresh, fresh_model, _ = _bbi_trainer(tmp_path / "fresh", 8)
    _train(fresh, resume_from_checkpoint=str(bare))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(full_model.parameters(), fresh_model.parameters(), strict=True)
    )


# ------------------------------------------------------------------------ accelerate
@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons: start and leave each test with a clean one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _classification(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    return x, (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).long()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


def _reference_run(steps_per_epoch: int, epochs: int, accumulate: int) -> list[torch.Tensor]:
    """The plain loop: micro-batch losses divided by ``accumulate``, the step given the mean."""
    x, y = _classification()
    model = _mlp()
    opt = BBI(model.parameters(), lr=0.1, seed=0, bounce_period=5, n_bounces=2)
    xs, ys = x.chunk(steps_per_epoch * accumulate), y.chunk(steps_per_epoch * accumulate)
    for _ in range(epochs):
        for i in range(0, len(xs), accumulate):
            losses = []
            for xb, yb in zip(xs[i : i + accumulate], ys[i : i + accumulate], strict=True):
                loss = nn.functional.cross_entropy(model(xb), yb)
                (loss / accumulate).backward()
                losses.append(loss.detach())
            opt.step(loss=torch.stack(losses).double().mean())  # as LossRecorder
            opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_accelerate_step_with_a_lambda(fresh_accelerate_state):
    """``Accelerator().prepare``'s AcceleratedOptimizer.step takes only a closure:
    ``opt.step(loss=loss)`` is a TypeError there, ``opt.step(lambda: loss)`` works and equals
    the plain loop bit for bit."""
    from accelerate import Accelerator

    x, y = _classification()
    accelerator = Accelerator(cpu=True)
    model = _mlp()
    opt = BBI(model.parameters(), lr=0.1, seed=0, bounce_period=5, n_bounces=2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    assert type(opt).__name__ == "AcceleratedOptimizer"
    for epoch in range(3):
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            accelerator.backward(loss)
            if epoch == 0:
                with pytest.raises(TypeError, match="loss"):
                    opt.step(loss=loss)
            opt.step(lambda: loss)  # noqa: B023 (called at once)
            opt.zero_grad()
    assert opt.optimizer.diagnostics()["steps"] == 24
    for a, b in zip(model.parameters(), _reference_run(8, 3, accumulate=1), strict=True):
        assert torch.equal(a, b)


def test_accelerate_gradient_accumulation_with_loss_recorder(fresh_accelerate_state):
    """``accelerator.accumulate`` skips the optimizer step on all but every 2nd micro-batch;
    the recorder keeps every micro-batch's loss and the real step gets their mean (a lambda
    would give only the last one's)."""
    from accelerate import Accelerator

    x, y = _classification()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = _mlp()
    opt = BBI(model.parameters(), lr=0.1, seed=0, bounce_period=5, n_bounces=2)
    recorder = LossRecorder(opt)
    criterion = recorder.wrap(nn.functional.cross_entropy)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    for _ in range(3):
        for xb, yb in loader:
            with accelerator.accumulate(model):
                accelerator.backward(criterion(model(xb), yb))
                opt.step()
                opt.zero_grad()
    assert recorder.pending == 0
    assert opt.optimizer.diagnostics()["steps"] == 24
    for a, b in zip(model.parameters(), _reference_run(8, 3, accumulate=2), strict=True):
        assert torch.equal(a, b)
