"""Checkpoints written so that a kill during the write never destroys the checkpoint that was there.

Lightning's own writer goes through an fsspec transaction that writes into `$TMPDIR` and then moves the file
into place; when the output folder is on another filesystem (node-local /tmp, shared output: the usual cluster
layout) that move is a copy that first truncates the target, so a kill mid-copy leaves `last.ckpt` empty, and
it is often the only checkpoint. `AtomicCheckpointIO` writes each checkpoint to a temporary file beside its
target, fsyncs it and renames it over the target (`files.write_bytes_atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from prune_recover.files import write_bytes_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose `save_checkpoint` replaces the target atomically (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        write_bytes_atomic(path, lambda file: torch.save(checkpoint, file))
