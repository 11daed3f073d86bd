"""Float32 master weights for a model loaded in bf16: what `bf16-mixed` needs to keep small updates.

A large model is loaded in bf16 to halve host and GPU memory while it is pruned; trained in `bf16-true`,
its weights and AdamW states stay bf16, and an update of 1e-4 relative size is mostly lost to rounding
(bf16 has 8 bits of mantissa: steps below 2^-8 of a weight round away). `MasterWeights` casts the model's
floating-point parameters to `dtype` once, at setup, after a step-0 pruning event under FSDP (which runs in
the pruning callback's setup, listed before it) and before the strategy shards or wraps the model; with
`trainer.precision=bf16-mixed` the forward and backward then compute in bf16 while weights, gradients and
optimizer states are float32 (sharded under FSDP).
"""

from __future__ import annotations

import lightning as L
import torch

from prune_recover.logs import get_logger

log = get_logger(__name__)


class MasterWeights(L.Callback):
    """Cast the trained model's floating-point parameters to `dtype` at setup (None leaves them as loaded)."""

    def __init__(self, dtype: str | None = None):
        named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        if dtype is not None and not (isinstance(named, torch.dtype) and named.is_floating_point):
            raise ValueError(
                f"callbacks.master_weights.dtype must name a floating-point torch dtype (e.g. float32), got '{dtype}'"
            )
        self.dtype = getattr(torch, dtype) if dtype else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dtype is None or stage != "fit":
            return
        cast = [p for p in pl_module.model.parameters() if p.is_floating_point() and p.dtype != self.dtype]
        for param in cast:
            param.data = param.data.to(self.dtype)
        if cast:
            log.info("Master weights: %d parameter tensors cast to %s", len(cast), self.dtype)
