"""`last.ckpt` that holds the validation run at its own step, so a resumed run's history has no gap.

Lightning's `ModelCheckpoint(every_n_train_steps=N)` saves at the end of the training batch; a validation
scheduled at the same step runs after that save. A run resumed from that checkpoint counts the validation as
done (the loop fast-forwards past it), so its result is in neither the checkpoint nor the resumed run: the
report's history loses it. `ValidatedCheckpoint` makes that step's save after the validation instead (when it
can tell a validation follows: `val_check_interval` in batches, `check_val_every_n_epoch=null`), and otherwise
writes `last.ckpt` again after such a validation. Resuming from a checkpoint written after the validation is
resuming "after the validation", which Lightning handles by not running it again.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class ValidatedCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose step-triggered save, when a validation follows at the same step, is made after it.

    Where the validation schedule is by epochs the save stays before it and only `last.ckpt` (what
    `ckpt_path=last` resumes from) is written again after the validation.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        if not validation_follows(trainer):  # else saved in on_validation_end, after the validation
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking:
            return
        if validation_follows(trainer):  # the batch this validation follows: its step save was deferred to here
            # the step save exactly as ModelCheckpoint makes it at a batch end (it reads only the trainer's state)
            super().on_train_batch_end(trainer, pl_module, None, None, 0)
            return
        # `_last_global_step_saved` is Lightning's own record of the step its last save belongs to
        saved_at_this_step = self._last_global_step_saved == trainer.global_step > 0
        if saved_at_this_step and self.save_last and self.last_model_path:
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning runs a validation right after the current training batch (schedules in batches only)."""
    interval = trainer.val_check_batch
    if not trainer.enable_validation or trainer.check_val_every_n_epoch is not None or not isinstance(interval, int):
        return False
    return (trainer.fit_loop.total_batch_idx + 1) % interval == 0
