"""FSDP's sharded checkpoints (folders Lightning writes itself) replace their target whole, on a kill too.

`AtomicFSDPStrategy.save_checkpoint` runs here in one process on CPU (torch's distributed checkpoint saves a
single process's state without a process group); the multi-GPU run is tests/training/test_fsdp_gpu.py.
"""

import pytest
import torch
import torch.distributed.checkpoint as dcp

from prune_recover.training.atomic_checkpoint import AtomicFSDPStrategy, remove_partial_writes


class DiskFullOnSave:
    """Fails when pickled: the metadata file, written after every shard, never gets written."""

    def __reduce__(self):
        raise OSError("disk full")


def checkpoint(value: float, step: int) -> dict:
    return {"state_dict": {"w": torch.full((4,), value)}, "optimizer_states": [], "global_step": step}


def saved(path) -> tuple[int, float]:
    """The step in the checkpoint's metadata file and the value of its sharded weight."""
    state = {"model": {"w": torch.zeros(4)}}
    dcp.load(state, checkpoint_id=path)
    return torch.load(path / "meta.pt", weights_only=False)["global_step"], state["model"]["w"][0].item()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_write_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    strategy = AtomicFSDPStrategy(state_dict_type="sharded")
    target = tmp_path / "checkpoints" / "last.ckpt"
    strategy.save_checkpoint(checkpoint(1.0, step=1), target)
    assert saved(target) == (1, 1.0)

    interrupted = {**checkpoint(2.0, step=2), "callbacks": DiskFullOnSave()}  # shards written, metadata not
    with pytest.raises(OSError, match="disk full"):
        strategy.save_checkpoint(interrupted, target)
    assert saved(target) == (1, 1.0)  # Lightning's FSDPStrategy left the new shards under the old metadata
    (staged,) = target.parent.glob(".last.ckpt.tmp-*")
    assert remove_partial_writes(tmp_path) == [staged] and not staged.exists()

    strategy.save_checkpoint(checkpoint(3.0, step=3), target)
    assert saved(target) == (3, 3.0) and [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_a_kill_between_the_swaps_two_renames_gets_the_previous_checkpoint_back(tmp_path):
    folder = tmp_path / "checkpoints"
    old = folder / ".last.ckpt.old-0123abcd"  # files.replace_dir renamed last.ckpt aside, then the kill came
    old.mkdir(parents=True)
    (old / "meta.pt").write_bytes(b"step 1")
    (folder / ".last.ckpt.tmp-4567ef01").mkdir()  # the new one, never renamed into place
    remove_partial_writes(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert (folder / "last.ckpt" / "meta.pt").read_bytes() == b"step 1"
