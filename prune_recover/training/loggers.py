"""What the training glue writes to experiment loggers beyond `self.log`: W&B run-summary values."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def set_wandb_summary(trainer: L.Trainer, key: str, value) -> None:
    """Put `key: value` in the run summary of every W&B logger of `trainer` (rank zero only)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.summary[key] = value
