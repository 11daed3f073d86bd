"""`last.ckpt` that holds the validation run at its own step, so a resumed run's history has no gap.

Lightning's `ModelCheckpoint(every_n_train_steps=N)` saves at the end of the training batch; a validation
scheduled at the same step runs after that save. A run resumed from that checkpoint counts the validation as
done (the loop fast-forwards past it), so its result is in neither the checkpoint nor the resumed run: the
report's history loses it. `ValidatedCheckpoint` writes `last.ckpt` again after such a validation; resuming
from it is resuming "after the validation", which Lightning handles by not running it again.

Known gap: a kill *during* that validation (after the first save, before the rewrite) still leaves the
pre-validation checkpoint, and the resumed run skips the validation (`tests/test_kill_trials.py` hit it once in
20 kills). Everything else of the resumed run is exact; only that validation's entry is missing from the history.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class ValidatedCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose step-triggered `last.ckpt` is written again after a validation at the same step.

    Only `last.ckpt` (what `ckpt_path=last` resumes from) is rewritten; step-named files keep the state from
    before the validation.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # `_last_global_step_saved` is Lightning's own record of the step its last save belongs to
        saved_at_this_step = self._last_global_step_saved == trainer.global_step > 0
        if trainer.sanity_checking or not saved_at_this_step or not self.save_last or not self.last_model_path:
            return
        trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
