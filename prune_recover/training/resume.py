"""What makes a resumed run continue exactly where it stopped: the position of the training data and the RNGs.

Lightning stores the state of any training loader that has `state_dict`/`load_state_dict` (torchdata's
`StatefulDataLoader`) in its checkpoints and restores it mid-epoch, but it does not store random-number
generator states, and from a loader without a length (a stream) it fetches one batch ahead of training.
`EpochShuffle` makes each epoch's order a function of (seed, epoch) alone (torchdata's own shuffling sampler,
restored mid-epoch, draws the following epochs in another order), `StreamLoader` reports the state of the
batches actually trained on, and `RngStates` puts the torch,
NumPy and Python generators into every checkpoint, so a run resumed from any checkpoint trains on the
same batches with the same dropout masks as the run that was never interrupted.
"""

from __future__ import annotations

import random
from collections import deque

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

# Batches Lightning's training data fetcher holds ahead of the step (its `_PrefetchDataFetcher` prefetches
# one batch from loaders without a length); tests/training/test_resume.py fails if that changes.
PREFETCHED = 1


class EpochShuffle(DistributedSampler):
    """A random order of `size` items that depends only on `seed` and the epoch (Lightning calls `set_epoch`).

    It never draws from the global RNG, and its state (epoch, items served) travels in the loader's state, so
    a run resumed mid-epoch sees the rest of that epoch and every later one in the order the uninterrupted run
    saw. Each epoch serves whole batches of `batch_size` only (the tail is left out, as `drop_last` does), so a
    position at the end of an epoch is restored as the start of the next one (Lightning iterates the restored
    loader before it sets the epoch).

    Under DDP each rank takes every `num_replicas`-th item of the epoch's order (the same number of whole batches
    on every rank; rank and world size from the initialised process group unless given). It is a
    `DistributedSampler` so that Lightning serves it as it is: Lightning wraps any other sampler in a
    `DistributedSamplerWrapper`, which has no state of its own, so a DDP run resumed mid-epoch was fed other blocks
    than the uninterrupted run (tests/training/test_resume_order.py).
    """

    def __init__(
        self, size: int, seed: int, batch_size: int = 1, num_replicas: int | None = None, rank: int | None = None
    ):
        # DistributedSampler.__init__ is not called: the order and the shard are this class's own
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if size < batch_size * self.num_replicas:
            raise ValueError(
                f"{size} training blocks do not fill one batch of {batch_size} on each of {self.num_replicas} ranks"
            )
        self.size, self.seed, self.epoch = size, seed, 0
        self.shuffle, self.drop_last = True, True
        self.served_per_epoch = size - size % (batch_size * self.num_replicas)  # over all ranks
        self._served = 0  # items of this rank's share of this epoch's order handed out so far
        self._skip = 0  # items to skip on the next iteration (a restored position)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.served_per_epoch // self.num_replicas

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()[: self.served_per_epoch]
        share = order[self.rank :: self.num_replicas]
        self._served, self._skip = self._skip, 0
        for index in share[self._served :]:
            self._served += 1
            yield index

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = state["epoch"], state["served"]
        if self._skip >= len(self):  # that epoch was complete: the next one starts
            self.epoch, self._skip = self.epoch + 1, 0


class StreamLoader(StatefulDataLoader):
    """A `StatefulDataLoader` over a stream whose `state_dict` excludes the batch Lightning prefetched.

    The state before each batch it hands out is kept; `state_dict` returns the one `PREFETCHED` batches back,
    which is where the training step stands when a checkpoint is written.
    """

    def __iter__(self):
        iterator = super().__iter__()
        self._states = deque([super().state_dict()], maxlen=PREFETCHED + 1)
        return self._recording(iterator)

    def _recording(self, iterator):
        for batch in iterator:
            self._states.append(super().state_dict())
            yield batch

    def state_dict(self) -> dict:
        states = getattr(self, "_states", None)
        return states[0] if states else super().state_dict()


class RngStates(L.Callback):
    """Save the torch (CPU and, where used, the current CUDA device's), NumPy and Python RNG states in every
    checkpoint and restore them on resume (GPU dropout, LoRA's included, draws from the CUDA generator)."""

    def state_dict(self) -> dict:
        # tensors and plain numbers only: Lightning loads checkpoints with torch.load(weights_only=True)
        kind, key, position, has_gauss, cached_gaussian = np.random.get_state()
        numpy_state = {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "position": int(position)}
        numpy_state.update(has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian))
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        saved = state_dict["numpy"]
        key = saved["key"].numpy().astype(np.uint32)
        np.random.set_state((saved["kind"], key, saved["position"], saved["has_gauss"], saved["cached_gaussian"]))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])
