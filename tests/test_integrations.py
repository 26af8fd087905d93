"""LossRecorder, plain loops and torch.compile (the real frameworks: test_frameworks_*.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ecdopt import BBI, ECDSep, MissingLossError
from ecdopt.integrations import LossRecorder, extract_loss

F64 = torch.float64


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).long()
    return x, y


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).to(dtype)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


# ----------------------------------------------------------------------- plain loops
def test_plain_loop_with_loss_keyword_trains():
    x, y = _data()
    model = _model()
    opt = ECDSep(model.parameters(), lr=0.1, seed=0)
    first = float(_loss(model, x, y).detach())
    for _ in range(60):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step(loss=loss)
    assert float(_loss(model, x, y).detach()) < 0.6 * first


def test_plain_loop_lambda_equals_loss_keyword():
    """``opt.step(lambda: loss)``, the form that works in every framework, is ``loss=``."""
    x, y = _data()
    runs = []
    for form in ("lambda", "keyword"):
        model = _model()
        opt = BBI(model.parameters(), lr=0.1, bounce_period=4, n_bounces=2, seed=0)
        for _ in range(10):
            opt.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            opt.step(lambda: loss) if form == "lambda" else opt.step(loss=loss)  # noqa: B023
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------ Hugging Face-style step()
class _HFStyle(nn.Module):
    """Returns an object with ``.loss`` when given labels, as transformers models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model(F64)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(loss=loss, logits=logits)


def _hf_loop(model: nn.Module, opt: torch.optim.Optimizer, steps: int, accumulate: int) -> None:
    """A Trainer-like loop: scaled micro-batch backward, then ``optimizer.step()``, no loss."""
    x, y = _data(64)
    xb, yb = x.to(F64).chunk(accumulate), y.chunk(accumulate)
    for _ in range(steps):
        for xi, yi in zip(xb, yb, strict=True):
            out = model(xi, labels=yi)
            (out.loss / accumulate).backward()
        with torch.no_grad():  # an evaluation pass between: must not be recorded
            model(x.to(F64), labels=y)
        opt.step()
        opt.zero_grad()


def test_hf_style_loop_with_watch_equals_explicit_loss():
    x, y = _data(64)
    ref_model = _HFStyle()
    ref = BBI(ref_model.parameters(), lr=0.05, bounce_period=7, n_bounces=3, seed=1)
    for _ in range(25):
        losses = []
        for xi, yi in zip(x.to(F64).chunk(2), y.chunk(2), strict=True):
            out = ref_model(xi, labels=yi)
            (out.loss / 2).backward()
            losses.append(out.loss.detach())
        ref.step(loss=torch.stack(losses).mean())
        ref.zero_grad()

    model = _HFStyle()
    opt = BBI(model.parameters(), lr=0.05, bounce_period=7, n_bounces=3, seed=1)
    recorder = LossRecorder(opt)
    recorder.watch(model)
    _hf_loop(model, opt, steps=25, accumulate=2)
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.diagnostics()["bounces"] == 3
    assert recorder.pending == 0


def test_step_without_recorded_loss_is_an_error_not_a_stale_loss():
    model = _model()
    opt = BBI(model.parameters(), lr=0.1)
    recorder = LossRecorder(opt)
    criterion = recorder.wrap(nn.functional.cross_entropy)
    x, y = _data()
    criterion(model(x), y).backward()
    opt.step()
    with pytest.raises(MissingLossError, match="recorded"):
        opt.step()  # nothing recorded since the last step
    with torch.no_grad():
        criterion(model(x), y)  # evaluation: ignored
    assert recorder.pending == 0


def test_recorder_reduction_sum_and_explicit_record():
    opt = BBI([nn.Parameter(torch.ones(2))], lr=0.1)
    recorder = LossRecorder(opt, reduction="sum")
    recorder.record(torch.tensor(1.5))
    recorder.record(2.0)
    assert float(recorder.pop()) == 3.5
    with pytest.raises(ValueError, match="single number"):
        recorder.record(torch.ones(2))
    recorder.record(1.0)
    recorder.record(3.0)
    assert float(recorder.pop()) == 4.0  # "sum", whatever recorded them
    with pytest.raises(RuntimeError, match="already"):
        LossRecorder(opt)
    with pytest.raises(TypeError, match="ecdopt optimizers"):
        LossRecorder(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))


def test_recorder_with_lr_scheduler_and_detach():
    model = _model()
    opt = BBI(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # wraps opt.step
    recorder = LossRecorder(opt)
    recorder.watch(model)
    x, _ = _data()
    for _ in range(3):
        opt.zero_grad()
        loss = model(x).logsumexp(1).mean()  # a scalar loss computed outside the model
        recorder.record(loss)
        loss.backward()
        opt.step()
        sched.step()
    assert opt.diagnostics()["steps"] == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
    recorder.detach()
    assert getattr(opt.step, "_ecdopt_loss_recorder", False) is False
    model(x)  # the hook is gone: nothing recorded
    assert recorder.pending == 0
    opt.zero_grad()
    model(x).sum().backward()
    with pytest.raises(MissingLossError):
        opt.step()  # back to the optimizer's own step


def test_recorder_precedence_closure_and_loss_keyword():
    """loss= wins over recordings; recordings win over a closure's return value (Lightning's
    accumulation closure returns the last micro-batch's loss / k); a closure alone still
    works; a closure returning None with nothing recorded is the missing-loss error."""
    weight = nn.Parameter(torch.ones(2, dtype=F64))
    opt = BBI([weight], lr=0.1, bounce_period=None)
    recorder = LossRecorder(opt)

    def closure_returning(value):
        def closure():
            opt.zero_grad()
            (weight.sum() * 0.0 + weight.square().sum()).backward()
            return torch.tensor(value, dtype=F64)

        return closure

    recorder.record(3.0)
    recorder.record(5.0)
    assert float(opt.step(closure_returning(0.5))) == 4.0  # the recorded mean
    assert opt.diagnostics()["energy"] == 4.0  # δE = 0: E = V of the first step
    assert float(opt.step(closure_returning(0.5))) == 0.5  # nothing recorded: the closure's
    recorder.record(7.0)
    assert float(opt.step(loss=2.5)) == 2.5 and recorder.pending == 0
    with pytest.raises(MissingLossError, match=r"step\(lambda: loss\)"):
        opt.step(lambda: None)


def test_recorder_auto_reduction_sees_num_items_in_batch():
    """``watch`` in "auto": a forward given num_items_in_batch (how Hugging Face's Trainer asks
    for a loss divided by the whole accumulated batch) is summed, any other is averaged, and
    mixing both before one step is refused."""

    class Summed(nn.Module):
        def forward(self, x, num_items_in_batch=None):
            total = x.square().sum()
            return total / num_items_in_batch if num_items_in_batch is not None else total

    x = torch.ones(2, dtype=F64, requires_grad=True)
    recorder = LossRecorder(BBI([nn.Parameter(torch.ones(1))], lr=0.1))
    model = Summed()
    recorder.watch(model)
    model(x, num_items_in_batch=4)
    model(3 * x, num_items_in_batch=4)
    assert float(recorder.pop()) == pytest.approx(2 / 4 + 18 / 4)  # the sum
    model(x)
    model(3 * x)
    assert float(recorder.pop()) == pytest.approx((2 + 18) / 2)  # the mean
    model(x)
    model(x, num_items_in_batch=4)
    with pytest.raises(RuntimeError, match="num_items_in_batch"):
        recorder.pop()
    recorder.clear()
    with pytest.raises(ValueError, match="'auto', 'mean', 'sum'"):
        LossRecorder(BBI([nn.Parameter(torch.ones(1))], lr=0.1), reduction="max")


def test_extract_loss_shapes():
    t = torch.tensor(2.0)
    assert extract_loss(t) is t
    assert extract_loss({"loss": t}) is t
    assert extract_loss((t, torch.ones(3))) is t
    assert extract_loss(SimpleNamespace(loss=t)) is t
    assert extract_loss(torch.ones(3)) is None
    assert extract_loss(SimpleNamespace(logits=t)) is None


# ------------------------------------------------------------------------ torch.compile
def test_compiled_model_trains_with_bbi():
    x, y = _data(64)
    model = _model()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    opt = BBI(model.parameters(), lr=0.1, bounce_period=10, n_bounces=1, seed=0)
    first = None
    for _ in range(30):

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        first = float(loss.detach()) if first is None else first
    final = float(nn.functional.cross_entropy(model(x), y))
    assert final < 0.6 * first
    # the compiled and the eager model share parameters: they agree after training
    assert torch.allclose(compiled(x), model(x), atol=1e-5)


def _compiled_step_run(compile_step: bool) -> list[torch.Tensor]:
    x, y = _data(64)
    model = _model()
    opt = BBI(model.parameters(), lr=0.1, bounce_period=3, n_bounces=2, seed=0)
    step = torch.compile(opt.step, backend="aot_eager") if compile_step else opt.step
    for _ in range(6):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        step(lambda: loss)  # noqa: B023
    return [p.detach().clone() for p in model.parameters()]


def test_compiling_the_step_works_or_says_to_compile_the_model():
    """``torch.compile(opt.step)`` must either give the eager trajectory (today: the step is
    excluded from compilation and runs eagerly) or raise an error that says to compile the
    model instead, never an internal error."""
    torch._dynamo.reset()
    try:
        compiled = _compiled_step_run(compile_step=True)
    except Exception as error:  # the acceptable failure: a clear message
        message = str(error)
        assert "torch.compile" in message and "model" in message, repr(error)
        return
    for a, b in zip(compiled, _compiled_step_run(compile_step=False), strict=True):
        assert torch.equal(a, b)
