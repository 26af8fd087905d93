"""Getting the loss to an ECD optimizer in training frameworks (docs/integrations.md).

ECD needs the loss value at every step (it defines V). Three kinds of loops:

- a closure (``optimizer.step(closure)``): PyTorch Lightning's automatic optimization, and any
  loop written that way — nothing to do;
- ``loss.backward(); optimizer.step(loss=loss)``: plain loops — nothing to do;
- loops that call ``optimizer.step()`` with **no arguments** (Hugging Face ``Trainer``,
  ``accelerate``, many research codebases): use :class:`LossRecorder`. It is attached to the
  optimizer and is told the loss by one of

  * ``recorder.record(loss)`` — call it where the loss is computed;
  * ``recorder.watch(model)`` — a forward hook that records ``output.loss`` /
    ``output["loss"]`` / a scalar output of the model (Hugging Face models return the loss in
    their output when given labels);
  * ``recorder.wrap(criterion)`` — a loss function that records what it returns.

  Only losses computed with autograd on (training) are recorded, so evaluation passes are
  ignored. With gradient accumulation every micro-batch's loss is recorded and the step uses
  their mean (their sum with ``reduction="sum"``), which matches gradients accumulated from
  losses divided by the number of micro-batches (the mean gradient). A step without a recorded
  loss raises :class:`ecdopt.MissingLossError` instead of silently reusing an old one.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .optimizer import ECD, MissingLossError

__all__ = ["LossRecorder", "extract_loss"]


def extract_loss(output: Any) -> Tensor | None:
    """The loss in a model's output: ``output.loss``, ``output["loss"]``, a 1-element tensor,
    or the first element of a tuple/list that is one; None when there is none."""
    if isinstance(output, Tensor):
        return output if output.numel() == 1 else None
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if loss is None and isinstance(output, tuple | list) and output:
        first = output[0]
        loss = first if isinstance(first, Tensor) and first.numel() == 1 else None
    return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None


class LossRecorder:
    """Lets ``optimizer.step()`` be called without a loss: the recorded one is used.

    Attaching replaces ``optimizer.step`` on this instance only (the class and every other
    optimizer are untouched; :meth:`detach` restores it). ``optimizer.step(closure)`` and
    ``optimizer.step(loss=...)`` keep working and take precedence over the recording.

    Args:
        optimizer: an :class:`ecdopt.ECD` (or BBI/ECDSep).
        reduction: how several losses recorded before one step (gradient accumulation) are
            combined: ``"mean"`` (default, for micro-batch losses that the loop divides by the
            number of micro-batches before ``backward()``) or ``"sum"`` (for losses recorded
            after that division).

    Example (a Hugging Face-style loop)::

        opt = BBI(model.parameters(), lr=0.05)
        recorder = LossRecorder(opt)
        recorder.watch(model)         # records model(**batch).loss during training
        trainer = Trainer(model=model, args=args, optimizers=(opt, None), ...)
        trainer.train()
    """

    def __init__(self, optimizer: ECD, *, reduction: str = "mean") -> None:
        if not isinstance(optimizer, ECD):
            raise TypeError(
                f"LossRecorder is for ecdopt optimizers, got {type(optimizer).__name__} "
                "(other optimizers do not need the loss)"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if getattr(optimizer.step, "_ecdopt_loss_recorder", False):
            raise RuntimeError("this optimizer already has a LossRecorder")
        self.reduction = reduction
        self._optimizer_ref = weakref.ref(optimizer)
        # an LR scheduler may already have wrapped step on the instance: wrap that in turn
        self._had_instance_step = "step" in vars(optimizer)
        self._original_step = optimizer.step
        self._total: Tensor | None = None
        self._count = 0
        self._hooks: list[Any] = []
        recorder = self

        @functools.wraps(self._original_step)
        def step(
            closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None
        ) -> Any:
            if closure is None and loss is None:
                loss = recorder.pop()
            else:
                recorder.clear()
            return recorder._original_step(closure, loss=loss)

        step._ecdopt_loss_recorder = True  # type: ignore[attr-defined]
        self._step = step
        optimizer.step = step  # type: ignore[method-assign]

    # -------------------------------------------------------------------- recording
    @property
    def pending(self) -> int:
        """How many losses were recorded since the last step."""
        return self._count

    def record(self, loss: Tensor | float) -> None:
        """Record a (micro-batch) loss for the next ``step()``; non-finite values are kept (the
        optimizer then skips the step)."""
        value = torch.as_tensor(loss.detach() if isinstance(loss, Tensor) else loss)
        if value.numel() != 1:
            raise ValueError(f"a loss must be a single number, got shape {tuple(value.shape)}")
        value = value.reshape(()).to(torch.float64)
        self._total = value if self._total is None else self._total + value.to(self._total)
        self._count += 1

    def pop(self) -> Tensor:
        """The loss for this step (mean or sum of the recordings), and forget them."""
        if self._count == 0 or self._total is None:
            raise MissingLossError(
                "optimizer.step() was called without a loss and none was recorded since the "
                "last step: call recorder.record(loss), or watch(model)/wrap(criterion) so "
                "that the training loss is recorded"
            )
        total, count = self._total, self._count
        self.clear()
        return total / count if self.reduction == "mean" else total

    def clear(self) -> None:
        """Forget the recorded losses."""
        self._total, self._count = None, 0

    # ------------------------------------------------------------------------ hooks
    def watch(self, model: nn.Module) -> Any:
        """Record the loss in ``model``'s output on every training forward; returns the hook
        handle. Forwards without autograd (evaluation, ``torch.no_grad()``) are ignored."""

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not torch.is_grad_enabled():
                return
            loss = extract_loss(output)
            if loss is not None and loss.requires_grad:
                self.record(loss)

        handle = model.register_forward_hook(hook)
        self._hooks.append(handle)
        return handle

    def wrap(self, criterion: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``criterion`` that also records its (autograd-tracked) result."""

        @functools.wraps(criterion)
        def recorded(*args: Any, **kwargs: Any) -> Tensor:
            loss = criterion(*args, **kwargs)
            if torch.is_grad_enabled() and isinstance(loss, Tensor) and loss.requires_grad:
                self.record(loss)
            return loss

        return recorded

    def detach(self) -> None:
        """Remove the hooks and give the optimizer its own ``step`` back."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        opt = self._optimizer_ref()
        if opt is not None and vars(opt).get("step") is self._step:
            if self._had_instance_step:
                opt.step = self._original_step  # type: ignore[method-assign]
            else:
                del opt.step
        self.clear()

    def __repr__(self) -> str:
        last = math.nan if self._total is None else float(self._total)
        return f"LossRecorder(reduction={self.reduction!r}, pending={self._count}, sum={last})"
