"""Getting the loss to an ECD optimizer in training frameworks (docs/integrations.md).

ECD needs the loss value F at every step: it defines the potential V = (F − F0)**η. The one form
that works in every loop is ``optimizer.step(lambda: loss)`` after ``loss.backward()`` (plain
loops, Lightning manual optimization, ``accelerate``'s wrapped optimizer, which drops ``loss=``).
Lightning's automatic optimization passes its own closure: nothing to do.

Loops that call ``optimizer.step()`` with **no argument** (Hugging Face ``Trainer``, a
``GradScaler``, many research codebases), and gradient accumulation in any framework, use
:class:`LossRecorder`: it is attached to the optimizer and told every micro-batch's loss by

* ``recorder.watch(model)`` — a forward hook that records ``output.loss`` / ``output["loss"]`` /
  a scalar output of the model (Hugging Face models return the loss when given labels);
* ``recorder.wrap(criterion)`` — a loss function that records what it returns;
* ``recorder.record(loss)`` — explicitly, e.g. in Lightning's ``training_step``.

Only losses computed with autograd on (training) are recorded by the hook and the wrapper, so
evaluation passes are ignored. The step uses the losses recorded since the previous step,
combined by ``reduction`` (see :class:`LossRecorder`), so that the energy is set from the loss of
the whole accumulated batch. A step with nothing recorded raises :class:`ecdopt.MissingLossError`
instead of silently reusing an old loss.
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


_REDUCTIONS = ("auto", "mean", "sum")


class LossRecorder:
    """Lets ``optimizer.step()`` be called without a loss: the recorded ones are used.

    Attaching replaces ``optimizer.step`` on this instance only (the class and every other
    optimizer are untouched; :meth:`detach` restores it). What a step uses:

    * ``step(loss=...)``: that loss (the recordings are dropped);
    * ``step()``: the recorded losses, combined by ``reduction``;
    * ``step(closure)``: the closure runs first; if losses were recorded (before or while it
      ran) they are used, otherwise the closure's return value. Lightning's automatic
      optimization with ``accumulate_grad_batches=k`` needs this: its closure returns only the
      last micro-batch's loss divided by k.

    Args:
        optimizer: an :class:`ecdopt.ECD` (or BBI/ECDSep).
        reduction: how the losses F_1..F_k recorded before one step (gradient accumulation over
            k micro-batches) make the step's loss F:

            * ``"mean"``: F = (F_1 + … + F_k)/k, for micro-batch losses that are each the mean
              over their micro-batch (the loop divides them by k before ``backward()``:
              ``accelerate``, Lightning, plain loops, Hugging Face ``Trainer`` with a model
              that does not take ``num_items_in_batch``);
            * ``"sum"``: F = F_1 + … + F_k, for losses already divided by the whole accumulated
              batch's size (Hugging Face ``Trainer`` with its causal-LM models, which divide
              each micro-batch's summed token loss by the token count of all k micro-batches);
            * ``"auto"`` (default): ``"sum"`` for the losses that :meth:`watch` saw the model
              compute with a ``num_items_in_batch`` argument (how ``Trainer`` asks a model for
              that normalisation), ``"mean"`` for all the others. Mixing both kinds before one
              step is an error.

    Example (a Hugging Face ``Trainer``; runnable versions in docs/integrations.md)::

        opt = BBI(model.parameters(), lr=0.1)
        recorder = LossRecorder(opt)
        recorder.watch(model)         # records model(**batch).loss during training
        args = TrainingArguments(..., lr_scheduler_type="constant")
        trainer = Trainer(model=model, args=args, optimizers=(opt, None), ...)
        trainer.train()
    """

    def __init__(self, optimizer: ECD, *, reduction: str = "auto") -> None:
        if not isinstance(optimizer, ECD):
            raise TypeError(
                f"LossRecorder is for ecdopt optimizers, got {type(optimizer).__name__} "
                "(other optimizers do not need the loss)"
            )
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if getattr(optimizer.step, "_ecdopt_loss_recorder", False):
            raise RuntimeError("this optimizer already has a LossRecorder")
        self.reduction = reduction
        self._optimizer_ref = weakref.ref(optimizer)
        # an LR scheduler may already have wrapped step on the instance: wrap that in turn
        self._had_instance_step = "step" in vars(optimizer)
        self._original_step = optimizer.step
        self._total: Tensor | None = None
        self._count = 0
        self._normalized_count = 0  # recordings already divided by the whole batch's size
        self._hooks: list[Any] = []
        self._step = self._make_step()
        optimizer.step = self._step  # type: ignore[method-assign]

    def _make_step(self) -> Callable[..., Any]:
        recorder, original = self, self._original_step

        @functools.wraps(original)
        def step(
            closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None
        ) -> Any:
            if loss is not None:
                recorder.clear()
                return original(closure, loss=loss)
            if closure is not None:
                with torch.enable_grad():
                    returned = closure()
                if recorder.pending == 0:
                    return original(loss=returned) if returned is not None else original()
            return original(loss=recorder.pop())

        step._ecdopt_loss_recorder = True  # type: ignore[attr-defined]
        return step

    # -------------------------------------------------------------------- recording
    @property
    def pending(self) -> int:
        """How many losses were recorded since the last step."""
        return self._count

    def record(self, loss: Tensor | float) -> None:
        """Record a (micro-batch) loss for the next ``step()``; non-finite values are kept (the
        optimizer then skips the step)."""
        self._record(loss, normalized=False)

    def _record(self, loss: Tensor | float, *, normalized: bool) -> None:
        value = torch.as_tensor(loss.detach() if isinstance(loss, Tensor) else loss)
        if value.numel() != 1:
            raise ValueError(f"a loss must be a single number, got shape {tuple(value.shape)}")
        value = value.reshape(()).to(torch.float64)
        self._total = value if self._total is None else self._total + value.to(self._total)
        self._count += 1
        self._normalized_count += int(normalized)

    def _divisor(self) -> int:
        """1 (sum) or the number of recordings (mean) for the pending recordings."""
        if self.reduction == "sum":
            return 1
        if self.reduction == "mean" or self._normalized_count == 0:
            return self._count
        if self._normalized_count == self._count:
            return 1
        raise RuntimeError(
            f"LossRecorder(reduction='auto'): of the {self._count} losses recorded for this "
            f"step, {self._normalized_count} came from a forward given num_items_in_batch "
            "(already divided by the whole batch's size) and the others did not: pass "
            "reduction='mean' or 'sum' explicitly"
        )

    def pop(self) -> Tensor:
        """The loss for this step (see ``reduction``), and forget the recordings."""
        if self._count == 0 or self._total is None:
            raise MissingLossError(
                "optimizer.step() was called without a loss and none was recorded since the "
                "last step: call recorder.record(loss), or watch(model)/wrap(criterion) so "
                "that the training loss is recorded, or pass it: optimizer.step(lambda: loss)"
            )
        loss = self._total / self._divisor()
        self.clear()
        return loss

    def clear(self) -> None:
        """Forget the recorded losses (e.g. after a step that a GradScaler skipped)."""
        self._total, self._count, self._normalized_count = None, 0, 0

    # ------------------------------------------------------------------------ hooks
    def watch(self, model: nn.Module) -> Any:
        """Record the loss in ``model``'s output on every training forward; returns the hook
        handle. Forwards without autograd (evaluation, ``torch.no_grad()``) are ignored. A
        forward given a ``num_items_in_batch`` keyword (Hugging Face ``Trainer``) records a loss
        already divided by the whole accumulated batch's size (``reduction="auto"``)."""

        def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            if not torch.is_grad_enabled():
                return
            loss = extract_loss(output)
            if loss is not None and loss.requires_grad:
                self._record(loss, normalized=kwargs.get("num_items_in_batch") is not None)

        handle = model.register_forward_hook(hook, with_kwargs=True)
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
