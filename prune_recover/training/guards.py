"""Training guards that stop a run before it damages what it has already saved."""

from __future__ import annotations

import math

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Stop with a clear message when the loss is NaN/inf, before backward and the optimizer step.

    Raising before the update keeps the weights of the last good step, and checkpoints already on
    disk are never overwritten by a diverged model (checkpoint callbacks run after this one). Under DDP every
    rank raises when any rank's loss is bad: a rank raising alone would leave the others waiting in the gradient
    all-reduce until the process group's timeout.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach().float().item()
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            saved = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteLossError(
                f"training loss is not finite at step {trainer.global_step} (this rank's: {value}); stopping before "
                "the update. "
                f"Last good checkpoint: {saved}. Lower the learning rate, enable gradient clipping, or check the data, "
                "then resume with ckpt_path=last."
            )
