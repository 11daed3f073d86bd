"""Checkpoints written so that a kill during the write never destroys the checkpoint that was there.

Lightning's own writer goes through an fsspec transaction that writes into `$TMPDIR` and then moves the file
into place; when the output folder is on another filesystem (node-local /tmp, shared output: the usual cluster
layout) that move is a copy that first truncates the target, so a kill mid-copy leaves `last.ckpt` empty, and
it is often the only checkpoint. `AtomicCheckpointIO` writes each checkpoint to a temporary file beside its
target, fsyncs it and renames it over the target (`files.write_bytes_atomic`).

FSDP's sharded checkpoints are folders that Lightning's `FSDPStrategy` writes itself, bypassing the
`CheckpointIO`, file by file into the existing folder: a kill mid-write left `last.ckpt` with some shards of
the new step and the rest (and the metadata) of the old one. `AtomicFSDPStrategy` writes the folder beside
its target and swaps it in once every rank has written its shards.

A restarted run removes what a kill left of such writes (`remove_partial_writes`) and refuses a checkpoint
that is not whole before the weights load (`check_complete_checkpoint`).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy

from prune_recover.files import replace_dir, temporary_sibling, write_bytes_atomic
from prune_recover.logs import get_logger

log = get_logger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose `save_checkpoint` replaces the target atomically (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        write_bytes_atomic(path, lambda file: torch.save(checkpoint, file))


class AtomicFSDPStrategy(FSDPStrategy):
    """`FSDPStrategy` whose sharded checkpoints replace their target folder whole (full ones go through the
    `CheckpointIO`, as in Lightning)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        staging = Path(self.broadcast(str(temporary_sibling(target))))  # one name for every rank
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("sharded checkpoint written")
        if self.global_rank == 0:
            replace_dir(staging, target)
        self.barrier("sharded checkpoint in place")


def check_complete_checkpoint(path: Path) -> Path:
    """Refuse a checkpoint that is not a whole one (a torch zip file, or a sharded folder with its metadata)
    before the weights load; torch's own error would come after, and advise an unsafe load."""
    if path.is_dir():
        whole = (path / ".metadata").is_file() and (path / "meta.pt").is_file()
    else:
        whole = zipfile.is_zipfile(path)
    if not whole:
        raise ValueError(f"{path} is not a whole checkpoint (truncated, or not written by torch.save); resume another")
    return path


def remove_partial_writes(output_dir: Path) -> list[Path]:
    """Delete the temporary files (and sharded checkpoints' folders) of checkpoint writes that a kill interrupted
    (the checkpoints they were replacing are intact); no write is in progress when a run starts.

    A kill inside a sharded checkpoint's swap (`files.replace_dir`, between its two renames) leaves the old folder
    beside a missing target: it is put back."""
    folders = [output_dir, output_dir / "checkpoints"]
    for old in [path for folder in folders for path in folder.glob(".*.ckpt.old-*")]:
        target = old.with_name(old.name[1:].rsplit(".old-", 1)[0])
        if not target.exists():
            log.warning("Restoring %s from %s: a checkpoint swap was interrupted", target, old)
            old.rename(target)
    partial = [
        path for folder in folders for pattern in (".*.ckpt.tmp-*", ".*.ckpt.old-*") for path in folder.glob(pattern)
    ]
    for path in partial:
        log.warning("Removing %s: the temporary file of a checkpoint write that was interrupted", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return partial
